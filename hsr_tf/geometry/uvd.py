"""(u, v, d) <-> camera millimetres for the RGB network (Ge et al. section 4.2), TensorFlow, float32.

The network predicts, per vertex or joint, image coordinates and a scale-invariant, root-relative depth:
  u, v   crop pixels (u right, v down, integer = pixel centre) of the S x S input crop;
  d      = (z - root_depth) / bone_scale, with root_depth the z of our joint 0 (the wrist) and bone_scale the
         middle finger's MCP -> PIP length |joint 9 - joint 10| (mm), both given at test time (section 5.1).
Camera convention of the project: u = cx + fx x / z, v = cy - fy y / z (y up), so
  z = root_depth + d * bone_scale,  x = (u - cx) z / fx,  y = (cy - v) z / fy.

The network works in normalised crop coordinates u_n = 2 (u + 0.5) / S - 1 (the crop's outer pixel edges at
+-1, so resizing the crop leaves u_n unchanged); :func:`normalize_uv` / :func:`denormalize_uv` convert.

Legend: B batch, N points (vertices or joints), S crop size (px). camera [B, 4] = (fx, fy, cx, cy) of the crop.
"""
from __future__ import annotations

import tensorflow as tf

ROOT_JOINT = 0
SCALE_BONE = (9, 10)  # middle MCP -> PIP, our joint order


def _check(name, x, last, rank=3):
    if x.shape.rank is not None and (x.shape.rank != rank or (x.shape[-1] is not None and x.shape[-1] != last)):
        raise ValueError(f"{name}: expected rank {rank} with last dimension {last}, found {x.shape}")


def _per_batch(camera, root_depth, bone_scale):
    camera = tf.cast(camera, tf.float32)
    _check("camera", camera, 4, rank=2)
    root_depth = tf.reshape(tf.cast(root_depth, tf.float32), [-1, 1])
    bone_scale = tf.reshape(tf.cast(bone_scale, tf.float32), [-1, 1])
    fx, fy, cx, cy = (camera[:, i:i + 1] for i in range(4))
    return fx, fy, cx, cy, root_depth, bone_scale


def uvd_to_camera(uvd, camera, root_depth, bone_scale):
    """uvd [B, N, 3] (u, v px; d scale-invariant root-relative) -> camera xyz [B, N, 3] mm.

    root_depth, bone_scale: [B] mm.
    """
    uvd = tf.cast(uvd, tf.float32)
    _check("uvd", uvd, 3)
    fx, fy, cx, cy, zr, s = _per_batch(camera, root_depth, bone_scale)
    z = zr + uvd[..., 2] * s
    x = (uvd[..., 0] - cx) * z / fx
    y = (cy - uvd[..., 1]) * z / fy
    return tf.stack([x, y, z], axis=-1)


def camera_to_uvd(xyz, camera, root_depth, bone_scale):
    """Inverse of :func:`uvd_to_camera`: camera xyz [B, N, 3] mm (z > 0) -> uvd [B, N, 3]."""
    xyz = tf.cast(xyz, tf.float32)
    _check("xyz", xyz, 3)
    fx, fy, cx, cy, zr, s = _per_batch(camera, root_depth, bone_scale)
    z = xyz[..., 2]
    u = cx + fx * xyz[..., 0] / z
    v = cy - fy * xyz[..., 1] / z
    return tf.stack([u, v, (z - zr) / s], axis=-1)


def normalize_uv(uv, image_size):
    """Crop pixels -> normalised crop coordinates: u_n = 2 (u + 0.5) / S - 1. Any shape [..., 2] (or more)."""
    return 2.0 * (tf.cast(uv, tf.float32) + 0.5) / float(image_size) - 1.0


def denormalize_uv(uv_n, image_size):
    """Inverse of :func:`normalize_uv`: u = (u_n + 1) S / 2 - 0.5."""
    return (tf.cast(uv_n, tf.float32) + 1.0) * (0.5 * float(image_size)) - 0.5


def normalized_uvd_to_camera(uvd_n, camera, root_depth, bone_scale, image_size):
    """(u_n, v_n, d) [B, N, 3] -> camera xyz [B, N, 3] mm for an S x S crop with intrinsics ``camera``."""
    uvd_n = tf.cast(uvd_n, tf.float32)
    _check("uvd_n", uvd_n, 3)
    uv = denormalize_uv(uvd_n[..., :2], image_size)
    return uvd_to_camera(tf.concat([uv, uvd_n[..., 2:]], -1), camera, root_depth, bone_scale)


def camera_to_normalized_uvd(xyz, camera, root_depth, bone_scale, image_size):
    """Inverse of :func:`normalized_uvd_to_camera`."""
    uvd = camera_to_uvd(xyz, camera, root_depth, bone_scale)
    return tf.concat([normalize_uv(uvd[..., :2], image_size), uvd[..., 2:]], -1)


def scale_invariant_relative(xyz, root, bone_scale):
    """(xyz - root) / bone_scale: xyz [B, N, 3] mm, root [B, 3] mm, bone_scale [B] mm -> [B, N, 3] (unitless)."""
    xyz = tf.cast(xyz, tf.float32)
    root = tf.cast(root, tf.float32)
    s = tf.reshape(tf.cast(bone_scale, tf.float32), [-1, 1, 1])
    return (xyz - root[:, None, :]) / s


def bone_scale_from_joints(joints):
    """|joint 9 - joint 10| (middle MCP -> PIP) of joints [B, 21, 3] mm -> [B] mm."""
    joints = tf.cast(joints, tf.float32)
    _check("joints", joints, 3)
    return tf.norm(joints[:, SCALE_BONE[0]] - joints[:, SCALE_BONE[1]], axis=-1)
