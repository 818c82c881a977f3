"""Weakly-supervised fine-tuning of a pretrained RGB run (Ge et al. 2019, section 4.4) and its evaluation.

  python -m experiments.stb_weak --flagfile=experiments/flags/stb_weak_full.flags --workdir=W
  python -m experiments.rhd_full --flagfile=experiments/flags/rhd_full.flags --workdir=W

A run of :func:`run` (rerunning the same command resumes where it stopped):
  (0) load the fully-supervised run --pretrained_workdir (``experiments.rgb_synth``: W/checkpoints and
      W/model_config.json); optionally evaluate it as it is on the target test split -> W/eval_pretrained;
  (1) pseudo-GT meshes of the target training frames (``data_prep.pseudo_gt``: the pretrained network with the
      ground-truth heat-maps), stored beside the shards, when L_pM is on and the network has a mesh;
  (2) weak phase 1: the stacked hourglass alone with L_H (W/weak1), then
      weak phase 2: end to end with L_weakly = 0.1 L_H + 0.1 L_D + 1 L_pM (+ 10 L_J with --pose_supervision)
      (W/weak2); RMSprop, learning rate 1e-4 (section 5.1), batch 32;
  (3) publish the network to W/checkpoints (``experiments.evaluate`` / ``export`` read it) and evaluate on the
      target's test split -> W/eval (metrics.json with pose error, AUC 0-50 and 20-50, per_frame.csv for
      ``experiments.compare``, pck_curve.csv / .png, overlays).

Rows of Fig. 8 / 9 (Table 3), each a flagfile: Baseline 1 (--pretrained_workdir of a ``--variant=baseline1``
run, no depth loss), Baseline 2 (ours, --lambda_depth=0), full model, full model + task transfer (a pretrained
run with --task_transfer, evaluated with --eval_joints=joints_transfer); with and without --pose_supervision.
Without it no 3D label of the target training frames is used: the loss sees images, 2-D joints (heat-maps),
the depth map and its hand mask, the camera, and the hand scale and root depth (given, section 5.1).

--distribution / --sync_batchnorm (``experiments.rgb_distribute``): the pretrained network is loaded under the
strategy's scope and both weak phases are distributed (the depth renderer of L_D runs inside each replica on
its slice); the evaluations and the published files are the chief's. The pseudo-GT meshes are made by every
worker (one process: once), each file written to a temporary name and renamed, and skipped when complete, so
workers sharing --data_dir write the same files. Two terms are ratios over the batch, not means over frames:
L_D (sum over valid pixels / their count) and any frame-weighted mean (``has_vertices``, ``has_pseudo`` < 1);
with R replicas each replica divides by its own count, so the update equals one device's only when the counts
are equal on every replica (always for L_pM and L_M when every frame has a mesh).
"""
from __future__ import annotations

import json
import os

from absl import flags, logging

from experiments import rgb_common, rgb_distribute

FLAGS = flags.FLAGS
flags.DEFINE_string("pretrained_workdir", None, "Fully-supervised RGB run to fine-tune (experiments.rgb_synth).")
flags.DEFINE_bool("pose_supervision", False, "Use the target's 3D joints (adds lambda_weak_pose L_J; Fig. 8 left, "
                  "Fig. 9 left / middle). Off: no 3D label of the target training frames is used.")
flags.DEFINE_float("lambda_weak_heatmap", 0.1, "lambda_H of L_weakly (paper 0.1).")
flags.DEFINE_float("lambda_depth", 0.1, "lambda_D (paper 0.1; 0 = Baseline 2 / Baseline 1).")
flags.DEFINE_float("lambda_pseudo_mesh", 1.0, "lambda_pM (paper 1; 0 = Fig. 6 'without pseudo-GT').")
flags.DEFINE_float("lambda_weak_pose", 10.0, "lambda_J with --pose_supervision (paper 10).")
flags.DEFINE_integer("depth_size", 32, "Rendered / reference depth map size (paper 32).")
flags.DEFINE_integer("weak_phase1_steps", 1000, "Steps of weak phase 1 (hourglass, L_H); 0 skips it.")
flags.DEFINE_integer("weak_phase2_steps", 5000, "Steps of weak phase 2 (end to end, L_weakly).")
flags.DEFINE_string("pseudo_gt_tag", None, "Pseudo-GT sub-folder (default: the pretrained workdir's name).")
flags.DEFINE_enum("eval_joints", "joints", ["joints", "joints_transfer"],
                  "Joints evaluated: from the mesh (ours) or the task-transfer head (supplementary C).")
flags.DEFINE_bool("evaluate_pretrained", True, "Also evaluate the pretrained network on the target test split "
                  "(W/eval_pretrained): the starting point of the fine-tuning.")

WEAK_DIRS = {1: "weak1", 2: "weak2"}


def apply_weak_defaults(data_dir: str) -> None:
    """Defaults of the weak programs (call before parsing): section 5.1's fine-tuning rate, no decay."""
    rgb_common.apply_rgb_defaults()
    FLAGS.set_default("learning_rate", 1e-4)
    FLAGS.set_default("data_dir", data_dir)


