"""Held-out evaluation of the RGB mesh network (Ge et al. section 5.1) and its report files.

Metrics (all mm unless said; the camera, root depth and hand scale of every frame are given, as in the paper):

* mesh error: mean distance between corresponding predicted and ground-truth vertices, camera frame;
* aligned mesh error: the same after a least-squares similarity alignment of each predicted mesh onto its ground
  truth (``hsr_tf.metrics.similarity_align``; Table 2 compares methods on aligned meshes);
* pose error, 3D PCK (0-50 mm) and AUC (0-50 mm as on RHD, 20-50 mm as on STB): root-relative joint errors
  (``hsr_tf.pose_metrics``, root = wrist, 21 joints counted);
* 2D joint error: mean pixel distance between predicted and ground-truth ``joints_uv`` in the input crop;
* mesh quality (when the faces are known): ``edge_length_error_pct``, the mean relative error of the edge lengths
  (%), and ``normal_angle_error_deg``, the mean angle between predicted and true face normals (camera frame);
  what the edge and normal losses of Eq. 6 act on, and what a vertex error can hide (a thin or crumpled mesh);
* a reference in the same run: the **mean baseline**, the training set's mean root-relative pose and mesh divided
  by the hand scale (camera frame), scaled by each test frame's hand scale and placed at its true root joint; it
  is what a network that ignores the image can reach at best with one answer (placing it at the true root favours
  it: a real prediction must also find the root's (u, v)).

Files of :func:`write_report`: ``metrics.json``, ``per_frame.csv`` (columns named as the depth evaluation's, so
``experiments.compare`` pairs RGB runs too: ``joint_error_mm`` = the frame's pose error, ``shape_error_mm`` = its mesh
error, ``aligned_shape_error_mm``, ``joint_2d_error_px``, ``edge_length_error_pct``, ``normal_angle_error_deg``),
``per_joint.csv``, ``pck_curve.csv``, ``pck_curve.png``
(model and mean baseline) and ``overlays/frame_<id>.png`` (predicted mesh and joints drawn on the input image).

Legend: B batch, S crop size (px), J joints (21), V vertices (1305), T thresholds.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from hsr_tf import metrics as metrics_lib
from hsr_tf import pose_metrics
from hsr_tf.train import summaries as summaries_lib
from hsr_tf.train.evaluation import metrics_doc, write_per_frame_csv

MODEL_INPUT_KEYS = ("image", "camera", "root_depth", "bone_scale")
AUC_RANGES = {"auc_0_50": (0.0, 50.0), "auc_20_50": (20.0, 50.0)}


def make_predict_fn(model):
    """tf.function ``batch -> model outputs`` (inference mode) on the RGB model's dict input."""

    @tf.function(reduce_retracing=True)
    def predict(inputs):
        return model(inputs, training=False)

    return lambda batch: predict({k: batch[k] for k in MODEL_INPUT_KEYS})


def mean_pose_from_shards(files) -> dict:
    """The mean baseline's answer from training shards.

    Args:
      files: RGB shard paths (e.g. ``hsr_tf.data.rgb_reader.resolve_files(data_dir, 'train')``).
    Returns:
      {"joints": [J, 3], "vertices": [V, 3] or None}: mean over frames of (x - joint 0) / bone_scale,
      camera frame, unitless.
    """
    from hsr_tf.data import rgb_shards

    sums = {"joints": 0.0, "vertices": 0.0}
    counts = {"joints": 0, "vertices": 0}
    for path in files:
        fields = ["joints", "bone_scale"] + (["vertices"] if "vertices" in rgb_shards.validate_rgb_shard(path)[
            "shapes"] else [])
        arrays, _ = rgb_shards.read_rgb_shard(path, fields, check=False)
        root = arrays["joints"][:, :1].astype(np.float64)
        scale = arrays["bone_scale"].astype(np.float64)[:, None, None]
        for key in ("joints", "vertices"):
            if key in arrays and len(arrays[key]):
                sums[key] = sums[key] + ((arrays[key] - root) / scale).sum(axis=0)
                counts[key] += len(arrays[key])
    if counts["joints"] == 0:
        raise ValueError(f"files: expected training frames for the mean baseline, found none in {list(files)}")
    return {k: (sums[k] / counts[k] if counts[k] else None) for k in ("joints", "vertices")}


