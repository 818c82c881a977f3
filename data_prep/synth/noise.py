"""Kinect-like (structured light, Kinect v1 / PrimeSense) depth noise for rendered depth maps.

Model, applied in this order to the valid (depth > 0) pixels of a clean depth map:

1. Grazing-angle dropout. ``theta`` = angle between the surface normal and the
   viewing ray. A pixel is dropped with probability
   ``clip((theta - grazing_start_deg) / (grazing_end_deg - grazing_start_deg), 0, 1)``
   (defaults 70 -> 85 deg: nearly edge-on surfaces return nothing).
2. Silhouette edges: pixels with a 4-neighbour that is background or differs by more
   than ``edge_jump_mm`` (20 mm) are dropped with probability ``edge_drop_prob`` (0.5).
3. Holes: ``Poisson(hole_rate * n_valid / 1000)`` discs of radius U{1..hole_max_radius}
   px (defaults 0.3 per 1000 hand pixels, radius <= 2), centred on random valid pixels.
4. Axial noise, Nguyen, Izadi & Lovell (3DIMPVT 2012) fit for the Kinect v1:
   ``sigma(z, theta) = 1.2 + 1.9 (z - 0.4)^2 + 0.1 / sqrt(z) * theta^2 / (pi/2 - theta)^2`` mm,
   z in metres, theta clipped at 80 deg; i.e. 1.2 mm at 0.4 m, 1.37 mm at 0.7 m, growing
   with (z - 0.4)^2 and sharply at grazing angles.
   Gaussian noise of that sigma is added to z.
5. Disparity quantisation: disparity ``f * b / z`` (f = camera fx px, b = 75 mm
   baseline) rounded to 1/8 px (``disparity_step``), then converted back to depth;
   the depth step is z^2 / (8 f b) (0.7 mm at 0.5 m, 1.4 mm at 0.7 m).

All randomness comes from the ``rng`` passed in (seeded per frame by the caller).

Legend: h, w window height/width in pixels.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class KinectNoiseConfig:
    grazing_start_deg: float = 70.0
    grazing_end_deg: float = 85.0
    edge_jump_mm: float = 20.0
    edge_drop_prob: float = 0.5
    hole_rate: float = 0.3
    hole_max_radius: int = 2
    baseline_mm: float = 75.0
    disparity_step: float = 1.0 / 8.0


def axial_sigma_mm(z_mm, theta_rad):
    """Nguyen et al. 2012 axial noise std (mm) for depth z (mm) and incidence angle theta (rad)."""
    z = np.asarray(z_mm, dtype=np.float64) / 1000.0
    th = np.minimum(np.asarray(theta_rad, dtype=np.float64), np.deg2rad(80.0))
    return 1.2 + 1.9 * (z - 0.4) ** 2 + 0.1 / np.sqrt(z) * th ** 2 / (np.pi / 2 - th) ** 2


def quantize_disparity(z_mm, focal_px: float, baseline_mm: float = 75.0, step: float = 1.0 / 8.0):
    """Round depth (mm) to the nearest value representable by disparity steps of ``step`` px."""
    z = np.asarray(z_mm, dtype=np.float64)
    disp = focal_px * baseline_mm / z
    disp = np.maximum(np.round(disp / step), 1.0) * step
    return focal_px * baseline_mm / disp


def edge_mask(depth, jump_mm: float):
    """[h, w] bool: valid pixels with a 4-neighbour that is background (0/outside) or deeper/shallower by > jump."""
    d = np.asarray(depth, dtype=np.float64)
    valid = d > 0
    padded = np.pad(d, 1, mode="constant", constant_values=0.0)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(d.shape, dtype=bool)
    for dv, du in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nb = padded[1 + dv:1 + dv + d.shape[0], 1 + du:1 + du + d.shape[1]]
        edge |= (nb <= 0) | (np.abs(nb - centre) > jump_mm)
    return edge & valid


def apply_kinect_noise(depth, cos_incidence, focal_px: float, rng, config: KinectNoiseConfig = KinectNoiseConfig()):
    """Corrupt a clean depth window.

    Args:
      depth: [h, w] mm, 0 = background.
      cos_incidence: [h, w] |cos| of the angle between surface normal and viewing ray.
      focal_px: camera fx (pixels), for the disparity model.
      rng: numpy Generator.
    Returns:
      [h, w] float32 noisy depth, 0 = missing.
    """
    d = np.asarray(depth, dtype=np.float64).copy()
    if d.shape != np.shape(cos_incidence):
        raise ValueError(f"cos_incidence: expected shape {d.shape} (same as depth), found {np.shape(cos_incidence)}")
    valid = d > 0
    theta = np.arccos(np.clip(np.abs(cos_incidence), 0.0, 1.0))
    # 1. grazing angles
    span = max(config.grazing_end_deg - config.grazing_start_deg, 1e-6)
    p_graze = np.clip((np.rad2deg(theta) - config.grazing_start_deg) / span, 0.0, 1.0)
    drop = valid & (rng.random(d.shape) < p_graze)
    # 2. silhouette / discontinuity edges (of the clean map)
    edges = edge_mask(d, config.edge_jump_mm)
    drop |= edges & (rng.random(d.shape) < config.edge_drop_prob)
    # 3. holes
    vv, uu = np.nonzero(valid)
    n_holes = rng.poisson(config.hole_rate * len(vv) / 1000.0) if len(vv) else 0
    if n_holes:
        seeds = np.zeros(d.shape, dtype=bool)
        picks = rng.choice(len(vv), size=n_holes, replace=True)
        radii = rng.integers(1, config.hole_max_radius + 1, size=n_holes)
        for r in np.unique(radii):
            mask_r = np.zeros(d.shape, dtype=bool)
            sel = picks[radii == r]
            mask_r[vv[sel], uu[sel]] = True
            yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
            seeds |= ndimage.binary_dilation(mask_r, structure=(yy ** 2 + xx ** 2) <= r * r)
        drop |= seeds
    keep = valid & ~drop
    # 4. axial noise, 5. quantisation
    z = d[keep]
    z = z + rng.normal(size=z.shape) * axial_sigma_mm(z, theta[keep])
    z = quantize_disparity(np.maximum(z, 1.0), focal_px, config.baseline_mm, config.disparity_step)
    out = np.zeros(d.shape, dtype=np.float32)
    out[keep] = z
    return out
