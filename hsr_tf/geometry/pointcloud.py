"""Hand point-cloud front end (NumPy): sampling to P points and normalisation.

Sampling follows Hand PointNet (Ge et al. 2018): draw P points at random without
replacement; when the cloud has fewer than P points, keep all of them and add
randomly repeated ones. The result is shuffled so that no index carries meaning
(farthest point sampling downstream starts at index 0).

Normalisation (default, documented in docs/synthetic_hands.md ("Points and normalisation")):
  centre ``c`` = mean of the sampled points (``center_mode='mean'``; or the
    axis-aligned bounding-box centre, ``'bbox'``),
  scale  ``s`` = a FIXED 150 mm (the half-size of a 300 mm hand cube,
    ``scale_mode='fixed'``), so a hand fits in about [-0.8, 0.8] and the absolute
    hand size -- which the shape parameters must explain -- is kept; or
    ``scale_mode='max_dist'``: the largest distance of a point to the centre
    (points then lie exactly in the unit ball, Hand PointNet-like, but the hand size
    is normalised away),
  rotation ``R`` = identity (camera frame, the paper's stage-1 input), or with
    ``obb=True`` the principal axes of the points (Hand PointNet's oriented bounding
    box by PCA): columns of R are the axes, by decreasing variance, right-handed.

  normalised  p_n = (p - c) R / s          (row vectors; i.e. R^T (p - c) / s)
  inverse     p   = s p_n R^T + c

Legend: N input points, P sampled points (1024), ... any leading shape.
"""
from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_NUM_POINTS = 1024
DEFAULT_FIXED_SCALE_MM = 150.0


class EmptyPointCloudError(ValueError):
    """Raised when a cloud that must hold points has none."""


def sample_points(points, num_points: int = DEFAULT_NUM_POINTS, rng=None):
    """Sample exactly ``num_points`` points the Hand PointNet way.

    Args:
      points: [N, 3] (N >= 1).
      num_points: P.
      rng: numpy Generator (or seed). Required for reproducibility; None -> fresh.
    Returns:
      (sampled [P, 3] same dtype as points, indices [P] int64 into points).
    Raises:
      EmptyPointCloudError if N == 0.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points: expected shape [N, 3], found {pts.shape}")
    n = pts.shape[0]
    if n == 0:
        raise EmptyPointCloudError(f"points: expected at least 1 point to sample {num_points} from, found 0")
    if num_points < 1:
        raise ValueError(f"num_points: expected >= 1, found {num_points}")
    rng = np.random.default_rng(rng)
    if n >= num_points:
        idx = rng.choice(n, size=num_points, replace=False)
    else:
        idx = np.concatenate([np.arange(n), rng.choice(n, size=num_points - n, replace=True)])
        idx = rng.permutation(idx)
    return pts[idx], idx.astype(np.int64)


@dataclasses.dataclass
class Normalization:
    """Parameters mapping camera mm <-> normalised coordinates for ONE cloud.

    center [3] mm, scale scalar mm, rotation [3, 3] (columns = normalised axes in
    camera frame; identity unless OBB).
    """

    center: np.ndarray
    scale: float
    rotation: np.ndarray

    def apply(self, x):
        """[..., 3] camera mm -> [..., 3] normalised (float32)."""
        x = np.asarray(x, dtype=np.float64)
        return (((x - self.center) @ self.rotation) / self.scale).astype(np.float32)

    def invert(self, x):
        """[..., 3] normalised -> [..., 3] camera mm (float64)."""
        x = np.asarray(x, dtype=np.float64)
        return (x * self.scale) @ self.rotation.T + self.center


def obb_rotation(points) -> np.ndarray:
    """Principal axes of a cloud (PCA), as a right-handed rotation [3, 3].

    Columns are the axes sorted by decreasing variance. Each axis' sign is fixed so
    that the point distribution's third moment along it is positive (skew toward
    +axis), making the result deterministic; the third column is then
    set to col0 x col1 so det = +1.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise EmptyPointCloudError(f"points: expected a non-empty [N, 3] cloud, found shape {p.shape}")
    q = p - p.mean(axis=0)
    cov = q.T @ q / max(len(q), 1)
    w, vec = np.linalg.eigh(cov)
    vec = vec[:, np.argsort(w)[::-1]]
    for k in range(2):
        if np.sum((q @ vec[:, k]) ** 3) < 0:
            vec[:, k] = -vec[:, k]
    vec[:, 2] = np.cross(vec[:, 0], vec[:, 1])
    return vec


def compute_normalization(points, center_mode: str = "mean", scale_mode: str = "fixed",
                          fixed_scale: float = DEFAULT_FIXED_SCALE_MM, obb: bool = False) -> Normalization:
    """Normalisation parameters of a cloud (see module docstring).

    Args:
      points: [N, 3] mm, N >= 1.
      center_mode: 'mean' or 'bbox'. scale_mode: 'fixed' or 'max_dist'.
      fixed_scale: mm, used by scale_mode='fixed'. obb: PCA rotation (Hand PointNet).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points: expected shape [N, 3], found {p.shape}")
    if p.shape[0] == 0:
        raise EmptyPointCloudError("points: expected at least 1 point to normalise, found 0")
    rotation = obb_rotation(p) if obb else np.eye(3)
    if center_mode == "mean":
        center = p.mean(axis=0)
    elif center_mode == "bbox":
        # Bounding box in the normalised axes (an OBB when obb=True), mapped back.
        local = p @ rotation
        center = (0.5 * (local.min(axis=0) + local.max(axis=0))) @ rotation.T
    else:
        raise ValueError(f"center_mode: expected 'mean' or 'bbox', found {center_mode!r}")
    if scale_mode == "fixed":
        scale = float(fixed_scale)
        if not scale > 0:
            raise ValueError(f"fixed_scale: expected > 0, found {fixed_scale}")
    elif scale_mode == "max_dist":
        scale = float(np.max(np.linalg.norm(p - center, axis=1)))
        if scale <= 0:
            raise ValueError("points: all points coincide, the max-distance scale is 0")
    else:
        raise ValueError(f"scale_mode: expected 'fixed' or 'max_dist', found {scale_mode!r}")
    return Normalization(center=center, scale=scale, rotation=rotation)


def normalize(points, **kwargs):
    """Convenience: (normalised [N, 3] float32, Normalization). kwargs as compute_normalization."""
    norm = compute_normalization(points, **kwargs)
    return norm.apply(points), norm


def denormalize(points_n, center, scale, rotation=None):
    """Exact inverse with explicit (possibly batched) parameters.

    Args:
      points_n: [..., N, 3] normalised. center: [..., 3] mm. scale: [...] mm.
      rotation: optional [..., 3, 3].
    Returns:
      [..., N, 3] float64 mm.
    """
    x = np.asarray(points_n, dtype=np.float64) * np.asarray(scale, dtype=np.float64)[..., None, None]
    if rotation is not None:
        x = x @ np.swapaxes(np.asarray(rotation, dtype=np.float64), -1, -2)
    return x + np.asarray(center, dtype=np.float64)[..., None, :]