def _place_mean(mean_rel, batch):
    """[K, 3] unitless mean -> [B, K, 3] mm at each frame's true root and hand scale."""
    s = batch["bone_scale"].numpy().astype(np.float64)[:, None, None]
    return mean_rel[None] * s + batch["joints"].numpy()[:, :1].astype(np.float64)


def evaluate(model, dataset: tf.data.Dataset, max_batches: Optional[int] = None, predict_fn=None,
             mean_pose: Optional[dict] = None, num_overlay_frames: int = 0,
             thresholds_mm=pose_metrics.DEFAULT_PCK_THRESHOLDS_MM, faces=None) -> dict:
    """Metrics of an RGB model over un-augmented reader batches (``hsr_tf.data.rgb_reader``).

    Args:
      model: an RGB model (``RGBMeshNet``) returning ``joints``, ``joints_uv`` and, with a mesh, ``vertices``,
        ``uvd``. dataset: batches with the model inputs, ``joints``, ``joints_uv``, ``vertices``,
        ``has_vertices``, ``frame_id``. max_batches: evaluate only the first batches. mean_pose: the output of
        :func:`mean_pose_from_shards` (adds the ``mean_baseline_*`` metrics). num_overlay_frames: keep the
        inputs and predictions of the first frames for the overlays of :func:`write_report`. faces: int [F, 3]
        of the mesh (default ``model.faces``); without them the mesh-quality metrics are left out.
    Returns:
      dict of scalars ``pose_error_mm``, ``auc_0_50``, ``auc_20_50``, ``joint_2d_error_px``, ``mesh_error_mm``,
      ``aligned_mesh_error_mm``, ``edge_length_error_pct``, ``normal_angle_error_deg`` (when frames have meshes and
      the model predicts one; the last two with faces), the ``mean_baseline_``
      versions, ``num_frames``, ``seconds``; arrays ``per_joint_error_mm`` [J], ``pck_thresholds_mm`` [T],
      ``pck`` [T] (and ``mean_baseline_pck``); ``per_frame`` {column: [F]}; ``overlays`` (a list of dicts).
    Raises:
      ValueError if the dataset yields no batch.
    """
    predict_fn = predict_fn or make_predict_fn(model)
    faces = getattr(model, "faces", None) if faces is None else faces
    edges = None
    if faces is not None:
        from hsr_tf.graph.laplacian import mesh_edges

        faces = np.asarray(faces)
        edges = mesh_edges(faces)
    pck = pose_metrics.PCKMetric(thresholds_mm, auc_range_mm=AUC_RANGES["auc_0_50"])
    base_pck = pose_metrics.PCKMetric(thresholds_mm, auc_range_mm=AUC_RANGES["auc_0_50"])
    per_frame, sums, overlays = {}, {}, []

    def record(name, values):
        per_frame.setdefault(name, []).append(np.asarray(values, np.float64).reshape(-1))

    def add(name, values, weights):
        s, n = sums.get(name, (0.0, 0.0))
        sums[name] = (s + float(np.sum(values * weights)), n + float(np.sum(weights)))

    t0 = time.perf_counter()
    n_batches = 0
    for batch in (dataset if max_batches is None else dataset.take(max_batches)):
        n_batches += 1
        out = predict_fn(batch)
        gt_joints = batch["joints"].numpy()
        per_frame.setdefault("frame_id", []).append(batch["frame_id"].numpy().astype(np.int64))
        record("joint_error_mm", pck.update(out["joints"].numpy(), gt_joints).mean(axis=1))
        uv_err = np.linalg.norm(out["joints_uv"].numpy() - batch["joints_uv"].numpy(), axis=-1).mean(axis=1)
        record("joint_2d_error_px", uv_err)
        if mean_pose is not None:
            base_pck.update(_place_mean(mean_pose["joints"], batch), gt_joints)
        has_v = batch["has_vertices"].numpy().astype(np.float64)
        if "vertices" in out and has_v.any():
            gt_v = batch["vertices"].numpy().astype(np.float64)
            pred_v = out["vertices"].numpy().astype(np.float64)
            mesh = np.linalg.norm(pred_v - gt_v, axis=-1).mean(axis=1)
            aligned = np.linalg.norm(metrics_lib.similarity_align(pred_v, gt_v) - gt_v, axis=-1).mean(axis=1)
            record("shape_error_mm", np.where(has_v > 0, mesh, np.nan))
            record("aligned_shape_error_mm", np.where(has_v > 0, aligned, np.nan))
            add("mesh_error_mm", mesh, has_v)
            add("aligned_mesh_error_mm", aligned, has_v)
            if edges is not None:
                quality = {"edge_length_error_pct": 100.0 * metrics_lib.edge_length_error(pred_v, gt_v, edges),
                           "normal_angle_error_deg": metrics_lib.normal_angle_error(pred_v, gt_v, faces)}
                for name, values in quality.items():
                    record(name, np.where(has_v > 0, values, np.nan))
                    add(name, values, has_v)
            if mean_pose is not None and mean_pose.get("vertices") is not None:
                base_v = _place_mean(mean_pose["vertices"], batch)
                add("mean_baseline_mesh_error_mm", np.linalg.norm(base_v - gt_v, axis=-1).mean(axis=1), has_v)
                base_al = metrics_lib.similarity_align(base_v, gt_v)
                add("mean_baseline_aligned_mesh_error_mm", np.linalg.norm(base_al - gt_v, axis=-1).mean(axis=1),
                    has_v)
        for i in range(min(num_overlay_frames - len(overlays), len(gt_joints))):
            overlays.append(_overlay_record(batch, out, i))
    if n_batches == 0:
        raise ValueError("evaluate: expected at least one batch in the evaluation dataset, found none")
    res = pck.result()
    result = {"pose_error_mm": res["mean_error_mm"], "per_joint_error_mm": res["per_joint_error_mm"],
              "pck_thresholds_mm": res["thresholds_mm"], "pck": res["pck"], "num_frames": res["num_frames"]}
    for name, (lo, hi) in AUC_RANGES.items():
        result[name] = pose_metrics.auc(res["thresholds_mm"], res["pck"], lo, hi)
    result["joint_2d_error_px"] = float(np.concatenate(per_frame["joint_2d_error_px"]).mean())
    if mean_pose is not None:
        base = base_pck.result()
        result["mean_baseline_pose_error_mm"] = base["mean_error_mm"]
        result["mean_baseline_pck"] = base["pck"]
        for name, (lo, hi) in AUC_RANGES.items():
            result[f"mean_baseline_{name}"] = pose_metrics.auc(base["thresholds_mm"], base["pck"], lo, hi)
    for name, (s, n) in sums.items():
        if n > 0:
            result[name] = s / n
    result["per_frame"] = {k: np.concatenate(v) for k, v in per_frame.items()}
    result["overlays"] = overlays
    result["seconds"] = time.perf_counter() - t0
    return result


