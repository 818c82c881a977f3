"""Weakly-supervised training and evaluation on the real datasets (NYU, ICVL, MSRA).

Programs (thin absl wrappers over :func:`run_dataset`):

  python -m experiments.nyu_weak  --flagfile=experiments/flags/nyu_full.flags  --data_dir=D --workdir=W
  python -m experiments.icvl_weak --flagfile=experiments/flags/icvl_full.flags --data_dir=D --workdir=W
  python -m experiments.msra_weak --flagfile=experiments/flags/msra_full.flags --data_dir=D --workdir=W
      (all nine leave-one-subject-out folds, then their average; --msra_test_subjects=P3 for one fold)

``D`` holds the shards written by ``python -m data_prep.<dataset>``. The loss is the paper's weak supervision
(section III-D/E): joint loss through the joint-regression network (the dataset's evaluation joints, or the 21
correspondence joints with ``--reg_joints=correspondence`` as in the ablation IV-C) and, through the paper's joint
correspondences (``hsr_tf.data.datasets``), on each stage's 21 model joints; Chamfer; mean shape; no shape loss.

Reuses ``experiments.common``: its flags (model, loss weights, training schedule, ops), ``build_model``,
``command_line``, ``run_subprocess`` and ``HPARAM_*``; and the library's training loop, pipeline and metrics.
Evaluation is ``experiments.evaluate_real`` (run as a subprocess; its scoring, shared with the held-out figures
during training, is ``hsr_tf.train.real_evaluation``); export is
``experiments.export``.

Legend: B batch, J dataset joints, Jd regression joints, F frames.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags, logging

from experiments import common, model_spec

FLAGS = flags.FLAGS

flags.DEFINE_enum("reg_joints", "eval", ["eval", "correspondence"],
                  "Joints of the joint-regression network: the dataset's evaluation joints (NYU 14, ICVL 16, MSRA 21) "
                  "or the joints paired with our 21 (the paper's ablation, Table II(b)).")
flags.DEFINE_string("eval_protocols", None, "Comma-separated protocols for the final evaluation (default: all of the "
                    "dataset's, plus 'correspondence21' when --reg_joints=correspondence or without joint regression).")
flags.DEFINE_string("msra_test_subjects", "P0,P1,P2,P3,P4,P5,P6,P7,P8",
                    "MSRA: held-out subjects, one fold each (leave-one-subject-out); results averaged.")


def regression_indices(spec):
    """Dataset-joint indices predicted by the joint-regression network for the flags."""
    if not FLAGS.joint_regression:
        return spec.dataset_joint_indices
    return spec.regression_joint_indices(FLAGS.reg_joints)


def build_loss(model, spec, reg_idx):
    """Eq. 4 with the dataset's correspondence and regression joints; no shape loss (weak supervision)."""
    from hsr_tf import losses

    cfg = losses.LossConfig(joint_weight=FLAGS.lambda_joint, chamfer_weight=FLAGS.lambda_chamfer,
                            mean_shape_weight=FLAGS.lambda_mean_shape, shape_weight=0.0,
                            use_chamfer=FLAGS.lambda_chamfer > 0, use_mean_shape=FLAGS.lambda_mean_shape > 0,
                            use_shape=False, chamfer_tau_mm=FLAGS.chamfer_tau_mm, reduction=FLAGS.loss_reduction,
                            stage_joint_decay_epoch=FLAGS.stage_joint_decay_epoch,
                            supervise_joints_input=FLAGS.supervise_joints_input, correspondence=spec.name,
                            regression_joint_indices=tuple(int(i) for i in reg_idx))
    mean_shape = model.mean_shape() if callable(model.mean_shape) else model.mean_shape
    loss = losses.HandShapeLoss(mean_shape, cfg)

    def loss_fn(batch, outputs, epoch):
        total, terms = loss(outputs, batch, epoch)
        return total, {k: v for k, v in terms.items() if k != "total"}

    return loss_fn


def init_from_run(model, init_dir: str, num_points: int) -> int:
    """--init_from (a run WORKDIR or pretrained:NAME): see :func:`experiments.model_spec.init_from`."""
    return model_spec.init_from(model, init_dir, num_points, scope=common.distribution_strategy().scope())


