"""Evaluation metrics of the depth hand-shape network (Deng et al., section IV-A), NumPy.

Streaming accumulators (call ``update`` per batch, ``result`` at the end), all in mm:

* ``JointErrorMetric``: mean 3D joint error over all joints and frames, per-joint mean
  error, and the fraction of frames whose MAXIMUM joint error is <= each threshold
  (0..80 mm by default; "percentage of good frames").
* ``ShapeErrorMetric``: mean vertex error against the ground-truth mesh (synthetic data).
* ``AlignedShapeErrorMetric``: the same after a per-frame similarity alignment of the predicted
  mesh to the ground truth (``similarity_align``, Umeyama), i.e. the error left once global
  placement, rotation and size are factored out (the "PA" vertex error of mesh-recovery work; not a
  figure of the paper, which reports the unaligned error).
* ``PointCloudErrorMetric``: mean distance from each input point to its nearest predicted
  vertex (``scipy.spatial.cKDTree``), no cut-off.

Mesh quality, per frame (what the RGB paper's edge and normal losses act on, and a vertex error hides):
``edge_length_error`` (mean relative error of the mesh's edge lengths) and ``normal_angle_error`` (mean angle
between predicted and true face normals, degrees).

Writers: ``write_threshold_csv``, ``plot_threshold_curve`` (matplotlib Agg, PNG) and
``write_per_joint_csv``.

Every input is millimetres in a common frame (e.g. camera mm via
``hsr_tf.models.outputs_to_camera_mm``); errors are Euclidean distances.

Legend: B batch (frames), J joints, V vertices, N input points, T thresholds.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_THRESHOLDS_MM = np.arange(0.0, 81.0, 1.0)


def _as_points(name, x, rank=3):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != rank or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [B, M, 3], found {x.shape}")
    return x


def _check_pair(pred, gt, pred_name="pred", gt_name="gt"):
    pred = _as_points(pred_name, pred)
    gt = _as_points(gt_name, gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{gt_name}: expected shape {pred.shape} like {pred_name}, found {gt.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError(f"{pred_name}/{gt_name}: expected finite values, found NaN or Inf")
    return pred, gt


class JointErrorMetric:
    """Mean / per-joint joint error and the max-error threshold curve.

    Args:
      thresholds_mm: [T] thresholds for the fraction of good frames (default 0..80 by 1 mm).
      joint_names: optional names for the per-joint table.
    """

    def __init__(self, thresholds_mm=DEFAULT_THRESHOLDS_MM, joint_names=None):
        self.thresholds = np.asarray(thresholds_mm, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0:
            raise ValueError(f"thresholds_mm: expected a non-empty 1-D array, found shape {self.thresholds.shape}")
        self.joint_names = None if joint_names is None else list(joint_names)
        self.reset()

    def reset(self):
        self._sum_per_joint = None
        self._max_errors = []
        self.num_frames = 0

    def update(self, pred_joints, gt_joints):
        """Adds a batch. pred_joints, gt_joints: [B, J, 3] mm. Returns per-frame errors [B, J]."""
        pred, gt = _check_pair(pred_joints, gt_joints, "pred_joints", "gt_joints")
        err = np.linalg.norm(pred - gt, axis=-1)  # [B, J]
        if self._sum_per_joint is None:
            self._sum_per_joint = np.zeros(err.shape[1])
            if self.joint_names is not None and len(self.joint_names) != err.shape[1]:
                raise ValueError(f"joint_names: expected {err.shape[1]} names, found {len(self.joint_names)}")
        elif err.shape[1] != self._sum_per_joint.shape[0]:
            raise ValueError(f"pred_joints: expected {self._sum_per_joint.shape[0]} joints like earlier batches, "
                             f"found {err.shape[1]}")
        self._sum_per_joint += err.sum(axis=0)
        self._max_errors.append(err.max(axis=1))
        self.num_frames += err.shape[0]
        return err

    def result(self):
        """dict: ``mean_joint_error_mm``, ``per_joint_error_mm`` [J], ``thresholds_mm`` [T],
        ``fraction_good_frames`` [T] (max joint error <= threshold), ``num_frames``."""
        if self.num_frames == 0:
            raise ValueError("JointErrorMetric: expected at least one update before result(), found 0 frames")
        per_joint = self._sum_per_joint / self.num_frames
        max_err = np.concatenate(self._max_errors)
        good = (max_err[None, :] <= self.thresholds[:, None]).mean(axis=1)
        return {
            "mean_joint_error_mm": float(per_joint.mean()),
            "per_joint_error_mm": per_joint,
            "thresholds_mm": self.thresholds.copy(),
            "fraction_good_frames": good,
            "num_frames": int(self.num_frames),
        }


class ShapeErrorMetric:
    """Mean vertex error (mm) over all vertices and frames."""

    result_key = "shape_error_mm"

    def __init__(self):
        self.reset()

    def reset(self):
        self._sum = 0.0
        self._count = 0

    def _prediction(self, pred, gt):
        return pred

    def update(self, pred_vertices, gt_vertices):
        """pred_vertices, gt_vertices: [B, V, 3] mm. Returns per-frame mean errors [B]."""
        pred, gt = _check_pair(pred_vertices, gt_vertices, "pred_vertices", "gt_vertices")
        err = np.linalg.norm(self._prediction(pred, gt) - gt, axis=-1)
        self._sum += err.sum()
        self._count += err.size
        return err.mean(axis=1)

    def result(self):
        if self._count == 0:
            raise ValueError(f"{type(self).__name__}: expected at least one update before result(), found none")
        return {self.result_key: float(self._sum / self._count)}


class RestShapeErrorMetric(ShapeErrorMetric):
    """Mean vertex error (mm) of a predicted neutral-pose mesh against the subject's true neutral mesh, both
    in the hand frame: the shape alone, free of pose and placement errors (synthetic subjects only; not a
    paper figure; ``hsr_tf.train.evaluation`` passes s T(beta, theta0), the neutral mesh at the predicted size)."""

    result_key = "rest_shape_error_mm"


def paired_difference(a, b, confidence=0.95, n_resamples=10000, seed=0):
    """Mean of the paired differences ``b - a`` (e.g. per-frame errors of two runs on the same frames) with a
    percentile bootstrap confidence interval over frames (``scipy.stats.bootstrap``).

    Args:
      a, b: [F] per-frame values of the two runs, frame i in both the same frame (F >= 2).
    Returns:
      dict ``mean_a``, ``mean_b``, ``mean_difference`` (b - a), ``ci_low``, ``ci_high``, ``confidence``,
      ``num_frames``. The interval covers test-set sampling only, not the spread between training seeds.
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"paired_difference: expected two [F] arrays of one length F >= 2, found {a.shape} and "
                         f"{b.shape}")
    diff = b - a
    if np.all(diff == diff[0]):  # no spread: the interval is the value itself
        low = high = float(diff[0])
    else:
        ci = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_difference": float(diff.mean()),
            "ci_low": low, "ci_high": high, "confidence": float(confidence), "num_frames": int(a.size)}


