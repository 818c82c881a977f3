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

Predictions of the dataset joints: the joint-regression output (``dataset_joints``, joints ``reg_idx``); a protocol
joint must be among them. Without joint regression the prediction of a dataset joint is its paired model joint
(only the paired joints can be evaluated).

Writes ``OUT/<protocol>/{metrics.json, per_joint.csv, threshold_curve.csv, threshold_curve.png}`` and
``OUT/summary.json`` (OUT = W/eval). Point cloud error (input points to nearest predicted vertex, mm) is common
to all protocols.

Legend: B batch, J dataset joints, Jd regression joints, E protocol joints, K paired joints.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS

if "reg_joints" not in FLAGS:  # also defined by experiments.real_common when imported by training
    from experiments import real_common  # noqa: F401  (defines reg_joints, eval_protocols, and common's flags)
# experiments.evaluate defines split/out_dir/checkpoint with the same meaning: define only what is missing, so that
# both modules can be imported in one process (e.g. a test session).
for _name, _default, _help in (("dataset", None, "nyu, icvl or msra."),
                               ("split", "test", "Split to evaluate."),
                               ("out_dir", None, "Report directory (default WORKDIR/eval)."),
                               ("checkpoint", None, "Checkpoint prefix (default: the newest in WORKDIR/checkpoints).")):
    if _name not in FLAGS:
        flags.DEFINE_string(_name, _default, _help)


def protocols_of(spec, names=None) -> dict:
    """name -> Protocol: the dataset's own plus ``correspondence{K}``; ``names`` selects (in order)."""
    from hsr_tf.data import datasets

    table = dict(spec.protocols)
    k = len(spec.dataset_joint_indices)
    table[f"correspondence{k}"] = datasets.Protocol(f"correspondence{k}", spec.dataset_joint_indices, None,
                                                    f"the {k} joints paired with our 21 (Table II(b) ablation)")
    if names is None:
        return table
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"--eval_protocols: expected names from {list(table)}, found {missing}")
    return {n: table[n] for n in names}


def _prediction_columns(protocol, available) -> np.ndarray | None:
    """Positions of the protocol's joints among the predicted dataset joints, or None if one is not predicted."""
    pos = {int(j): i for i, j in enumerate(available)}
    if not all(int(j) in pos for j in protocol.joint_indices):
        return None
    return np.array([pos[int(j)] for j in protocol.joint_indices], dtype=np.int64)


def evaluate_model(model, dataset, spec, reg_idx, has_regression: bool = True, protocols=None,
                   max_batches=None, thresholds_mm=None) -> dict:
    """Run ``model`` over ``dataset`` (un-augmented reader batches) and score every protocol.

    Args:
      reg_idx: [Jd] dataset-joint indices of the regression output.
      protocols: dict name -> Protocol (default: all of :func:`protocols_of`; those whose joints are not
        predicted are left out when not asked for explicitly).
    Returns:
      {"protocols": {name: JointErrorMetric result + "description"}, "point_cloud_error_mm", "num_frames",
       "skipped_protocols": {name: reason}}.
    """
    from hsr_tf import metrics as metrics_lib
    from hsr_tf.data.reader import to_camera_mm
    from hsr_tf.train import evaluation

    explicit = protocols is not None
    protocols = protocols if explicit else protocols_of(spec)
    available = np.asarray(reg_idx) if has_regression else np.asarray(spec.dataset_joint_indices)
    cols, skipped = {}, {}
    for name, proto in protocols.items():
        c = _prediction_columns(proto, available)
        if c is None:
            reason = (f"its joints {list(map(int, proto.joint_indices))} are not all among the predicted dataset "
                      f"joints {list(map(int, available))}")
            if explicit:
                raise ValueError(f"protocol {name}: {reason}")
            skipped[name] = reason
        else:
            cols[name] = c
    kw = {} if thresholds_mm is None else {"thresholds_mm": thresholds_mm}
    joint_metrics = {n: metrics_lib.JointErrorMetric(joint_names=[spec.joint_names[j] for j in
                                                                   protocols[n].joint_indices], **kw) for n in cols}
    pc = metrics_lib.PointCloudErrorMetric()
    predict_fn = evaluation.make_predict_fn(model)
    seen = 0
    for b, batch in enumerate(dataset):
        if max_batches is not None and b >= max_batches:
            break
        out = predict_fn(batch)
        gt = to_camera_mm(batch["joints"], batch).numpy()                          # [B, J, 3]
        n = gt.shape[0]
        ids = batch["frame_id"].numpy() if "frame_id" in batch else np.arange(seen, seen + n)
        seen += n
        if has_regression:
            pred = to_camera_mm(out["dataset_joints"], batch).numpy()             # [B, Jd, 3]
        else:
            ours = to_camera_mm(out["joints"], batch).numpy()                     # [B, 21, 3]
            pred = np.asarray(spec.transform_our_joints(ours))[:, spec.our_joint_indices]  # [B, K, 3]
        verts = to_camera_mm(out["vertices"], batch).numpy()
        pc.update(to_camera_mm(batch["points"], batch).numpy(), verts)
        for name, c in cols.items():
            proto = protocols[name]
            keep = np.ones(n, bool) if proto.num_frames is None else ids < proto.num_frames
            if keep.any():
                joint_metrics[name].update(pred[keep][:, c], gt[keep][:, proto.joint_indices])
    if seen == 0:
        raise ValueError("evaluate: expected at least one batch in the evaluation dataset, found none")
    res = {"protocols": {}, "skipped_protocols": skipped, "num_frames": seen}
    res.update(pc.result())
    for name, m in joint_metrics.items():
        if m.num_frames == 0:
            skipped[name] = "no frame of the split falls in the protocol's frame range"
            continue
        r = m.result()
        r["description"] = protocols[name].description
        res["protocols"][name] = r
    return res


def write_reports(res: dict, spec, out_dir: str, label: str, extra: dict) -> dict:
    """Per-protocol report files (hsr_tf.train.evaluation.write_report) + summary.json."""
    from hsr_tf.train import evaluation

    protos = protocols_of(spec)
    summary = {"dataset": spec.name, "num_frames": res["num_frames"], "point_cloud_error_mm":
               res["point_cloud_error_mm"], "skipped_protocols": res["skipped_protocols"], "protocols": {}}
    summary.update(extra)
    for name, r in res["protocols"].items():
        r = dict(r)
        description = r.pop("description")
        r["point_cloud_error_mm"] = res["point_cloud_error_mm"]
        names = [spec.joint_names[j] for j in protos[name].joint_indices]
        paths = evaluation.write_report(r, os.path.join(out_dir, name), joint_names=names,
                                        label=f"{label} ({name})", extra={"protocol": name,
                                                                          "description": description})
        summary["protocols"][name] = {"mean_joint_error_mm": r["mean_joint_error_mm"],
                                      "num_frames": r["num_frames"], "description": description,
                                      "files": paths}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


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
    from experiments import common, real_common
    from hsr_tf.data import datasets
    from hsr_tf.train import loop, pipeline

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
