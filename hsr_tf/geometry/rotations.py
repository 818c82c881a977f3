"""Rotation helpers in TensorFlow (float32): Rodrigues with exact gradients at zero.

Legend: B batch, J joints, ``...`` any leading shape.

Why not ``tensorflow_graphics.geometry.transformation.rotation_matrix_3d.from_axis_angle``:
it takes a *unit* axis and an angle. Getting those from a rotation vector ``aa`` means
``angle = |aa|`` and ``axis = aa / |aa|``, and both have no (finite) gradient at ``aa = 0`` --
exactly the neutral pose every hand-model layer starts from. Here the coefficients
``sin(a)/a`` and ``(1 - cos a)/a^2`` are used directly on the unnormalised skew matrix, with
their Taylor series below a small angle and the "double where" trick so that neither branch
produces NaN/Inf in the backward pass. The tests compare against tensorflow-graphics for
ordinary angles.
"""
import tensorflow as tf

# Below this squared angle (rad^2) the series is used; its truncation error is a^6/5040 < 1e-15.
_SMALL_ANGLE_SQ = 1e-4


def axis_angle_to_matrix(axis_angle, name=None):
    """Rotation matrices from rotation vectors (exact Rodrigues' formula).

    ``R = I + sin(a)/a K + (1 - cos a)/a^2 K^2`` with ``K`` the skew matrix of ``aa`` and
    ``a = |aa|``. ``(1 - cos a)/a^2`` is evaluated as ``0.5 (sin(a/2)/(a/2))^2`` to avoid the
    float32 cancellation of ``1 - cos a``.

    Args:
      axis_angle: [..., 3] rotation vectors (axis times angle, radians); cast to float32.
    Returns:
      [..., 3, 3] float32 rotation matrices.
    Raises:
      ValueError: the last dimension is statically known and is not 3.
    """
    with tf.name_scope(name or "axis_angle_to_matrix"):
        aa = tf.convert_to_tensor(axis_angle)
        if aa.dtype != tf.float32:
            aa = tf.cast(aa, tf.float32)
        if aa.shape.rank is not None and (aa.shape.rank < 1 or aa.shape[-1] not in (None, 3)):
            raise ValueError(f"axis_angle: expected shape [..., 3], found {aa.shape}")
        angle_sq = tf.reduce_sum(tf.square(aa), axis=-1)
        small = angle_sq < _SMALL_ANGLE_SQ
        # Double where: the sqrt/sin branch never sees a tiny angle, so its gradient stays finite.
        safe_sq = tf.where(small, tf.ones_like(angle_sq), angle_sq)
        angle = tf.sqrt(safe_sq)
        half = 0.5 * angle
        sinc_half = tf.sin(half) / half
        a_exact = tf.sin(angle) / angle
        b_exact = 0.5 * tf.square(sinc_half)
        a_series = 1.0 - angle_sq / 6.0 + tf.square(angle_sq) / 120.0
        b_series = 0.5 - angle_sq / 24.0 + tf.square(angle_sq) / 720.0
        a_coef = tf.where(small, a_series, a_exact)[..., None, None]
        b_coef = tf.where(small, b_series, b_exact)[..., None, None]
        x, y, z = tf.unstack(aa, axis=-1)
        zero = tf.zeros_like(x)
        skew = tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1)
        skew = tf.reshape(skew, tf.concat([tf.shape(aa)[:-1], [3, 3]], axis=0))
        # K^2 = aa aa^T - |aa|^2 I
        skew_sq = aa[..., :, None] * aa[..., None, :] - angle_sq[..., None, None] * tf.eye(3, dtype=tf.float32)
        return tf.eye(3, dtype=tf.float32) + a_coef * skew + b_coef * skew_sq


def pose_feature(rotations, name=None):
    """SMPL pose-blend feature: flattened ``R_j - I`` of the non-root joints.

    Args:
      rotations: [B, J, 3, 3] per-joint local rotation matrices (joint 0 = global orientation,
        which is dropped so that the root's rotation never deforms the shape).
    Returns:
      [B, (J - 1) * 9] float32, row-major per joint: joint 1's 9 entries first.
    Raises:
      ValueError: ``rotations`` is not statically [B, J, 3, 3].
    """
    with tf.name_scope(name or "pose_feature"):
        rot = tf.convert_to_tensor(rotations)
        if rot.dtype != tf.float32:
            rot = tf.cast(rot, tf.float32)
        if rot.shape.rank != 4 or tuple(rot.shape[2:]) != (3, 3) or rot.shape[1] is None:
            raise ValueError(f"rotations: expected shape [B, J, 3, 3] with J known, found {rot.shape}")
        num_joints = rot.shape[1]
        feat = rot[:, 1:] - tf.eye(3, dtype=tf.float32)
        return tf.reshape(feat, [-1, (num_joints - 1) * 9])