def _index_array(name, x, rows: str, width: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != width or x.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array [{rows}, {width}], found {x.dtype} {x.shape}")
    return x


def edge_length_error(pred, gt, edges):
    """Per-frame mean over edges of |len_pred - len_gt| / len_gt (unitless; 0.1 = 10 %).

    Args:
      pred, gt: [B, V, 3] meshes (same units, any frame: lengths do not depend on it). edges: int [E, 2]
        (``hsr_tf.graph.laplacian.mesh_edges``). Edges of zero true length are left out.
    Returns:
      float64 [B].
    """
    pred, gt = _check_pair(pred, gt)
    edges = _index_array("edges", edges, "E", 2)
    lp = np.linalg.norm(pred[:, edges[:, 0]] - pred[:, edges[:, 1]], axis=-1)
    lg = np.linalg.norm(gt[:, edges[:, 0]] - gt[:, edges[:, 1]], axis=-1)
    ok = lg > 0
    return np.sum(np.where(ok, np.abs(lp - lg) / np.where(ok, lg, 1.0), 0.0), axis=1) / np.maximum(ok.sum(1), 1)


def normal_angle_error(pred, gt, faces):
    """Per-frame mean over faces of the angle between predicted and true unit face normals, degrees [0, 180].

    Args:
      pred, gt: [B, V, 3] meshes in the same frame (an unaligned rotation counts). faces: int [F, 3],
        counter-clockwise seen from outside. Faces of zero area in either mesh are left out.
    Returns:
      float64 [B].
    """
    pred, gt = _check_pair(pred, gt)
    faces = _index_array("faces", faces, "F", 3)

    def normals(v):  # B x F x 3, and B x F norms
        n = np.cross(v[:, faces[:, 1]] - v[:, faces[:, 0]], v[:, faces[:, 2]] - v[:, faces[:, 0]])
        return n, np.linalg.norm(n, axis=-1)

    (np_, lp), (ng, lgn) = normals(pred), normals(gt)
    ok = (lp > 0) & (lgn > 0)
    cos = np.sum(np_ * ng, axis=-1) / np.where(ok, lp * lgn, 1.0)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return np.sum(np.where(ok, angle, 0.0), axis=1) / np.maximum(ok.sum(1), 1)


def similarity_align(source, target):
    """Least-squares similarity transform of each ``source`` frame onto ``target`` (Umeyama 1991).

    Args:
      source, target: [B, M, 3] corresponding points (any unit; M >= 3, not all collinear for a
        unique rotation).
    Returns:
      [B, M, 3] float64: ``s R source + t`` minimising sum |s R source + t - target|^2 with
      det R = +1 (never a reflection).
    """
    src, tgt = _check_pair(source, target, "source", "target")
    mu_s, mu_t = src.mean(axis=1, keepdims=True), tgt.mean(axis=1, keepdims=True)
    xs, xt = src - mu_s, tgt - mu_t
    cov = np.einsum("bmi,bmj->bij", xt, xs) / src.shape[1]          # target x source^T
    u, sing, vt = np.linalg.svd(cov)
    # Flip the weakest axis when U V^T would be a reflection.
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    d = np.where(d == 0, 1.0, d)
    diag = np.ones_like(sing)
    diag[:, -1] = d
    rot = np.einsum("bij,bj,bjk->bik", u, diag, vt)
    var_s = (xs ** 2).sum(axis=(1, 2)) / src.shape[1]
    scale = (sing * diag).sum(axis=1) / np.maximum(var_s, 1e-300)
    return scale[:, None, None] * np.einsum("bij,bmj->bmi", rot, xs) + mu_t


class AlignedShapeErrorMetric(ShapeErrorMetric):
    """Mean vertex error (mm) after similarity-aligning each predicted mesh to its ground truth."""

    result_key = "aligned_shape_error_mm"

    def _prediction(self, pred, gt):
        return similarity_align(pred, gt)


class PointCloudErrorMetric:
    """Mean distance (mm) from each input point to its nearest predicted vertex.

    ``update`` accepts an optional ``point_mask`` [B, N] (True = a real point) for padded clouds.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self._sum = 0.0
        self._count = 0

    def update(self, points, pred_vertices, point_mask=None):
        """points: [B, N, 3] mm; pred_vertices: [B, V, 3] mm. Returns per-frame mean distances [B]."""
        pts = _as_points("points", points)
        verts = _as_points("pred_vertices", pred_vertices)
        if pts.shape[0] != verts.shape[0]:
            raise ValueError(f"pred_vertices: expected {pts.shape[0]} frames like points, found {verts.shape[0]}")
        if point_mask is not None:
            point_mask = np.asarray(point_mask, dtype=bool)
            if point_mask.shape != pts.shape[:2]:
                raise ValueError(f"point_mask: expected shape {pts.shape[:2]}, found {point_mask.shape}")
        per_frame = np.zeros(pts.shape[0])
        for b in range(pts.shape[0]):
            p = pts[b] if point_mask is None else pts[b][point_mask[b]]
            if p.shape[0] == 0:
                raise ValueError(f"points: frame {b} of the batch has no valid point")
            dist, _ = cKDTree(verts[b]).query(p, k=1)
            self._sum += dist.sum()
            self._count += dist.size
            per_frame[b] = dist.mean()
        return per_frame

    def result(self):
        if self._count == 0:
            raise ValueError("PointCloudErrorMetric: expected at least one update before result(), found none")
        return {"point_cloud_error_mm": float(self._sum / self._count)}


def write_threshold_csv(path, thresholds_mm, fractions, label="fraction_good_frames"):
    """CSV with columns ``threshold_mm`` and ``label`` (one row per threshold)."""
    thresholds_mm = np.asarray(thresholds_mm)
    fractions = np.asarray(fractions)
    if thresholds_mm.shape != fractions.shape:
        raise ValueError(f"fractions: expected shape {thresholds_mm.shape} like thresholds_mm, "
                         f"found {fractions.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["threshold_mm", label])
        for t, v in zip(thresholds_mm, fractions):
            w.writerow([f"{t:g}", f"{v:.6f}"])


def write_per_joint_csv(path, per_joint_error_mm, joint_names=None):
    """CSV with columns ``joint``, ``name``, ``mean_error_mm``."""
    per_joint_error_mm = np.asarray(per_joint_error_mm)
    if joint_names is None:
        joint_names = [f"joint_{j}" for j in range(per_joint_error_mm.shape[0])]
    if len(joint_names) != per_joint_error_mm.shape[0]:
        raise ValueError(f"joint_names: expected {per_joint_error_mm.shape[0]} names, found {len(joint_names)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["joint", "name", "mean_error_mm"])
        for j, (name, e) in enumerate(zip(joint_names, per_joint_error_mm)):
            w.writerow([j, name, f"{e:.4f}"])


def plot_threshold_curve(path, curves, title="Fraction of frames within distance"):
    """PNG of one or more threshold curves.

    Args:
      path: output .png.
      curves: dict label -> (thresholds_mm [T], fractions [T]) (fractions in [0, 1]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves: expected at least one (thresholds, fractions) curve, found none")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, (thr, frac) in curves.items():
        ax.plot(np.asarray(thr), 100.0 * np.asarray(frac), label=label)
    ax.set_xlabel("Maximum allowed distance to GT (mm)")
    ax.set_ylabel("Fraction of frames within distance (%)")
    ax.set_xlim(0, max(float(np.max(t)) for t, _ in curves.values()))
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The RGB paper's 3D PCK protocol lives in its own module (keeps this one short); re-exported here.
from hsr_tf.pose_metrics import (AUC_RANGES_MM, DEFAULT_PCK_THRESHOLDS_MM, PCKMetric, auc,  # noqa: E402,F401
                                 pck_curve, plot_pck_curves, root_relative_errors, write_pck_csv)