def _overlay_record(batch, out, i) -> dict:
    rec = {"image": batch["image"][i].numpy(), "gt_joints_uv": batch["joints_uv"][i].numpy(),
           "joints_uv": out["joints_uv"][i].numpy(), "frame_id": int(batch["frame_id"][i])}
    if "vertices" in out:
        s = int(batch["image"].shape[1])
        rec["vertices_uv"] = (out["uvd"][i, :, :2].numpy() + 1.0) * (s / 2.0) - 0.5  # normalised -> px
        rec["vertex_depth"] = out["vertices"][i, :, 2].numpy()
    return rec


def overlay_image(rec: dict, faces, title: Optional[str] = None) -> np.ndarray:
    """uint8 [H, W, 3]: the record's input image with the predicted mesh, predicted (red) and true (green)
    joints (one element of ``evaluate(...)['overlays']``)."""
    return summaries_lib.draw_mesh_on_image(rec["image"], rec.get("vertices_uv"), rec.get("vertex_depth"), faces,
                                            rec["joints_uv"], rec["gt_joints_uv"], title=title)


def scalar_metrics(results: dict) -> dict:
    """The scalar entries of an :func:`evaluate` result (for TensorBoard / logs)."""
    return {k: float(v) for k, v in results.items()
            if not isinstance(v, (dict, list)) and np.ndim(v) == 0}


