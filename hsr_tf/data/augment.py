"""Online augmentation of paper section III-E-1 (TensorFlow, seeded, batched).

In NORMALISED coordinates (origin = the cloud's normalisation centre), per sample:

  R = Rz(c) Ry(b) Rx(a)          a ~ U(rot_x), b ~ U(rot_y), c ~ U(rot_z)
      (tensorflow_graphics rotation_matrix_3d.from_euler convention)
  S = diag(sx, sy, 1)            sx, sy ~ U(scale_xy)   (independently)
  t ~ N(0, shift_std^2 I3)
  x' = S R x + t                 i.e. x' = x @ M^T + t with M = S R

Paper: rotation Euler angles uniform in [-pi/6, pi/6], [-pi/6, pi/6] and the third
printed "[-0, pi/2]". Our reading (default ``rot_z = (-pi/2, pi/2)``): the third angle
is the in-plane rotation about the camera's viewing axis (the one that does not
change what a depth camera sees, hence the large range), and "-0" is a lost
"pi/2" in "-pi/2". ``rot_z=(0, pi/2)`` gives the literal print. Scaling: uniform in
[1/1.2, 1.2] for x and for y. Shift: N(0, 0.0125) per axis, normalised units
(0.0125 * 150 mm = 1.9 mm with the default fixed scale).

The same (M, t) is applied to points, joints and vertices of a sample.

Legend: B batch, N points (or joints / vertices), ... any.
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

AUGMENTED_KEYS = ("points", "joints", "vertices")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentation (radians; scale factors; normalised units)."""

    rot_x: tuple = (-math.pi / 6, math.pi / 6)
    rot_y: tuple = (-math.pi / 6, math.pi / 6)
    rot_z: tuple = (-math.pi / 2, math.pi / 2)
    scale_xy: tuple = (1.0 / 1.2, 1.2)
    shift_std: float = 0.0125

    def __post_init__(self):
        for name in ("rot_x", "rot_y", "rot_z", "scale_xy"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"AugmentConfig.{name}: expected (low, high) with low <= high, found {(lo, hi)}")
        if self.scale_xy[0] <= 0:
            raise ValueError(f"AugmentConfig.scale_xy: expected positive factors, found {self.scale_xy}")
        if self.shift_std < 0:
            raise ValueError(f"AugmentConfig.shift_std: expected >= 0, found {self.shift_std}")


def euler_to_matrix(angles):
    """[..., 3] Euler angles (a, b, c) -> [..., 3, 3] = Rz(c) Ry(b) Rx(a) (tensorflow_graphics)."""
    from tensorflow_graphics.geometry.transformation import rotation_matrix_3d

    return rotation_matrix_3d.from_euler(tf.convert_to_tensor(angles, tf.float32))


def sample_augmentation(batch_size, seed, config: AugmentConfig = AugmentConfig()):
    """Draw per-sample transforms with stateless RNG.

    Args:
      batch_size: B (int or scalar tensor).
      seed: shape [2] int32/int64 tensor (stateless seed).
    Returns:
      (matrix [B, 3, 3] float32 = S R, shift [B, 3] float32).
    """
    seed = tf.convert_to_tensor(seed)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    lo = tf.constant([config.rot_x[0], config.rot_y[0], config.rot_z[0]], tf.float32)
    hi = tf.constant([config.rot_x[1], config.rot_y[1], config.rot_z[1]], tf.float32)
    angles = tf.random.stateless_uniform([batch_size, 3], seeds[0], minval=0.0, maxval=1.0) * (hi - lo) + lo
    rot = euler_to_matrix(angles)
    sxy = tf.random.stateless_uniform([batch_size, 2], seeds[1], minval=config.scale_xy[0],
                                      maxval=config.scale_xy[1])
    scale = tf.concat([sxy, tf.ones([batch_size, 1])], axis=-1)
    matrix = scale[:, :, None] * rot
    shift = tf.random.stateless_normal([batch_size, 3], seeds[2], stddev=config.shift_std)
    return matrix, shift


def apply_transform(x, matrix, shift):
    """x' = x @ M^T + t.

    Args:
      x: [B, N, 3]. matrix: [B, 3, 3]. shift: [B, 3].
    Returns:
      [B, N, 3] float32.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 3 or x.shape[-1] != 3:
        raise ValueError(f"x: expected shape [B, N, 3], found {x.shape}")
    return tf.einsum("bnj,bij->bni", x, matrix) + shift[:, None, :]


def invert_transform(x, matrix, shift):
    """Inverse of :func:`apply_transform`: x = (x' - t) @ M^{-T}. Shapes as apply_transform."""
    x = tf.convert_to_tensor(x, tf.float32)
    inv = tf.linalg.inv(matrix)
    return tf.einsum("bnj,bij->bni", x - shift[:, None, :], inv)


def augment_batch(batch: dict, seed, config: AugmentConfig = AugmentConfig()) -> dict:
    """Apply one random transform per sample to points, joints and vertices (if present).

    Args:
      batch: dict with ``points`` [B, P, 3] and optionally ``joints`` [B, J, 3],
        ``vertices`` [B, V, 3], all normalised; other keys pass through.
      seed: [2] stateless seed.
    Returns:
      new dict; also sets ``aug_matrix`` [B, 3, 3] and ``aug_shift`` [B, 3]
      (composed with any transform already recorded there).
    """
    if "points" not in batch:
        raise ValueError(f"batch: expected a 'points' entry, found keys {sorted(batch)}")
    batch_size = tf.shape(batch["points"])[0]
    matrix, shift = sample_augmentation(batch_size, seed, config)
    out = dict(batch)
    for key in AUGMENTED_KEYS:
        if key in batch:
            out[key] = apply_transform(batch[key], matrix, shift)
    prev_m = batch.get("aug_matrix")
    prev_t = batch.get("aug_shift")
    if prev_m is not None:
        # x'' = M (M0 x + t0) + t
        out["aug_matrix"] = tf.matmul(matrix, prev_m)
        out["aug_shift"] = tf.einsum("bij,bj->bi", matrix, prev_t) + shift
    else:
        out["aug_matrix"] = matrix
        out["aug_shift"] = shift
    return out