def train_and_evaluate(spec, data_dir: str, workdir: str, test_split: str = "test", train_split: str = "train") -> dict:
    """Train on ``data_dir/train_split``, then evaluate (protocols) and export. Returns the evaluation summary."""
    if FLAGS.ops == "fallback":
        os.environ["HSR_TF_OPS"] = "fallback"
    import keras

    from hsr_tf import ops
    from hsr_tf.train import loop, pipeline

    os.makedirs(workdir, exist_ok=True)
    info = pipeline.read_data_info(data_dir, train_split)
    if info["dataset"] != spec.name:
        raise ValueError(f"{data_dir}: expected shards of dataset '{spec.name}', found '{info['dataset']}'")
    reg_idx = regression_indices(spec)
    logging.info("PointNet++ ops backend: %s; %s: regression joints %d, correspondence pairs %d", ops.backend(),
                 spec.name, len(reg_idx), len(spec.our_joint_indices))
    keras.utils.set_random_seed(FLAGS.seed)
    # without joint regression the model's dataset joints are its 21 joints (paired at evaluation)
    model = common.build_model({"num_joints": len(reg_idx) if FLAGS.joint_regression else 21})
    import tensorflow as tf

    has_ckpt = tf.train.latest_checkpoint(os.path.join(workdir, loop.CHECKPOINT_SUBDIR)) is not None
    if FLAGS.init_from and not has_ckpt:
        init_from_run(model, FLAGS.init_from, info["num_points"])
    loss_fn = build_loss(model, spec, reg_idx)
    heldout = pipeline.eval_dataset(data_dir, FLAGS.batch_size, split=test_split, include_vertices=False)
    from hsr_tf.train import real_evaluation

    def eval_fn(m, step):
        res = real_evaluation.evaluate_model(m, heldout, spec, reg_idx, has_regression=FLAGS.joint_regression,
                                           max_batches=FLAGS.eval_batches or None)
        return {f"{p}/mean_joint_error_mm": r["mean_joint_error_mm"] for p, r in res["protocols"].items()} | {
            "point_cloud_error_mm": res["point_cloud_error_mm"]}

    hparams = {k: (getattr(FLAGS, k) if k != "supervision" else "weak") for k in common.HPARAM_FLAGS}
    hparams.update(lambda_shape=0.0, dataset=spec.name, reg_joints=FLAGS.reg_joints)
    t0 = time.time()
    result = common.train_model(model, loss_fn, data_dir, workdir, heldout, eval_fn, hparams,
                                train_split=train_split, include_vertices=False)
    timings = {"train_s": time.time() - t0}
    summary = {"train": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}}
    if FLAGS.evaluate:
        t0 = time.time()
        args = [f"--workdir={workdir}", f"--data_dir={data_dir}", f"--dataset={spec.name}", f"--split={test_split}",
                f"--reg_joints={FLAGS.reg_joints}", f"--joint_regression={FLAGS.joint_regression}",
                f"--batch_size={FLAGS.batch_size}"]
        if FLAGS.eval_protocols:
            args.append(f"--eval_protocols={FLAGS.eval_protocols}")
        common.run_subprocess("experiments.evaluate_real", args)
        timings["evaluate_s"] = time.time() - t0
        with open(os.path.join(workdir, "eval", "summary.json")) as f:
            summary["eval"] = json.load(f)
    if FLAGS.export:
        t0 = time.time()
        common.run_subprocess("experiments.export", [f"--workdir={workdir}",
                                                      f"--export_dir={os.path.join(workdir, 'export')}",
                                                      f"--data_dir={data_dir}"])
        timings["export_s"] = time.time() - t0
    summary["timings"] = timings
    with open(os.path.join(workdir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True, default=str)
    return summary


def msra_fold_dir(data_dir: str, test_subject: str, fold_root: str) -> str:
    """A shard directory for one leave-one-subject-out fold, made of symlinks.

    ``fold_root/data/train-NNNNN.h5`` -> the shards of the eight other subjects, ``test-NNNNN.h5`` -> the held-out
    subject's (MSRA shards are written one split per subject, ``P0-00000.h5`` ...).
    """
    from hsr_tf.data import datasets, shards

    if test_subject not in datasets.MSRA_SUBJECTS:
        raise ValueError(f"--msra_test_subjects: expected names from {datasets.MSRA_SUBJECTS}, found {test_subject!r}")
    out = os.path.join(fold_root, "data")
    os.makedirs(out, exist_ok=True)
    counts = {"train": 0, "test": 0}
    for subject in datasets.MSRA_SUBJECTS:
        files = shards.list_shards(data_dir, subject)
        if not files:
            raise FileNotFoundError(f"{data_dir}: expected MSRA shards '{subject}-*.h5' (python -m data_prep.msra), "
                                    "found none")
        split = "test" if subject == test_subject else "train"
        for path in files:
            link = os.path.join(out, f"{split}-{counts[split]:05d}.h5")
            counts[split] += 1
            if os.path.lexists(link):
                if os.path.realpath(link) == os.path.realpath(path):
                    continue
                os.remove(link)
            os.symlink(os.path.abspath(path), link)
    return out


def program_main(name: str):
    """The absl ``main`` of the ``<name>_weak`` program: :func:`run_dataset` with no positional arguments."""
    from absl import app

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        run_dataset(name)

    return main


def run_program(name: str) -> None:
    """Run the ``<name>_weak`` program (absl: parse the flags, then :func:`run_dataset`)."""
    from absl import app

    app.run(program_main(name))


def run_dataset(name: str) -> dict:
    """Entry point of nyu_weak / icvl_weak / msra_weak."""
    from hsr_tf.data import datasets, shards

    if FLAGS.workdir is None:
        raise ValueError("--workdir: expected a run directory, found none")
    common.distribution_strategy()  # before any other TensorFlow work (--distribution=multi_worker)
    common.lock_workdir(FLAGS.workdir)  # a second run on this workdir refuses before writing anything
    if FLAGS.lambda_shape not in (None, 0.0):
        raise ValueError(f"--lambda_shape: expected unset or 0 (real data has no ground-truth shape), "
                         f"found {FLAGS.lambda_shape}")
    spec = datasets.get_spec(name)
    data_dir = FLAGS.data_dir
    if name != "msra":
        for split in ("train", "test"):
            if not shards.list_shards(data_dir, split):
                raise FileNotFoundError(f"{data_dir}: expected {split}-*.h5 shards of {name.upper()} "
                                        f"(python -m data_prep.{name} --raw_dir=R --out_dir={data_dir}), found none")
        return train_and_evaluate(spec, data_dir, FLAGS.workdir)
    subjects = [s.strip() for s in FLAGS.msra_test_subjects.split(",") if s.strip()]
    folds = {}
    for subject in subjects:
        fold_root = os.path.join(FLAGS.workdir, "folds", subject)
        fold_data = msra_fold_dir(data_dir, subject, fold_root)
        logging.info("MSRA fold: test subject %s (%s)", subject, fold_data)
        folds[subject] = train_and_evaluate(spec, fold_data, fold_root)
    summary = average_folds(folds)
    with open(os.path.join(FLAGS.workdir, "loso_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    print(json.dumps(summary["average"], indent=2, sort_keys=True))
    return summary


def average_folds(folds: dict) -> dict:
    """Mean over folds of each protocol's mean joint error (and the frame-weighted mean)."""
    per = {}
    for subject, res in folds.items():
        ev = res.get("eval", {})
        for proto, r in ev.get("protocols", {}).items():
            per.setdefault(proto, []).append((subject, r["mean_joint_error_mm"], r["num_frames"]))
    avg = {}
    for proto, rows in per.items():
        errs = [e for _, e, _ in rows]
        frames = [n for _, _, n in rows]
        avg[proto] = {"mean_over_folds_mm": sum(errs) / len(errs),
                      "frame_weighted_mm": sum(e * n for e, n in zip(errs, frames)) / max(sum(frames), 1),
                      "folds": {s: e for s, e, _ in rows}}
    return {"average": avg, "folds": {s: r.get("eval", {}) for s, r in folds.items()}}
