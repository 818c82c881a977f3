"""Warp a depth map from one camera into another (back-project, rigid transform, project, z-buffer). NumPy.

Used for datasets whose depth sensor is not registered to the colour camera (STB: RealSense depth and
colour are two cameras 24 mm apart). Frames follow ``hsr_tf.geometry.camera``: mm, x right, y UP, z away;
pixel (row v, column u) is the ray through the pixel centre (u, v).

Forward warping magnifies the source when the target camera has the longer focal length (STB: 608 vs
475 px, x1.28), which would leave one-pixel holes between the projected samples. ``splat="2x2"`` writes
each source sample into the four target pixels whose centres surround its projection (holes vanish for
magnifications below 2; edges grow by at most one pixel); ``splat="nearest"`` writes the rounded pixel
only (exact for an identity warp). Collisions keep the nearest sample (z-buffer).

Legend: H, W source image size; H', W' target image size; N valid source pixels.
"""
from __future__ import annotations

import numpy as np

from hsr_tf.geometry.camera import Camera

SPLATS = ("nearest", "2x2")


def _check_rigid(rotation, translation):
    r = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if r.shape != (3, 3):
        raise ValueError(f"rotation: expected shape [3, 3], found {r.shape}")
    if t.shape != (3,):
        raise ValueError(f"translation: expected shape [3], found {np.asarray(translation).shape}")
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) <= 0:
        raise ValueError("rotation: expected a proper rotation matrix (R R^T = I, det R = +1)")
    return r, t


def warp_depth(depth, source: Camera, target: Camera, rotation=np.eye(3), translation=np.zeros(3),
               splat: str = "2x2") -> np.ndarray:
    """Re-render a depth map as seen from another camera.

    Args:
      depth: [H, W] source depth, mm (0 = missing); H, W = source.height, source.width.
      source, target: intrinsics and sizes of the two cameras.
      rotation, translation: [3, 3], [3] mm, rigid transform source frame -> target frame,
        X_target = rotation @ X_source + translation (both frames x right, y up, z away).
      splat: 'nearest' or '2x2' (see the module docstring).
    Returns:
      [H', W'] float32 depth in the target camera, mm (z in the target frame; 0 where nothing lands).
    Raises:
      ValueError naming the argument on a wrong shape or an unknown splat.
    """
    d = np.asarray(depth)
    if d.ndim != 2 or d.shape != (source.height, source.width):
        raise ValueError(f"depth: expected shape {(source.height, source.width)} for the source camera, "
                         f"found {d.shape}")
    if splat not in SPLATS:
        raise ValueError(f"splat: expected one of {SPLATS}, found {splat!r}")
    r, t = _check_rigid(rotation, translation)
    pts, _ = source.depth_to_points(d, return_pixels=True)
    out = np.zeros((target.height, target.width), dtype=np.float32)
    if len(pts) == 0:
        return out
    # row-by-row products, not a BLAS [N, 3] x [3, 3] matmul (10x slower here on a busy machine)
    src = pts.astype(np.float64).T
    x, y, z = (r[i, 0] * src[0] + r[i, 1] * src[1] + r[i, 2] * src[2] + t[i] for i in range(3))
    front = z > 1e-6
    x, y, z = x[front], y[front], z[front]
    if len(z) == 0:
        return out
    u = target.cx + target.fx * x / z
    v = target.cy - target.fy * y / z
    near = (u > -1.0) & (u < target.width) & (v > -1.0) & (v < target.height)  # can touch the target
    u, v, z = u[near], v[near], z[near]
    if splat == "nearest":
        cols, rows, zs = np.rint(u)[None], np.rint(v)[None], z[None]
    else:
        u0, v0 = np.floor(u), np.floor(v)
        cols = np.stack([u0, u0 + 1, u0, u0 + 1])
        rows = np.stack([v0, v0, v0 + 1, v0 + 1])
        zs = np.broadcast_to(z, cols.shape)
    cols, rows, zs = cols.ravel(), rows.ravel(), zs.ravel()
    inside = (cols >= 0) & (cols < target.width) & (rows >= 0) & (rows < target.height)
    flat = (rows[inside] * target.width + cols[inside]).astype(np.int64)
    zs = zs[inside]
    if flat.size == 0:
        return out
    # z-buffer: sort by (pixel, z) and keep the first (nearest) sample of every pixel.
    order = np.lexsort((zs, flat))
    flat, zs = flat[order], zs[order]
    first = np.ones(flat.shape, dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    out.reshape(-1)[flat[first]] = zs[first]
    return out
