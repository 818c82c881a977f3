"""Evaluate a run on a real dataset with the paper's protocols (section IV-A).

  python -m experiments.evaluate_real --workdir=W [--dataset=nyu] [--data_dir=D] [--split=test]
      [--eval_protocols=standard14,model_based10] [--reg_joints=eval] [--joint_regression=true]

--dataset defaults to the one the shards name; --data_dir, --reg_joints and --joint_regression default to the
values the run in W trained with (its flags.txt), so ``--workdir`` alone is enough. ``experiments.evaluate``
forwards here when W trained on real shards.

Protocols (``hsr_tf.data.datasets``): NYU ``standard14`` (14 joints, all test frames) and ``model_based10`` (10
joints, first 2,440 test frames by frame number); ICVL ``standard16``; MSRA ``loso21`` (per fold; the average over
folds is made by ``experiments.msra_weak``); any dataset ``correspondenceK`` (the K dataset joints paired with our
21 joints, the ablation protocol of Table II(b)).

The scoring is ``hsr_tf.train.real_evaluation`` (shared with the held-out figures during training): a protocol
joint must be among the predicted dataset joints (the joint-regression output, or without joint regression the
joints paired with our 21).

Writes ``OUT/<protocol>/{metrics.json, per_joint.csv, threshold_curve.csv, threshold_curve.png}`` and
``OUT/summary.json`` (OUT = W/eval). Point cloud error (input points to nearest predicted vertex, mm) is common
to all protocols.

Legend: B batch, J dataset joints, Jd regression joints, E protocol joints, K paired joints.
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging

from experiments import real_common  # defines reg_joints, eval_protocols and common's flags

FLAGS = flags.FLAGS

# experiments.evaluate defines split/out_dir/checkpoint with the same meaning: define only what is missing, so that
# both modules can be imported in one process (e.g. a test session).
for _name, _default, _help in (("dataset", None, "nyu, icvl or msra."),
                               ("split", "test", "Split to evaluate."),
                               ("out_dir", None, "Report directory (default WORKDIR/eval)."),
                               ("checkpoint", None, "Checkpoint prefix (default: the newest in WORKDIR/checkpoints).")):
    if _name not in FLAGS:
        flags.DEFINE_string(_name, _default, _help)


def _training_flag(name: str):
    """The value of --name: from the command line when given there, else as the run in --workdir trained."""
    from experiments import common

    if FLAGS[name].present:
        return FLAGS[name].value
    recorded = common.workdir_flag(FLAGS.workdir, name)
    if recorded is None:
        return FLAGS[name].value
    FLAGS[name].parse(recorded)
    return FLAGS[name].value


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    from experiments import common
    from hsr_tf.data import datasets
    from hsr_tf.train import loop, pipeline
    from hsr_tf.train.real_evaluation import evaluate_model, protocols_of, write_reports

    data_dir = common.resolve_data_dir(FLAGS.workdir)
    info = pipeline.read_data_info(data_dir, FLAGS.split)
    if info["dataset"] not in datasets.SPECS:
        raise app.UsageError(f"{data_dir}: the shards hold '{info['dataset']}' frames, not one of "
                             f"{sorted(datasets.SPECS)}; evaluate synthetic runs with experiments.evaluate")
    dataset = (FLAGS.dataset or info["dataset"]).lower()
    if dataset != info["dataset"]:
        raise app.UsageError(f"--dataset={dataset}: the shards in {data_dir} hold '{info['dataset']}' frames")
    spec = datasets.get_spec(dataset)
    _training_flag("reg_joints")
    _training_flag("joint_regression")
    model, ckpt = loop.load_model_from_workdir(FLAGS.workdir, FLAGS.checkpoint,
                                               example_points_shape=(1, info["num_points"], 3))
    reg_idx = real_common.regression_indices(spec)
    ds = pipeline.eval_dataset(data_dir, FLAGS.batch_size, split=FLAGS.split, include_vertices=False)
    names = [s.strip() for s in FLAGS.eval_protocols.split(",")] if FLAGS.eval_protocols else None
    protocols = protocols_of(spec, names) if names else None
    res = evaluate_model(model, ds, spec, reg_idx, has_regression=FLAGS.joint_regression, protocols=protocols)
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval")
    summary = write_reports(res, spec, out_dir, os.path.basename(os.path.abspath(FLAGS.workdir)),
                            {"checkpoint": ckpt, "data_dir": os.path.abspath(data_dir), "split": FLAGS.split})
    print(json.dumps({k: v for k, v in summary.items() if k != "protocols"} |
                     {"mean_joint_error_mm": {k: v["mean_joint_error_mm"] for k, v in summary["protocols"].items()}},
                     indent=2, sort_keys=True))
    logging.info("Wrote %s", out_dir)


if __name__ == "__main__":
    app.run(main)
