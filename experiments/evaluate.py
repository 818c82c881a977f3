"""Evaluate a trained run on a held-out split (paper section IV-A protocol on the synthetic set).

  python -m experiments.evaluate --workdir=W [--data_dir=D] [--split=test] [--out_dir=W/eval]

Restores the newest checkpoint of W (or --checkpoint), runs the whole split un-augmented and writes
metrics.json (mean joint error of the dataset joints, 21-joint model error, shape error, point-cloud
error, fraction of good frames at 10..80 mm; for a set rendered by data_prep.synth also the rest-shape error
of the predicted neutral mesh against the subject's, which separates shape from pose, beside the same error of
the hand model's mean shape as a reference), per_joint.csv, threshold_curve.csv and threshold_curve.png.
--data_dir defaults to the one recorded in W/flags.txt. A run trained on real shards (NYU, ICVL, MSRA) is
forwarded to ``experiments.evaluate_real`` (the dataset's protocols) and an RGB run (W/run_kind.txt) to
``experiments.evaluate_rgb``, so one command evaluates any run.
"""
import json
import os

import numpy as np
from absl import app, flags, logging

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_string("out_dir", None, "Report directory (default WORKDIR/eval).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the newest in WORKDIR/checkpoints).")
flags.DEFINE_integer("max_batches", 0, "Evaluate only the first N batches (0 = all).")

# After this program's flags (evaluate_real defines only the ones still missing): runs on real shards are forwarded
# there, and its flags (--dataset, --eval_protocols, --reg_joints) must parse here too.
from experiments import evaluate_real  # noqa: E402
from experiments import evaluate_rgb  # noqa: E402  (RGB runs, W/run_kind.txt = 'rgb', are forwarded there)


def synthetic_rest_shapes(data_dir):
    """{subject id: [V, 3] neutral mesh (hand frame, mm)} of a set rendered by data_prep.synth (from its
    manifest: the generator is deterministic given the seed), or None for shards from elsewhere."""
    from data_prep.synth import hands, render

    manifest = render.read_manifest(data_dir)
    if manifest is None:
        return None
    subjects = hands.make_subjects(manifest["num_subjects"], manifest["seed"])
    return {i: s.rest_vertices for i, s in enumerate(subjects)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    from hsr_tf import ops
    from hsr_tf.train import evaluation, loop, pipeline
    from hsr_tf.train import run_kind

    if run_kind.read_run_kind(FLAGS.workdir) == "rgb":
        return evaluate_rgb.main(argv)

    data_dir = common.resolve_data_dir(FLAGS.workdir)
    info = pipeline.read_data_info(data_dir, FLAGS.split)
    from hsr_tf.data import datasets
    if info["dataset"] in datasets.SPECS:
        logging.info("%s holds %s shards: evaluating with the dataset's protocols (experiments.evaluate_real)",
                     data_dir, info["dataset"])
        return evaluate_real.main(argv)
    model, ckpt = loop.load_model_from_workdir(FLAGS.workdir, FLAGS.checkpoint,
                                               example_points_shape=(1, info["num_points"], 3))
    ds = pipeline.eval_dataset(data_dir, FLAGS.batch_size, split=FLAGS.split, include_vertices=info["has_vertices"])
    logging.info("Evaluating %s on %s/%s (ops backend %s)", ckpt, data_dir, FLAGS.split, ops.backend())
    rest_shapes = synthetic_rest_shapes(data_dir)
    res = evaluation.evaluate(model, ds, max_batches=FLAGS.max_batches or None, rest_shapes=rest_shapes)
    if rest_shapes is not None:
        # Reference for rest_shape_error_mm: the hand model's mean shape B0 at its own size, same frames.
        mean_shape = np.asarray(model.mean_shape(), np.float64)
        res["rest_shape_error_mean_shape_mm"] = float(np.mean([
            np.linalg.norm(mean_shape - rest_shapes[int(i)], axis=-1).mean() for i in res["per_frame"]["subject"]]))
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval")
    names = info["joint_names"] if len(info["joint_names"]) == len(res["per_joint_error_mm"]) else None
    extra = {"checkpoint": ckpt, "data_dir": os.path.abspath(data_dir), "split": FLAGS.split}
    paths = evaluation.write_report(res, out_dir, joint_names=names, label=os.path.basename(
        os.path.abspath(FLAGS.workdir)), extra=extra)
    with open(paths["metrics"]) as f:
        doc = json.load(f)
    print(json.dumps({k: v for k, v in doc.items() if not isinstance(v, dict)}, indent=2, sort_keys=True))
    logging.info("Wrote %s", ", ".join(paths.values()))


if __name__ == "__main__":
    app.run(main)
