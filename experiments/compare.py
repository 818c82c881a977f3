"""Compare evaluated runs frame by frame (e.g. the rows of an ablation table).

  python -m experiments.compare --workdirs=runs/t2a_joint,runs/t2a_joint_chamfer,runs/t2a_joint_shape \
      [--metrics=shape_error_mm,rest_shape_error_mm] [--json_out=F]

Reads each run's ``eval/per_frame.csv`` (written by ``experiments.evaluate``), pairs the frames by frame id and
prints, per metric, each run's mean and its paired difference from the first run with a 95 % percentile
bootstrap interval over the test frames (``hsr_tf.metrics.paired_difference``). The interval says how much
the test set's sampling moves the difference; it does not cover the spread between training seeds.
"""
import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Evaluated runs; the first is the reference.")
UNITS = {"mm": "mm", "px": "px", "pct": "%", "deg": "deg"}  # by the column name's last part
flags.DEFINE_list("metrics", ["joint_error_mm", "shape_error_mm", "aligned_shape_error_mm", "rest_shape_error_mm",
                              "point_cloud_error_mm"], "Per-frame columns to compare (those a run lacks are skipped).")
flags.DEFINE_string("eval_subdir", "eval", "Report directory inside each workdir.")
flags.DEFINE_float("confidence", 0.95, "Confidence level of the intervals.")
flags.DEFINE_string("json_out", None, "Also write the comparison as JSON here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdirs or len(FLAGS.workdirs) < 2:
        raise app.UsageError(f"--workdirs: expected at least two runs, found {FLAGS.workdirs}")
    import numpy as np

    from hsr_tf.metrics import paired_difference
    from hsr_tf.train.evaluation import read_per_frame_csv

    tables = [read_per_frame_csv(os.path.join(w, FLAGS.eval_subdir, "per_frame.csv")) for w in FLAGS.workdirs]
    for w, t in zip(FLAGS.workdirs, tables):
        if "frame_id" not in t:
            raise ValueError(f"{w}: expected a frame_id column to pair frames, found {sorted(t)}")
    common_ids = set(tables[0]["frame_id"].tolist())
    for t in tables[1:]:
        common_ids &= set(t["frame_id"].tolist())
    for w, t in zip(FLAGS.workdirs, tables):
        if len(set(t["frame_id"].tolist())) != len(t["frame_id"]):
            raise ValueError(f"{w}: expected each frame once in per_frame.csv, found repeated frame ids")
        if len(common_ids) != len(t["frame_id"]):
            raise ValueError(f"{w}: expected the same evaluated frames as the other runs, found "
                             f"{len(t['frame_id'])} frames of which {len(common_ids)} are shared")
    ids = sorted(common_ids)
    order = []  # per run: the row of each shared frame id, in the order of ``ids``
    for t in tables:
        row_of = {int(fid): i for i, fid in enumerate(t["frame_id"])}
        order.append(np.array([row_of[fid] for fid in ids]))
    report = {"workdirs": FLAGS.workdirs, "num_frames": len(ids), "metrics": {}}
    names = [os.path.basename(os.path.normpath(w)) for w in FLAGS.workdirs]
    width = max(len(n) for n in names)
    print(f"{len(ids)} frames in every run; differences from {names[0]} with "
          f"{100 * FLAGS.confidence:g} % bootstrap intervals over frames")
    for metric in FLAGS.metrics:
        if not all(metric in t for t in tables):
            continue
        ref = tables[0][metric][order[0]]
        unit = UNITS.get(metric.rsplit("_", 1)[-1], "")
        rows = []
        print(f"{metric}:")
        for name, t, o in zip(names, tables, order):
            d = paired_difference(ref, t[metric][o], confidence=FLAGS.confidence)
            rows.append({"run": name, **d})
            diff = "" if name == names[0] else (f"  {d['mean_difference']:+7.3f} {unit} "
                                                 f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            print(f"  {name:{width}s} {d['mean_b']:8.3f} {unit}{diff}")
        report["metrics"][metric] = rows
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)
