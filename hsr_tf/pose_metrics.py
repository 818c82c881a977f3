"""3D hand-pose metrics of the RGB paper (Ge et al. 2019, section 5.1), NumPy; re-exported by ``hsr_tf.metrics``.

Protocol (section 5.1, following Zimmermann & Brox 2017 and Cai et al. 2018): "the global hand scale and the
absolute depth of the root joint are provided at test time". Errors are therefore measured root-relative:

    error[b, j] = | (pred[b, j] - pred[b, root]) - (gt[b, j] - gt[b, root]) |        (mm)

where a prediction given scale-invariant (divided by the hand scale) root-relative is first multiplied by the
ground-truth hand scale ``bone_scale`` (middle-finger MCP -> PIP length, our joints 9 -> 10). With the root
joint aligned its own error is 0; it is counted like every other joint by default, as Zimmermann & Brox's
evaluation script counts all 21 keypoints (``include_root=False`` drops it).

* Pose error: mean of ``error`` over the evaluated keypoints.
* 3D PCK at threshold t: for every joint, the fraction of its evaluated frames with ``error <= t``; then the
  mean over joints (per-keypoint PCK averaged over keypoints, as Zimmermann & Brox's ``EvalUtil``; identical
  to the fraction of all keypoints when every keypoint is evaluated).
* AUC over [lo, hi]: trapezoidal area under PCK(t) on the thresholds inside [lo, hi], divided by hi - lo
  (so 1.0 = every keypoint within lo). The paper reports 20-50 mm on STB and 0-50 mm on RHD.

``visible`` (RHD's ``uv_vis`` flags) restricts a joint's statistics to the frames where it is visible.

Legend: B frames, J joints (21), T thresholds.
"""
from __future__ import annotations

import csv
import os

import numpy as np

DEFAULT_PCK_THRESHOLDS_MM = np.arange(0.0, 51.0, 1.0)
#: AUC range of the paper's figures, mm
AUC_RANGES_MM = {"stb": (20.0, 50.0), "rhd": (0.0, 50.0)}


