"""Evaluation of a depth model on a real dataset with the paper's protocols (section IV-A).

The library half of ``experiments.evaluate_real`` (which adds the flags and the program) and of the training-time
held-out figures of ``experiments.real_common``: both import this module, neither imports the other.

Protocols (``hsr_tf.data.datasets``): NYU ``standard14`` (14 joints, all test frames) and ``model_based10`` (10
joints, first 2,440 test frames by frame number); ICVL ``standard16``; MSRA ``loso21`` (per fold); any dataset
``correspondenceK`` (the K dataset joints paired with our 21 joints, the ablation protocol of Table II(b)).

Predictions of the dataset joints: the joint-regression output (``dataset_joints``, joints ``reg_idx``); a protocol
joint must be among them. Without joint regression the prediction of a dataset joint is its paired model joint
(only the paired joints can be evaluated).

Legend: B batch, J dataset joints, Jd regression joints, E protocol joints, K paired joints.
"""
from __future__ import annotations

import json
import os

import numpy as np

from hsr_tf import metrics as metrics_lib
from hsr_tf.data import datasets
from hsr_tf.data.reader import to_camera_mm
from hsr_tf.train import evaluation


def protocols_of(spec, names=None) -> dict:
    """name -> Protocol: the dataset's own plus ``correspondence{K}``; ``names`` (the --eval_protocols list)
    selects, in order."""
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


def prediction_columns(protocol, available) -> np.ndarray | None:
    """[E] positions of the protocol's joints among the predicted dataset joints ``available`` [Jd], or None if
    one of them is not predicted."""
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
    Raises:
      ValueError: an explicitly asked protocol is not predicted, or the dataset yields no batch.
    """
    explicit = protocols is not None
    protocols = protocols if explicit else protocols_of(spec)
    available = np.asarray(reg_idx) if has_regression else np.asarray(spec.dataset_joint_indices)
    cols, skipped = {}, {}
    for name, proto in protocols.items():
        c = prediction_columns(proto, available)
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
    """Per-protocol report files (``evaluation.write_report`` in ``out_dir/<protocol>``) + ``out_dir/summary.json``;
    returns the summary."""
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