def weak_loss_config(variant: str):
    """WeakLossConfig of the flags; depth and pseudo-GT terms only for networks with a mesh."""
    from hsr_tf import losses_weak

    mesh = variant == "mesh"
    return losses_weak.WeakLossConfig(
        lambda_h=FLAGS.lambda_weak_heatmap, lambda_d=FLAGS.lambda_depth if mesh else 0.0,
        lambda_pm=FLAGS.lambda_pseudo_mesh if mesh else 0.0,
        lambda_j=FLAGS.lambda_weak_pose if FLAGS.pose_supervision else 0.0, depth_size=FLAGS.depth_size)


def trained_parts(net, cfg) -> list:
    """Sub-networks that receive a gradient from L_weakly under ``cfg`` (the Trainer needs one for each)."""
    parts = ["hourglass"] if cfg.lambda_h else []
    mesh_terms = net.variant == "mesh" and (cfg.lambda_d or cfg.lambda_pm)
    if mesh_terms or cfg.lambda_j:
        parts += ["encoder"] + [p for p in ("mesh_gcn", "joint_mlp", "param_mlp") if getattr(net, p) is not None]
    if cfg.lambda_j:
        parts += [p for p in ("pose_regressor", "transfer_mlp") if getattr(net, p) is not None]
    return parts


def build_weak_loss(net, cfg):
    """``loss_fn(batch, outputs, epoch)`` of weak phase 2 (+ L_J of the task-transfer head with 3D joints)."""
    from hsr_tf import losses_rgb, losses_weak

    faces = net.faces

    def loss_fn(batch, outputs, epoch):
        total, terms = losses_weak.weakly_supervised_loss(batch, outputs, faces, cfg, net.image_size)
        if cfg.lambda_j and "joints_transfer" in outputs:
            terms["pose_transfer"] = losses_rgb.pose_loss(outputs["joints_transfer"], batch["joints"],
                                                          batch["bone_scale"])
            total += cfg.lambda_j * terms["pose_transfer"]
        return total, terms

    return loss_fn


def weak_dataset_fn(data_dir: str, pseudo, seed: int):
    """``epoch -> dataset`` of augmented target batches, with ``pseudo_vertices`` when ``pseudo`` is given."""
    from hsr_tf.train import pseudo_gt

    base = rgb_common.train_dataset_fn(data_dir, seed=seed)
    return base if pseudo is None else (lambda epoch: pseudo_gt.attach(base(epoch), pseudo))


def evaluate(net, data_dir: str, out_dir: str, label: str, joints_key: str = "joints", split: str = "test") -> dict:
    """rgb_common's section-5.1 evaluation, with the evaluated joints taken from ``joints_key``."""
    if joints_key == "joints":
        return rgb_common.evaluate(net, data_dir, out_dir, split=split, label=label)
    import tensorflow as tf

    from hsr_tf.data import rgb_reader, rgb_shards
    from hsr_tf.geometry import uvd as uvd_lib
    from hsr_tf.train import rgb_evaluation

    if joints_key not in ("joints_transfer",) or net.transfer_mlp is None:
        raise ValueError(f"--eval_joints={joints_key}: the pretrained network has no task-transfer head (train it "
                         "with --task_transfer)")

    @tf.function(reduce_retracing=True)
    def predict(inputs):
        out = dict(net(inputs, training=False))
        out["joints"] = out[joints_key]
        uv = uvd_lib.camera_to_uvd(out["joints"], inputs["camera"], inputs["root_depth"], inputs["bone_scale"])
        out["joints_uv"] = uv[..., :2]
        return out

    files = rgb_reader.resolve_files(data_dir, split)
    names = rgb_shards.validate_rgb_shard(files[0])["attrs"]["joint_names"]
    mean_pose = rgb_evaluation.mean_pose_from_shards(rgb_reader.resolve_files(data_dir, "train"))
    res = rgb_evaluation.evaluate(net, rgb_common.heldout_dataset(data_dir, split, image_size=net.image_size),
                                  predict_fn=lambda b: predict({k: b[k] for k in rgb_evaluation.MODEL_INPUT_KEYS}),
                                  mean_pose=mean_pose, num_overlay_frames=FLAGS.num_overlays)
    paths = rgb_evaluation.write_report(res, out_dir, faces=net.faces, joint_names=names, label=label,
                                        extra={"data_dir": os.path.abspath(data_dir), "split": split,
                                               "joints": joints_key})
    with open(paths["metrics"]) as f:
        return json.load(f)


