"""Weak-supervision losses of Ge et al. 2019 (section 4.4, Eq. 7-8): depth map, pseudo-GT mesh, L_weakly.

Legend: B batch, S crop size (px), H, W depth-map size (32 x 32 in the paper), V vertices, J joints.

Depth map loss L_D (Eq. 7), our reading of what the paper leaves open:
- Reference (:func:`reference_depth`): the S x S crop depth is point-sampled at the centres of the 32 x 32
  pixels (pixel-centre convention: output pixel r samples input coordinate (r + 0.5) k - 0.5, k = S / 32, i.e.
  the central 2 x 2 input pixels of each k x k block when k is even). Among the central pixels that the mask
  calls hand and whose depth is > 0, the LOWER MEDIAN is taken: a real measured depth, never a blend across a
  finger / palm step or a hand / background edge (a mean would invent a surface in between). A 32 x 32 pixel is
  hand where the mean mask over the central pixels is > 0.5; background depth comes from the mask, not from the
  sensor (STB's depth maps contain the background scene); hand pixels with no measured depth are ignored.
- Residuals are divided by a scale (``bone_scale``, mm, by default, the unit of the network's scale-invariant
  depth), then smooth L1 (0.5 x^2 if |x| < 1 else |x| - 0.5), averaged over the valid pixels. At background /
  hand mismatches the rendered or reference depth is compared with 0, so each mismatched pixel costs about
  z / scale (~12): in the linear part of smooth L1, a constant per pixel, i.e. a silhouette term.
- Gradient routing (:func:`depth_loss`): where both reference and render see the hand the rendered depth
  carries only its surface gradient (stop_gradient on the coverage); elsewhere only its outline gradient
  (stop_gradient on the surface depth). Otherwise the coverage term would react to depth offsets, and the
  surface term would pull toward the camera a surface the reference does not have.

Pseudo-GT mesh loss L_pM = lambda_e L_e + lambda_l L_l (1, 50) against the mesh the pretrained network gives
with the ground-truth heat-maps (:mod:`hsr_tf.train.pseudo_gt`), with :mod:`hsr_tf.losses_rgb`'s edge and
Laplacian losses (same units: coordinates / bone_scale, sums / V).

L_weakly = 0.1 L_H + 0.1 L_D + 1 L_pM (+ 10 L_J when 3D joints are used): :func:`weakly_supervised_loss`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from hsr_tf import losses_rgb, render


def smooth_l1(x):
    """Elementwise smooth L1 (Huber with delta 1)."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def reference_depth(depth, mask, size: int = 32):
    """Reference depth map of L_D from the crop's depth and hand mask (see the module docstring).

    Args:
      depth: [B, S, S] mm, 0 = no measurement. mask: [B, S, S] hand coverage in [0, 1].
      size: output size (S must be a multiple of it).
    Returns:
      (ref_depth [B, size, size] mm (0 = background or no measurement), ref_mask [B, size, size] 0 / 1).
    """
    depth = tf.cast(tf.convert_to_tensor(depth), tf.float32)
    mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    if depth.shape.rank != 3 or mask.shape.rank != 3:
        raise ValueError(f"reference_depth: depth and mask must be [B,S,S], found {depth.shape}, {mask.shape}")
    s = depth.shape[1]
    if s is None or depth.shape[2] != s or s % size or tuple(mask.shape[1:]) != tuple(depth.shape[1:]):
        raise ValueError(f"reference_depth: expected square [B,S,S] depth and mask with S a multiple of {size}, "
                         f"found {depth.shape}, {mask.shape}")
    k = s // size
    lo, hi = (k - 1) // 2, k // 2  # central input pixels of each block (one when k is odd)
    centre = sorted({lo, hi})

    def samples(a):
        blocks = tf.reshape(a, [-1, size, k, size, k])
        return tf.stack([blocks[:, :, i, :, j] for i in centre for j in centre], -1)  # [B, size, size, n]

    d, m = samples(depth), samples(mask)
    valid = (d > 0) & (m > 0.5)
    srt = tf.sort(tf.where(valid, d, float("inf")), axis=-1)
    n = tf.reduce_sum(tf.cast(valid, tf.int32), -1)
    pick = tf.gather(srt, tf.maximum((n - 1) // 2, 0), batch_dims=3)
    ref_mask = tf.cast(tf.reduce_mean(m, -1) > 0.5, tf.float32)
    ref = tf.where((n > 0) & (ref_mask > 0), pick, 0.0)
    return ref, ref_mask


def depth_loss(parts, ref_depth, ref_mask=None, scale=1.0):
    """L_D.

    Args:
      parts: dict from hsr_tf.render.render_depth_parts (mask, surface_depth, coverage [B,H,W]).
      ref_depth: [B,H,W] mm (0 = none). ref_mask: optional [B,H,W] in [0,1] (hand where > 0.5); without it,
        depth 0 is background.
      scale: mm, scalar or [B]: depth differences are divided by it.
    Returns:
      scalar float32.
    """
    ref_depth = tf.cast(ref_depth, parts["mask"].dtype)
    fg = ref_depth > 0 if ref_mask is None else tf.cast(ref_mask, ref_depth.dtype) > 0.5
    valid = tf.logical_not(fg) | (ref_depth > 0)
    both = fg & (parts["coverage"] > 0.5)
    m, z = parts["mask"], parts["surface_depth"]
    d = tf.where(both, tf.stop_gradient(m) * z, m * tf.stop_gradient(z))
    s = tf.reshape(tf.cast(scale, d.dtype), [-1, 1, 1])
    target = tf.where(fg, ref_depth, tf.zeros_like(ref_depth))
    per = smooth_l1((d - target) / s) * tf.cast(valid, d.dtype)
    return tf.reduce_sum(per) / tf.maximum(tf.reduce_sum(tf.cast(valid, d.dtype)), 1.0)


def pseudo_gt_mesh_loss(pred_xyz, pseudo_xyz, faces, scale=None, weights=None, lambda_e: float = 1.0,
                        lambda_l: float = 50.0):
    """L_pM = lambda_e L_e + lambda_l L_l against the pseudo-GT mesh.

    Args:
      pred_xyz, pseudo_xyz: [B, V, 3] mm (same frame). faces: [F, 3]. scale: [B] mm (bone_scale) or None.
      weights: optional [B] frame weights (e.g. 0 for frames without a pseudo-GT mesh).
    Returns:
      (scalar total, {"pseudo_edge": L_e, "pseudo_laplacian": L_l}).
    """
    terms = {"pseudo_edge": losses_rgb.edge_loss(pred_xyz, pseudo_xyz, faces, scale, weights),
             "pseudo_laplacian": losses_rgb.laplacian_loss(pred_xyz, pseudo_xyz, faces, scale, weights)}
    return lambda_e * terms["pseudo_edge"] + lambda_l * terms["pseudo_laplacian"], terms


@dataclasses.dataclass
class WeakLossConfig:
    """Weights of Eq. 8 (paper values; lambda_j = 10 when 3D joints supervise, 0 without). A weight of 0 drops
    its term (Baseline 2: lambda_d = 0; "without pseudo-GT" (Fig. 6): lambda_pm = 0)."""

    lambda_h: float = 0.1
    lambda_d: float = 0.1
    lambda_pm: float = 1.0
    lambda_j: float = 0.0
    lambda_e: float = 1.0
    lambda_l: float = 50.0
    depth_size: int = 32
    joints_key: str = "joints"


def render_prediction(vertices, camera, faces, image_size: int, size: int = 32):
    """Renders predicted meshes [B, V, 3] mm seen by the S x S crop camera [B, 4] at size x size: the dict of
    :func:`hsr_tf.render.render_depth_parts`."""
    cam = render.scale_camera(tf.cast(camera, tf.float32), size / image_size)
    return render.render_depth_parts(tf.cast(vertices, tf.float32), faces, cam, size, size)


def weakly_supervised_loss(batch, outputs, faces, config: WeakLossConfig, image_size: int):
    """Eq. 8 on one batch of hsr_tf.data.rgb_reader (+ ``pseudo_vertices`` [B, V, 3] mm in the batch's camera
    frame, and optionally ``has_pseudo`` [B], when lambda_pm > 0). Returns (total, {term: value}).

    Depth and pseudo-GT terms need ``outputs['vertices']`` (mesh variants); they are skipped for variants without
    a mesh (Baseline 1).
    """
    scale = tf.cast(batch["bone_scale"], tf.float32)
    terms = {}
    total = tf.constant(0.0)
    if config.lambda_h:
        terms["heatmap"] = losses_rgb.heatmap_loss(outputs["heatmaps_all"], batch["heatmaps"])
        total += config.lambda_h * terms["heatmap"]
    if "vertices" in outputs:
        if config.lambda_d:
            ref, ref_mask = reference_depth(batch["depth"], batch["mask"], config.depth_size)
            parts = render_prediction(outputs["vertices"], batch["camera"], faces, image_size, config.depth_size)
            terms["depth"] = depth_loss(parts, ref, ref_mask, scale)
            total += config.lambda_d * terms["depth"]
        if config.lambda_pm:
            if "pseudo_vertices" not in batch:
                raise ValueError("batch: lambda_pm > 0 needs 'pseudo_vertices' (hsr_tf.train.pseudo_gt), not found")
            pm, sub = pseudo_gt_mesh_loss(outputs["vertices"], batch["pseudo_vertices"], faces, scale,
                                          batch.get("has_pseudo"), config.lambda_e, config.lambda_l)
            terms.update(sub)
            terms["pseudo_mesh"] = pm
            total += config.lambda_pm * pm
    if config.lambda_j:
        terms["pose"] = losses_rgb.pose_loss(outputs[config.joints_key], batch["joints"], scale)
        total += config.lambda_j * terms["pose"]
    return total, terms
