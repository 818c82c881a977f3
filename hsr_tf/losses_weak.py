"""Weak-supervision depth loss L_D of Ge et al. 2019 (Eq. 7).

Legend: B batch, H, W depth-map size (32 x 32 in the paper), S crop size.

L_D = mean over valid pixels of smooth_L1((D - D_ref) / scale) (smooth L1: 0.5 x^2 if |x| < 1 else |x| - 0.5).
Reference pixels: background where ``ref_mask`` is 0 (target depth 0), hand where it is 1 and the depth is > 0;
hand pixels with no measured depth are ignored. Without a mask, depth 0 is background.
Gradient routing: where both reference and render see the hand the rendered depth carries only its surface
gradient (stop_gradient on the coverage); elsewhere only its outline gradient (stop_gradient on the surface depth):
the coverage term would otherwise react to depth offsets, and the surface term would pull toward the camera a
surface the reference does not have.
"""
from __future__ import annotations

import tensorflow as tf


def smooth_l1(x):
    """Elementwise smooth L1 (Huber with delta 1)."""
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def depth_loss(parts, ref_depth, ref_mask=None, scale=1.0):
    """L_D.

    Args:
      parts: dict from hsr_tf.render.render_depth_parts (mask, surface_depth, coverage [B,H,W]).
      ref_depth: [B,H,W] mm (0 = none). ref_mask: optional [B,H,W] in [0,1] (hand where > 0.5).
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
