"""Held-out evaluation of a depth model (paper section IV-A) and its report files.

``evaluate`` runs the model over an un-augmented reader dataset, maps predictions and ground truth
back to camera-frame mm with ``hsr_tf.data.reader.to_camera_mm`` and accumulates the metrics of
``hsr_tf.metrics``:

* joint error of the joint-regression output ``dataset_joints`` against the dataset joints (the
  evaluation joints; mean, per joint, fraction of frames with max error <= threshold),
* joint error of the 21 hand-model joints ``joints`` (only when the data has 21 joints, synthetic),
* shape error (mean vertex error) when the batches carry ``vertices``,
* point-cloud error (input point -> nearest predicted vertex, no cut-off),
* rest-shape error: the predicted neutral mesh at the predicted size, s T(beta, theta0) (s the hand-to-input
  scale, in mm per mm), against the subject's true neutral mesh, both in the hand frame (wrist at the
  origin), when the caller knows the subjects' neutral meshes (``rest_shapes``; synthetic data). It measures
  shape and size free of pose and placement; the size is in s, not beta, because the similarity transform
  absorbs it.

``write_report`` writes ``metrics.json``, ``per_joint.csv``, ``threshold_curve.csv``,
``threshold_curve.png`` and ``per_frame.csv`` (per-frame errors, read back by ``read_per_frame_csv``).

Legend: B batch, N points, V vertices, J joints, T thresholds.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from hsr_tf import metrics as metrics_lib
from hsr_tf.data.reader import to_camera_mm


def make_predict_fn(model, input_key: str = "points"):
    """tf.function ``batch -> model outputs`` (inference mode)."""

    @tf.function(reduce_retracing=True)
    def predict(points):
        return model(points, training=False)

    return lambda batch: predict(batch[input_key])


def outputs_to_mm(outputs: dict, batch: dict, keys: Sequence[str] = ("vertices", "joints", "dataset_joints")) -> dict:
    """Selected [B, K, 3] normalised outputs -> camera mm (undoing any augmentation of the batch)."""
    return {k: to_camera_mm(outputs[k], batch).numpy() for k in keys if k in outputs}


def evaluate(model, dataset: tf.data.Dataset, max_batches: Optional[int] = None, joint_names=None,
             thresholds_mm=metrics_lib.DEFAULT_THRESHOLDS_MM, predict_fn=None, rest_shapes=None) -> dict:
    """Metrics of ``model`` over ``dataset`` (all of it, or its first ``max_batches`` batches).

    Args:
      rest_shapes: None, or a mapping subject id -> [V, 3] true neutral mesh (hand frame, mm) of every
        subject in ``dataset``, whose batches then need ``subject``; adds ``rest_shape_error_mm``.

    Returns:
      dict with scalars ``mean_joint_error_mm`` (dataset joints), ``model_joint_error_mm`` (21 model
      joints, when comparable), ``shape_error_mm`` and ``aligned_shape_error_mm`` (when GT vertices
      exist), ``point_cloud_error_mm``, ``rest_shape_error_mm`` (with ``rest_shapes``),
      ``num_frames``, ``seconds``; arrays ``per_joint_error_mm`` [J], ``thresholds_mm`` [T],
      ``fraction_good_frames`` [T]; ``per_frame``: dict of [F] arrays, the per-frame errors (mean over
      joints / vertices / points) under the names above with ``joint_error_mm`` for the dataset joints, plus
      ``frame_id`` and ``subject`` when the batches carry them (for paired comparisons of runs).
    Raises:
      ValueError if the dataset yields no batch.
    """
    predict_fn = predict_fn or make_predict_fn(model)
    joint_metric = metrics_lib.JointErrorMetric(thresholds_mm, joint_names=joint_names)
    model_joint_metric = metrics_lib.JointErrorMetric(thresholds_mm)
    shape_metric = metrics_lib.ShapeErrorMetric()
    aligned_shape_metric = metrics_lib.AlignedShapeErrorMetric()
    pc_metric = metrics_lib.PointCloudErrorMetric()
    rest_metric = metrics_lib.RestShapeErrorMetric() if rest_shapes is not None else None
    per_frame = {}  # name -> list of [B] arrays

    def record(name, values):
        per_frame.setdefault(name, []).append(np.asarray(values).reshape(-1))

    has_shape = False
    has_model_joints = False
    t0 = time.perf_counter()
    n_batches = 0
    for batch in dataset:
        if max_batches is not None and n_batches >= max_batches:
            break
        n_batches += 1
        out = predict_fn(batch)
        mm = outputs_to_mm(out, batch)
        gt_joints = to_camera_mm(batch["joints"], batch).numpy()
        pred_joints = mm["dataset_joints"] if "dataset_joints" in mm else mm["joints"]
        for key in ("frame_id", "subject"):
            if key in batch:
                record(key, batch[key].numpy())
        record("joint_error_mm", joint_metric.update(pred_joints, gt_joints).mean(axis=1))
        if "joints" in mm and mm["joints"].shape[1] == gt_joints.shape[1]:
            has_model_joints = True
            model_joint_metric.update(mm["joints"], gt_joints)
        if "vertices" in batch:
            has_shape = True
            gt_vertices = to_camera_mm(batch["vertices"], batch).numpy()
            record("shape_error_mm", shape_metric.update(mm["vertices"], gt_vertices))
            record("aligned_shape_error_mm", aligned_shape_metric.update(mm["vertices"], gt_vertices))
        record("point_cloud_error_mm", pc_metric.update(to_camera_mm(batch["points"], batch).numpy(), mm["vertices"]))
        if rest_metric is not None:
            if "subject" not in batch:
                raise ValueError("evaluate: rest_shapes needs the batches' 'subject' ids, found batches without")
            ids = batch["subject"].numpy().tolist()
            missing = sorted(set(ids) - set(rest_shapes))
            if missing:
                raise ValueError(f"evaluate: rest_shapes: expected a neutral mesh for every subject, found none "
                                 f"for {missing}")
            size = (out["scale"] * tf.cast(tf.reshape(batch["scale"], [-1]), tf.float32)).numpy()  # mm per mm
            record("rest_shape_error_mm", rest_metric.update(out["rest_vertices"].numpy() * size[:, None, None],
                                                             np.stack([rest_shapes[i] for i in ids])))
    if n_batches == 0:
        raise ValueError("evaluate: expected at least one batch in the evaluation dataset, found none")
    res = joint_metric.result()
    out = {
        "mean_joint_error_mm": res["mean_joint_error_mm"],
        "per_joint_error_mm": res["per_joint_error_mm"],
        "thresholds_mm": res["thresholds_mm"],
        "fraction_good_frames": res["fraction_good_frames"],
        "num_frames": res["num_frames"],
    }
    out.update(pc_metric.result())
    if has_shape:
        out.update(shape_metric.result())
        out.update(aligned_shape_metric.result())
    if rest_metric is not None:
        out.update(rest_metric.result())
    if has_model_joints:
        out["model_joint_error_mm"] = model_joint_metric.result()["mean_joint_error_mm"]
    out["per_frame"] = {k: np.concatenate(v) for k, v in per_frame.items()}
    out["seconds"] = time.perf_counter() - t0
    return out


def scalar_metrics(results: dict) -> dict:
    """The scalar entries of an :func:`evaluate` result (for TensorBoard / logs)."""
    return {k: float(v) for k, v in results.items() if not isinstance(v, dict) and np.ndim(v) == 0}


def metrics_doc(results: dict, joint_names=None):
    """(metrics.json dict with the scalars, num_frames and per-joint errors by name; per-joint errors [J];
    the joint names) of an evaluation result with ``num_frames`` and ``per_joint_error_mm`` (depth or RGB)."""
    doc = scalar_metrics(results)
    doc["num_frames"] = int(results["num_frames"])
    per_joint = np.asarray(results["per_joint_error_mm"])
    names = list(joint_names) if joint_names is not None else [f"joint_{j}" for j in range(len(per_joint))]
    doc["per_joint_error_mm"] = {n: float(e) for n, e in zip(names, per_joint)}
    return doc, per_joint, names


def write_report(results: dict, out_dir: str, joint_names=None, label: str = "model",
                 extra: Optional[dict] = None) -> dict:
    """Write metrics.json, per_joint.csv, threshold_curve.csv, threshold_curve.png and (when the results have
    them) per_frame.csv into ``out_dir``.

    Returns:
      {name: path} of the files written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, v) for k, v in (
        ("metrics", "metrics.json"), ("per_joint", "per_joint.csv"), ("curve_csv", "threshold_curve.csv"),
        ("curve_png", "threshold_curve.png"))}
    doc, per_joint, names = metrics_doc(results, joint_names)
    thr, frac = np.asarray(results["thresholds_mm"]), np.asarray(results["fraction_good_frames"])
    doc["fraction_good_frames_at"] = {f"{t:g}mm": float(f) for t, f in zip(thr, frac) if t in (10, 20, 30, 40, 50, 80)}
    if extra:
        doc.update(extra)
    with open(paths["metrics"], "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    metrics_lib.write_per_joint_csv(paths["per_joint"], per_joint, names)
    metrics_lib.write_threshold_csv(paths["curve_csv"], thr, frac)
    metrics_lib.plot_threshold_curve(paths["curve_png"], {label: (thr, frac)})
    if results.get("per_frame"):
        paths["per_frame"] = os.path.join(out_dir, "per_frame.csv")
        write_per_frame_csv(paths["per_frame"], results["per_frame"])
    return paths


def write_per_frame_csv(path: str, per_frame: dict) -> None:
    """One row per frame: ``frame_id``, ``subject`` (when known) then the per-frame errors in mm."""
    import csv

    names = [k for k in ("frame_id", "subject") if k in per_frame] + sorted(
        k for k in per_frame if k not in ("frame_id", "subject"))
    lengths = {len(per_frame[k]) for k in names}
    if len(lengths) != 1:
        raise ValueError(f"per_frame: expected arrays of one length, found lengths {sorted(lengths)}")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*(per_frame[k] for k in names)):
            w.writerow([int(v) if k in ("frame_id", "subject") else f"{float(v):.4f}" for k, v in zip(names, row)])


def read_per_frame_csv(path: str) -> dict:
    """Inverse of :func:`write_per_frame_csv`: name -> [F] array (ids int64, errors float64)."""
    import csv

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected the per-frame table written by experiments.evaluate, found no file")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: expected a header row, found an empty file")
    names, body = rows[0], rows[1:]
    return {n: np.asarray([r[i] for r in body], np.int64 if n in ("frame_id", "subject") else np.float64)
            for i, n in enumerate(names)}
