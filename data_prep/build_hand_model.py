"""Learns the statistical hand model from procedural subjects and writes the packaged asset.

    python -m data_prep.build_hand_model --out=hsr_tf/assets/hand_model.npz \
        --num_subjects=50 --poses_per_subject=60 --seed=0

Paper appendix / section III-B, on the procedural subjects of ``data_prep.synth.hands`` (posed by the
generator's own dual-quaternion skinning, not LBS):
  1. subjects are split into training and held-out subjects, library poses into training and
     held-out poses (both seeded);
  2. PCA over the training subjects' neutral meshes -> B0 and |beta| basis vectors;
  3. J_re fitted to the training subjects' rest joints (NNLS, rows convex);
  4. W and P fitted with Adam on posed meshes of the training subjects and training poses (Eq. 9),
     each subject with its own neutral mesh and rest joints (the appendix's exported T and J0);
  5. the full model (beta by projection, J0 = J_re T) is evaluated on held-out subjects x held-out
     poses; mean / 95th percentile vertex errors (mm) and the explained variance go into the asset's
     metadata (``fit_report``) and are printed.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("out", "hsr_tf/assets/hand_model.npz", "output .npz")
flags.DEFINE_integer("num_subjects", 50, "procedural subjects (training + held out)")
flags.DEFINE_integer("holdout_subjects", 5, "subjects kept out of every fit")
flags.DEFINE_integer("num_betas", 10, "shape components |beta|")
flags.DEFINE_integer("library_poses", 1840, "poses in the key-pose library")
flags.DEFINE_float("holdout_pose_fraction", 0.1, "fraction of library poses kept out of the W/P fit")
flags.DEFINE_integer("poses_per_subject", 60, "training poses per training subject (random, per subject)")
flags.DEFINE_integer("eval_poses_per_subject", 40, "held-out poses evaluated per subject")
flags.DEFINE_integer("joint_candidates", 32, "vertices nearest each joint allowed in its J_re row")
flags.DEFINE_integer("nearest_bones", 3, "closest bones (same finger or palm) added to each vertex's candidates")
flags.DEFINE_float("init_weight_scale", 5.0, "mm; initial W ~ exp(-(bone distance - nearest) / scale)")
flags.DEFINE_integer("steps", 3000, "Adam steps for W and P")
flags.DEFINE_integer("batch_size", 32, "posed meshes per Adam step")
flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate (appendix: 0.01)")
flags.DEFINE_float("decay_rate", 0.9, "learning-rate decay per epoch (appendix: 0.9)")
flags.DEFINE_float("blend_scale", 1.0, "P = blend_scale * p (mm per unit of the Adam variable)")
flags.DEFINE_integer("seed", 0, "seed for subjects, pose library, splits and Adam batches")
flags.DEFINE_integer("threads", 2, "TensorFlow intra-op threads")
FLAGS = flags.FLAGS


def _stats_line(name, stats):
    return (f"{name}: mean {stats['mean_mm']:.3f} mm, median {stats['median_mm']:.3f}, "
            f"p95 {stats['p95_mm']:.3f}, max {stats['max_mm']:.3f} ({stats['count']} vertex samples)")


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(FLAGS.seed)

    from data_prep.synth import hands, poses
    from hsr_tf.hand_model import fitting, skeleton
    from hsr_tf.hand_model.layer import ChainPlan, HandModelLayer, pose_and_skin
    from hsr_tf.hand_model.model import HandModel

    t_start = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    subjects = hands.make_subjects(FLAGS.num_subjects, seed=FLAGS.seed)
    library = poses.pose_library(FLAGS.library_poses, seed=FLAGS.seed)
    n_sub, n_lib = len(subjects), len(library)
    if not 0 < FLAGS.holdout_subjects < n_sub:
        raise ValueError(f"holdout_subjects: expected 0 < h < {n_sub}, found {FLAGS.holdout_subjects}")
    perm_s = rng.permutation(n_sub)
    test_subj, train_subj = np.sort(perm_s[:FLAGS.holdout_subjects]), np.sort(perm_s[FLAGS.holdout_subjects:])
    n_test_pose = max(1, int(round(FLAGS.holdout_pose_fraction * n_lib)))
    perm_p = rng.permutation(n_lib)
    test_pose, train_pose = np.sort(perm_p[:n_test_pose]), np.sort(perm_p[n_test_pose:])
    logging.info("subjects: %d train, %d held out %s; poses: %d train, %d held out",
                 len(train_subj), len(test_subj), test_subj.tolist(), len(train_pose), len(test_pose))

    rest_all = np.stack([s.rest_vertices for s in subjects])
    joints_all = np.stack([s.rest_joints for s in subjects])

    # 1. shape space (training subjects only)
    pca = fitting.pca_shape_space(rest_all[train_subj], FLAGS.num_betas)
    betas_all = fitting.project_betas(rest_all, pca["mean"], pca["basis"])
    recon_all = pca["mean"] + np.tensordot(betas_all, pca["basis"], axes=(1, 0))
    logging.info("PCA: variance explained by %d components %.4f (per component %s)", FLAGS.num_betas,
                 pca["cumulative"][-1], np.round(pca["explained"], 4).tolist())

    # 2. joint regressor (training subjects' true neutral meshes and joints)
    regressor = fitting.fit_joint_regressor(rest_all[train_subj], joints_all[train_subj],
                                            num_candidates=FLAGS.joint_candidates)

    # 3. training set of posed meshes
    sample_subject, sample_theta, sample_target = [], [], []
    for k, s in enumerate(train_subj):
        pick = rng.choice(train_pose, size=min(FLAGS.poses_per_subject, len(train_pose)), replace=False)
        theta = subjects[s].theta_for(library.angles[pick])
        verts, _ = subjects[s].pose(theta)
        sample_subject.append(np.full(len(pick), k))
        sample_theta.append(theta)
        sample_target.append(verts)
    sample_subject = np.concatenate(sample_subject)
    sample_theta = np.concatenate(sample_theta)
    sample_target = np.concatenate(sample_target)
    logging.info("W/P training set: %d posed meshes (%.1f s so far)", len(sample_theta), time.time() - t_start)

    # 4. W and P (Eq. 9) with the subjects' own neutral meshes and joints
    parents = skeleton.PARENTS
    dist = fitting.bone_distances(rest_all[train_subj].mean(axis=0), joints_all[train_subj].mean(axis=0), parents)
    cand = fitting.candidate_bones(hands.VERTEX_SEGMENT, parents, dist, nearest=FLAGS.nearest_bones)
    support = fitting.pose_blend_support(cand, parents, hands.VERTEX_SEGMENT)
    init_w = fitting.initial_weights(cand, dist, hands.VERTEX_SEGMENT, scale=FLAGS.init_weight_scale)
    t_fit = time.time()
    weights, pose_basis, history = fitting.fit_skinning_and_blends(
        rest_all[train_subj], joints_all[train_subj], sample_subject, sample_theta, sample_target, parents,
        cand, support, init_w, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, decay_rate=FLAGS.decay_rate, blend_scale=FLAGS.blend_scale,
        seed=FLAGS.seed, log_every=max(1, FLAGS.steps // 10), log_fn=logging.info)
    fit_seconds = time.time() - t_fit

    model = HandModel(mean_shape=pca["mean"], shape_basis=pca["basis"], pose_basis=pose_basis,
                      joint_regressor=regressor, skinning_weights=weights, parents=parents, faces=hands.FACES)

    # 5. evaluation
    layer = HandModelLayer(model)
    plan = ChainPlan(parents)

    def evaluate(subject_ids, pose_ids):
        full_pred, wp_pred, targets, init_pred = [], [], [], []
        for s in subject_ids:
            pick = rng.choice(pose_ids, size=min(FLAGS.eval_poses_per_subject, len(pose_ids)), replace=False)
            theta = subjects[s].theta_for(library.angles[pick])
            verts, _ = subjects[s].pose(theta)
            beta = np.repeat(betas_all[s][None], len(pick), axis=0)
            full_pred.append(layer(beta.astype(np.float32), theta.astype(np.float32))["vertices"].numpy())
            rest = tf.constant(np.repeat(rest_all[s][None], len(pick), axis=0), tf.float32)
            rj = tf.constant(np.repeat(joints_all[s][None], len(pick), axis=0), tf.float32)
            wp, _ = pose_and_skin(plan, rest, rj, tf.constant(theta, tf.float32),
                                  tf.constant(pose_basis.reshape(len(pose_basis), -1), tf.float32),
                                  tf.constant(weights, tf.float32))
            base, _ = pose_and_skin(plan, rest, rj, tf.constant(theta, tf.float32),
                                    tf.zeros([len(pose_basis), rest.shape[1] * 3]), tf.constant(init_w, tf.float32))
            wp_pred.append(wp.numpy())
            init_pred.append(base.numpy())
            targets.append(verts)
        targets = np.concatenate(targets)
        return {"full_model": fitting.vertex_error_stats(np.concatenate(full_pred), targets),
                "wp_true_rest": fitting.vertex_error_stats(np.concatenate(wp_pred), targets),
                "init_lbs_no_blend": fitting.vertex_error_stats(np.concatenate(init_pred), targets)}

    report = {
        "command": " ".join(["python -m data_prep.build_hand_model"] + sys.argv[1:]),
        "num_train_subjects": int(len(train_subj)), "heldout_subjects": test_subj.tolist(),
        "num_train_poses": int(len(train_pose)), "num_heldout_poses": int(len(test_pose)),
        "num_training_meshes": int(len(sample_theta)),
        "pca_variance_explained": float(pca["cumulative"][-1]),
        "pca_variance_per_component": [float(x) for x in pca["explained"]],
        "heldout_neutral_pca_recon": fitting.vertex_error_stats(recon_all[test_subj], rest_all[test_subj]),
        "heldout_joint_regressor_mm": fitting.vertex_error_stats(
            np.einsum("jv,nvc->njc", regressor, rest_all[test_subj]), joints_all[test_subj]),
        "heldout_joint_regressor_pca_shape_mm": fitting.vertex_error_stats(
            np.einsum("jv,nvc->njc", regressor, recon_all[test_subj]), joints_all[test_subj]),
        "heldout_subjects_heldout_poses": evaluate(test_subj, test_pose),
        "train_subjects_heldout_poses": evaluate(train_subj[:FLAGS.holdout_subjects], test_pose),
        "train_subjects_train_poses": evaluate(train_subj[:FLAGS.holdout_subjects], train_pose),
        "wp_fit_history_mm": history,
        "wp_fit_seconds": fit_seconds,
        "total_seconds": None,
        "joint_regressor_nonzeros_per_row": float((regressor > 1e-6).sum(axis=1).mean()),
        "skinning_nonzeros_per_vertex": float((weights > 1e-3).sum(axis=1).mean()),
        "skinning_candidates_per_vertex": float(cand.sum(axis=1).mean()),
        "pose_blend_support_vertices_per_joint": float(support[1:].sum(axis=1).mean()),
    }
    report["total_seconds"] = time.time() - t_start
    meta = {
        "fit_report": json.dumps(report),
        "joint_names": np.array(skeleton.JOINT_NAMES),
        "train_betas": betas_all[train_subj].astype(np.float32),
        "shape_basis_scaling": "basis = sigma_n * u_n (unit-variance betas over the training subjects)",
        "pose_feature": "(R_j(theta) - I) of joints 1..20, row-major, joint-major (180 features)",
        "units": "mm, neutral hand frame (right hand, wrist at origin, fingers +y, palm -z, thumb +x)",
    }
    model = HandModel(**{f: getattr(model, f) for f in ("mean_shape", "shape_basis", "pose_basis", "joint_regressor",
                                                         "skinning_weights", "parents", "faces")}, metadata=meta)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    model.save(FLAGS.out)
    print(f"wrote {FLAGS.out} ({os.path.getsize(FLAGS.out) / 1e6:.2f} MB) in {report['total_seconds']:.0f} s")
    print(f"PCA variance explained by {FLAGS.num_betas} components: {report['pca_variance_explained']:.4f}")
    print(_stats_line("held-out neutral shape, PCA reconstruction", report["heldout_neutral_pca_recon"]))
    print(_stats_line("held-out joints, J_re on true neutral mesh", report["heldout_joint_regressor_mm"]))
    for key in ("heldout_subjects_heldout_poses", "train_subjects_heldout_poses", "train_subjects_train_poses"):
        for sub, stats in report[key].items():
            print(_stats_line(f"{key} [{sub}]", stats))


if __name__ == "__main__":
    app.run(main)
