"""Evaluate a trained RGB run (experiments.rgb_synth and the programs built on experiments.rgb_common).

  python -m experiments.evaluate_rgb --workdir=W [--data_dir=D] [--split=test] [--out_dir=W/eval]

Restores W's published network (W/checkpoints, W/model_config.json) and writes the section-5.1 report of
``hsr_tf.train.rgb_evaluation`` (mesh error, aligned mesh error, pose error, 3D PCK and AUC, 2D joint error, the
mean baseline of the training split, per-frame CSV, overlays) to W/eval. --data_dir, --seed and
--background_dir default to the run's own (W/flags.txt). ``python -m experiments.evaluate --workdir=W`` forwards
here for RGB runs (W/run_kind.txt says 'rgb').
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging

from experiments import rgb_common  # defines the RGB flags and common's

FLAGS = flags.FLAGS

# experiments.evaluate defines these with the same meaning: define only what is missing, so that both modules
# can be imported in one process.
for _name, _default, _help in (("split", "test", "Split to evaluate."),
                               ("out_dir", None, "Report directory (default WORKDIR/eval)."),
                               ("checkpoint", None, "Checkpoint prefix (default: the newest in WORKDIR/checkpoints).")):
    if _name not in FLAGS:
        flags.DEFINE_string(_name, _default, _help)
if "max_batches" not in FLAGS:
    flags.DEFINE_integer("max_batches", 0, "Evaluate only the first N batches (0 = all).")


def _as_trained(name: str) -> None:
    """Set --name to the run's recorded value unless it was given on the command line."""
    from experiments import common

    recorded = common.workdir_flag(FLAGS.workdir, name)
    if not FLAGS[name].present and recorded is not None:
        FLAGS[name].parse(recorded)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    from hsr_tf.train import loop, run_kind

    kind = run_kind.read_run_kind(FLAGS.workdir)
    if kind != "rgb":
        raise app.UsageError(f"--workdir={FLAGS.workdir}: expected an RGB run (run_kind.txt 'rgb'), found a {kind} "
                             "run; evaluate it with experiments.evaluate")
    for name in ("data_dir", "seed", "background_dir", "num_overlays"):
        _as_trained(name)
    net, ckpt = loop.load_model_from_workdir(FLAGS.workdir, FLAGS.checkpoint)
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval")
    logging.info("Evaluating %s on %s/%s", ckpt, FLAGS.data_dir, FLAGS.split)
    doc = rgb_common.evaluate(net, FLAGS.data_dir, out_dir, split=FLAGS.split, max_batches=FLAGS.max_batches or None,
                              label=os.path.basename(os.path.abspath(FLAGS.workdir)), extra={"checkpoint": ckpt})
    print(json.dumps({k: v for k, v in doc.items() if not isinstance(v, dict)}, indent=2, sort_keys=True))
    logging.info("Wrote %s", out_dir)


if __name__ == "__main__":
    app.run(main)