def root_relative_errors(pred_joints, gt_joints, *, bone_scale=None, pred_normalised: bool = False,
                         root_index: int = 0) -> np.ndarray:
    """Per-keypoint root-relative errors of the section-5.1 protocol.

    Args:
      pred_joints: [B, J, 3] predictions: camera mm (any root placement), or, with ``pred_normalised``,
        root-relative joints divided by the hand scale (unitless).
      gt_joints: [B, J, 3] ground truth, camera mm.
      bone_scale: [B] mm ground-truth hand scale; required when ``pred_normalised``.
      root_index: the root joint (0 = wrist in our order).
    Returns:
      [B, J] float64 errors, mm.
    """
    pred = np.asarray(pred_joints, dtype=np.float64)
    gt = np.asarray(gt_joints, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred_joints: expected shape [B, J, 3], found {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_joints: expected shape {pred.shape} like pred_joints, found {gt.shape}")
    if not 0 <= root_index < pred.shape[1]:
        raise ValueError(f"root_index: expected 0 <= root_index < {pred.shape[1]}, found {root_index}")
    if pred_normalised:
        if bone_scale is None:
            raise ValueError("bone_scale: expected [B] mm hand scales when pred_normalised=True, found None")
        s = np.asarray(bone_scale, dtype=np.float64).reshape(-1)
        if s.shape != (pred.shape[0],):
            raise ValueError(f"bone_scale: expected shape [{pred.shape[0]}], found {np.asarray(bone_scale).shape}")
        if not np.all(s > 0):
            raise ValueError(f"bone_scale: expected positive hand scales (mm), found min {s.min()}")
        pred = pred * s[:, None, None]
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError("pred_joints/gt_joints: expected finite values, found NaN or Inf")
    rel_p = pred - pred[:, root_index:root_index + 1]
    rel_g = gt - gt[:, root_index:root_index + 1]
    return np.linalg.norm(rel_p - rel_g, axis=-1)


def pck_curve(errors, thresholds_mm=DEFAULT_PCK_THRESHOLDS_MM, visible=None) -> np.ndarray:
    """3D PCK: per-joint fraction of frames with error <= t, averaged over joints.

    Args:
      errors: [B, J] mm. thresholds_mm: [T] mm. visible: optional [B, J] bool (False = not evaluated).
    Returns:
      [T] float64 in [0, 1]. Joints never evaluated are left out of the mean.
    """
    err = np.asarray(errors, dtype=np.float64)
    thr = np.asarray(thresholds_mm, dtype=np.float64)
    if err.ndim != 2:
        raise ValueError(f"errors: expected shape [B, J], found {err.shape}")
    if thr.ndim != 1 or thr.size == 0:
        raise ValueError(f"thresholds_mm: expected a non-empty 1-D array, found shape {thr.shape}")
    vis = np.ones(err.shape, dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    if vis.shape != err.shape:
        raise ValueError(f"visible: expected shape {err.shape} like errors, found {vis.shape}")
    counts = vis.sum(axis=0)                                                 # [J]
    if not np.any(counts):
        raise ValueError("visible: expected at least one evaluated keypoint, found none")
    hits = ((err[None] <= thr[:, None, None]) & vis[None]).sum(axis=1)      # [T, J]
    used = counts > 0
    return (hits[:, used] / counts[used]).mean(axis=1)


def auc(thresholds_mm, pck, lo: float, hi: float) -> float:
    """Normalised area under a PCK curve over [lo, hi] (trapezoids on the given thresholds).

    Args:
      thresholds_mm: [T] increasing, containing lo and hi. pck: [T] in [0, 1].
    Returns:
      float in [0, 1].
    """
    thr = np.asarray(thresholds_mm, dtype=np.float64)
    p = np.asarray(pck, dtype=np.float64)
    if thr.shape != p.shape or thr.ndim != 1:
        raise ValueError(f"pck: expected shape {thr.shape} like thresholds_mm, found {p.shape}")
    if not hi > lo:
        raise ValueError(f"AUC range: expected lo < hi, found [{lo}, {hi}]")
    if np.any(np.diff(thr) <= 0):
        raise ValueError("thresholds_mm: expected strictly increasing thresholds")
    if not (np.any(np.isclose(thr, lo)) and np.any(np.isclose(thr, hi))):
        raise ValueError(f"thresholds_mm: expected both ends of the AUC range {lo}, {hi} among the thresholds, "
                         f"found [{thr.min()}, {thr.max()}] with {thr.size} values")
    sel = (thr >= lo - 1e-9) & (thr <= hi + 1e-9)
    t, q = thr[sel], p[sel]
    return float(np.sum(0.5 * (q[1:] + q[:-1]) * np.diff(t)) / (hi - lo))


class PCKMetric:
    """Streaming section-5.1 evaluation: mean error, per-joint error, 3D PCK curve and AUC.

    Args:
      thresholds_mm: [T] PCK thresholds (default 0..50 mm by 1 mm).
      auc_range_mm: (lo, hi) of the AUC, or a dataset name in ``AUC_RANGES_MM`` ('stb', 'rhd').
      root_index: root joint of the root-relative alignment. include_root: count the root joint.
    """

    def __init__(self, thresholds_mm=DEFAULT_PCK_THRESHOLDS_MM, auc_range_mm=(0.0, 50.0), root_index: int = 0,
                 include_root: bool = True):
        if isinstance(auc_range_mm, str):
            if auc_range_mm.lower() not in AUC_RANGES_MM:
                raise ValueError(f"auc_range_mm: expected (lo, hi) or one of {sorted(AUC_RANGES_MM)}, "
                                 f"found {auc_range_mm!r}")
            auc_range_mm = AUC_RANGES_MM[auc_range_mm.lower()]
        self.thresholds = np.asarray(thresholds_mm, dtype=np.float64)
        self.auc_range = (float(auc_range_mm[0]), float(auc_range_mm[1]))
        auc(self.thresholds, np.zeros_like(self.thresholds), *self.auc_range)  # validates the range now
        self.root_index = int(root_index)
        self.include_root = bool(include_root)
        self.reset()

    def reset(self):
        self._errors, self._visible = [], []

    def update(self, pred_joints, gt_joints, *, bone_scale=None, pred_normalised=False, visible=None):
        """Adds a batch (see ``root_relative_errors``). Returns the batch's errors [B, J] mm."""
        err = root_relative_errors(pred_joints, gt_joints, bone_scale=bone_scale, pred_normalised=pred_normalised,
                                   root_index=self.root_index)
        vis = np.ones(err.shape, dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
        if vis.shape != err.shape:
            raise ValueError(f"visible: expected shape {err.shape}, found {vis.shape}")
        if self._errors and err.shape[1] != self._errors[0].shape[1]:
            raise ValueError(f"pred_joints: expected {self._errors[0].shape[1]} joints like earlier batches, "
                             f"found {err.shape[1]}")
        self._errors.append(err)
        self._visible.append(vis)
        return err

    def result(self) -> dict:
        """dict ``mean_error_mm``, ``per_joint_error_mm`` [J] (NaN for never-evaluated joints),
        ``thresholds_mm`` [T], ``pck`` [T], ``auc``, ``auc_range_mm``, ``num_frames``, ``num_keypoints``."""
        if not self._errors:
            raise ValueError("PCKMetric: expected at least one update before result(), found none")
        err = np.concatenate(self._errors)
        vis = np.concatenate(self._visible).copy()
        if not self.include_root:
            vis[:, self.root_index] = False
        curve = pck_curve(err, self.thresholds, vis)
        counts = vis.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_joint = np.where(counts > 0, (err * vis).sum(axis=0) / counts, np.nan)
        return {
            "mean_error_mm": float((err * vis).sum() / vis.sum()),
            "per_joint_error_mm": per_joint,
            "thresholds_mm": self.thresholds.copy(),
            "pck": curve,
            "auc": auc(self.thresholds, curve, *self.auc_range),
            "auc_range_mm": self.auc_range,
            "num_frames": int(err.shape[0]),
            "num_keypoints": int(vis.sum()),
        }


def write_pck_csv(path, thresholds_mm, pck):
    """CSV with columns ``threshold_mm``, ``pck`` (one row per threshold)."""
    thr, p = np.asarray(thresholds_mm), np.asarray(pck)
    if thr.shape != p.shape:
        raise ValueError(f"pck: expected shape {thr.shape} like thresholds_mm, found {p.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["threshold_mm", "pck"])
        for t, v in zip(thr, p):
            w.writerow([f"{t:g}", f"{v:.6f}"])


def plot_pck_curves(path, curves, title="3D PCK"):
    """PNG of 3D PCK curves (the paper's Fig. 8/9 style: the legend carries each curve's AUC).

    Args:
      curves: dict label -> (thresholds_mm [T], pck [T]) or (thresholds_mm, pck, auc).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves: expected at least one (thresholds, pck) curve, found none")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    lo = min(float(np.min(c[0])) for c in curves.values())
    hi = max(float(np.max(c[0])) for c in curves.values())
    for label, c in curves.items():
        name = label if len(c) < 3 else f"{label} (AUC={float(c[2]):.3f})"
        ax.plot(np.asarray(c[0]), np.asarray(c[1]), label=name)
    ax.set_xlabel("Error thresholds (mm)")
    ax.set_ylabel("3D PCK")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