def write_report(results: dict, out_dir: str, faces=None, joint_names=None, label: str = "model",
                 extra: Optional[dict] = None) -> dict:
    """Write the files of the module docstring into ``out_dir``; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, v) for k, v in (
        ("metrics", "metrics.json"), ("per_joint", "per_joint.csv"), ("pck_csv", "pck_curve.csv"),
        ("pck_png", "pck_curve.png"), ("per_frame", "per_frame.csv"))}
    doc, per_joint, names = metrics_doc(results, joint_names)
    thr = np.asarray(results["pck_thresholds_mm"])
    doc["pck_at"] = {f"{t:g}mm": float(p) for t, p in zip(thr, results["pck"]) if t in (10, 20, 30, 40, 50)}
    doc.update(extra or {})
    with open(paths["metrics"], "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    metrics_lib.write_per_joint_csv(paths["per_joint"], per_joint, names)
    pose_metrics.write_pck_csv(paths["pck_csv"], thr, results["pck"])
    curves = {label: (thr, results["pck"], results["auc_0_50"])}
    if "mean_baseline_pck" in results:
        curves["mean baseline"] = (thr, results["mean_baseline_pck"], results["mean_baseline_auc_0_50"])
    pose_metrics.plot_pck_curves(paths["pck_png"], curves, title="3D PCK, root-relative (AUC 0-50 mm)")
    write_per_frame_csv(paths["per_frame"], results["per_frame"])
    if results.get("overlays"):
        if faces is None:
            raise ValueError("faces: expected the mesh faces [F, 3] to draw the overlays, found None")
        odir = os.path.join(out_dir, "overlays")
        os.makedirs(odir, exist_ok=True)
        from PIL import Image

        for rec in results["overlays"]:
            path = os.path.join(odir, f"frame_{rec['frame_id']:07d}.png")
            Image.fromarray(overlay_image(rec, faces, title=f"{label}: frame {rec['frame_id']}")).save(path)
        paths["overlays"] = odir
    return paths


def make_visual_fn(batch: dict, faces, num_frames: int = 2, tag: str = "heldout"):
    """TensorBoard images ``<tag>/frame<i>/overlay`` (mesh and joints on the input image) and
    ``<tag>/frame<i>/render`` (front and side views of the predicted and true meshes, camera mm) of the first
    ``num_frames`` frames of a fixed held-out batch. Returns ``fn(model, step, writer)`` for the Trainer."""
    faces = np.asarray(faces, np.int32)
    k = int(min(num_frames, int(batch["image"].shape[0])))
    sub = {key: v[:k] for key, v in batch.items()}

    def fn(model, step, writer):
        out = model({key: sub[key] for key in MODEL_INPUT_KEYS}, training=False)
        with writer.as_default(step=step):
            for i in range(k):
                rec = _overlay_record(sub, out, i)
                summaries_lib.write_image(f"{tag}/frame{i}/overlay",
                                          overlay_image(rec, faces, title=f"step {step}, held-out frame {i}"),
                                          step=step)
                if "vertices" in out:
                    gv = sub["vertices"][i].numpy() if float(sub["has_vertices"][i]) > 0 else None
                    img = summaries_lib.render_overlay(np.zeros((0, 3)), out["vertices"][i].numpy(), faces, gv,
                                                       out["joints"][i].numpy(), sub["joints"][i].numpy(),
                                                       title=f"step {step}, held-out frame {i}")
                    summaries_lib.write_image(f"{tag}/frame{i}/render", img, step=step)
        writer.flush()

    return fn