def run(stop_after=None) -> dict:
    """Steps (0)-(3) of the module docstring. ``stop_after``: return after that many training steps of this
    process, as a kill would (test hook)."""
    from hsr_tf.train import loop
    from hsr_tf.train import pseudo_gt

    if FLAGS.workdir is None or FLAGS.pretrained_workdir is None:
        raise ValueError(f"--workdir and --pretrained_workdir: expected run directories, found {FLAGS.workdir!r}, "
                         f"{FLAGS.pretrained_workdir!r}")
    if FLAGS.weak_phase2_steps < 1:
        raise ValueError(f"--weak_phase2_steps: expected >= 1, found {FLAGS.weak_phase2_steps}")
    rgb_distribute.strategy()  # --distribution, before any other TensorFlow work (multi_worker); logs the batches
    chief = rgb_distribute.is_chief()
    workdir = FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    rgb_common.write_run_info(workdir)
    from hsr_tf.data import rgb_reader

    for split in ("train", "test"):  # converted or rendered elsewhere: never re-rendered here
        rgb_reader.resolve_files(FLAGS.data_dir, split)
    with rgb_distribute.scope():  # the network trained here: variables mirrored over the replicas
        net, ckpt = loop.load_model_from_workdir(FLAGS.pretrained_workdir)
    logging.info("Pretrained network (%s, %s) from %s", net.variant, net.image_size, ckpt)
    FLAGS.image_size = net.image_size  # the readers of rgb_common follow the network
    if FLAGS.eval_joints == "joints_transfer" and net.transfer_mlp is None:
        raise ValueError(f"--eval_joints=joints_transfer: {FLAGS.pretrained_workdir} has no task-transfer head")
    cfg = weak_loss_config(net.variant)
    label = os.path.basename(os.path.abspath(workdir))
    if FLAGS.evaluate and FLAGS.evaluate_pretrained and chief and \
            not os.path.exists(os.path.join(workdir, "eval_pretrained", "metrics.json")):
        m = evaluate(net, FLAGS.data_dir, os.path.join(workdir, "eval_pretrained"), "pretrained", FLAGS.eval_joints)
        logging.info("Pretrained on the target test split: pose error %.2f mm", m["pose_error_mm"])
    pseudo = None
    if cfg.lambda_pm:
        tag = FLAGS.pseudo_gt_tag or pseudo_gt.default_tag(FLAGS.pretrained_workdir)
        pseudo_gt.generate_from_workdir(FLAGS.data_dir, FLAGS.pretrained_workdir, "train", tag, FLAGS.batch_size,
                                        ckpt, log=logging.info)
        pseudo = pseudo_gt.load(FLAGS.data_dir, "train", tag)
    spe = rgb_common.steps_per_epoch(FLAGS.data_dir)
    left = stop_after
    hourglass_model, hg_key, _ = rgb_common.phase_model(net, 1)
    w1, w2 = (os.path.join(workdir, WEAK_DIRS[p]) for p in (1, 2))
    if FLAGS.weak_phase1_steps > 0:
        res = rgb_common.train_phase(hourglass_model, rgb_common.build_loss(net, 1),
                                     rgb_common.train_dataset_fn(FLAGS.data_dir, seed=FLAGS.seed + 11), w1,
                                     FLAGS.weak_phase1_steps, spe, hg_key, stop_after=left)
        if left is not None:
            left -= res["steps_here"]
        if res["interrupted"] or (left is not None and left <= 0):
            return {"interrupted": True}
        rgb_common.restore_into(hourglass_model, w1)
    parts = trained_parts(net, cfg)
    logging.info("Weak phase 2: %s; trained parts %s", cfg, parts)

    def variables_fn(m):
        return [v for name in parts for v in m.sub_networks()[name].trainable_variables]

    hparams = {"pose_supervision": FLAGS.pose_supervision, "lambda_depth": cfg.lambda_d,
               "lambda_pseudo_mesh": cfg.lambda_pm, "lambda_weak_pose": cfg.lambda_j, "variant": net.variant,
               "learning_rate": FLAGS.learning_rate, "seed": FLAGS.seed}
    res = rgb_common.train_phase(net, build_weak_loss(net, cfg), weak_dataset_fn(FLAGS.data_dir, pseudo,
                                                                                 FLAGS.seed + 12),
                                 w2, FLAGS.weak_phase2_steps, spe, ("image", "camera", "root_depth", "bone_scale"),
                                 variables_fn=variables_fn, hparams=hparams, stop_after=left)
    if res["interrupted"]:
        return {"interrupted": True}
    rgb_common.publish(net, workdir, FLAGS.weak_phase2_steps)
    metrics = None
    if not chief:
        rgb_distribute.log_not_chief("the evaluation on the target test split")
    elif FLAGS.evaluate:
        metrics = evaluate(net, FLAGS.data_dir, os.path.join(workdir, "eval"), label, FLAGS.eval_joints)
        logging.info("Target test split: pose error %.2f mm, AUC 0-50 %.3f, AUC 20-50 %.3f%s",
                     metrics["pose_error_mm"], metrics["auc_0_50"], metrics["auc_20_50"],
                     f", mesh error {metrics['mesh_error_mm']:.2f} mm" if "mesh_error_mm" in metrics else "")
    return {"interrupted": False, "metrics": metrics}
