"""The palm frame used by stage 2 of the depth network to derotate the input.

It lives in ``hsr_tf.hand_model`` (not ``hsr_tf.geometry``) because it needs the skeleton's palm joints: the
geometry package stays below the hand model in the import ladder.

The canonical frame is the neutral hand frame of ``hsr_tf.hand_model.skeleton``:
fingers along +y, palm facing -z, thumb towards +x. ``palm_frame`` returns a
rotation ``R`` [B,3,3] and an origin ``o`` [B,3] such that, for a point ``p`` in
the input frame,

    p_canonical = R^T (p - o)        (``to_palm_frame``)
    p           = R p_canonical + o  (``from_palm_frame``)

i.e. the columns of ``R`` are the canonical x, y, z axes expressed in the input
frame. Two definitions (``method``):

* ``"template"`` (default of the network): ``R`` is the least-squares rotation
  taking the palm joints of a template hand at the neutral pose (the hand model's
  mean-shape joints) onto the given palm joints (``procrustes.optimal_rotation``
  on the six palm joints, wrist and the five finger roots). Derotating a rigidly
  rotated template therefore gives back the template's palm *exactly*.
* ``"axes"``: no template needed. y = unit vector from the wrist to the mean of the
  four finger MCPs (index..pinky); x = unit vector from the pinky MCP to the index
  MCP, made orthogonal to y; z = x cross y. On the neutral hand this is close to,
  but not exactly, the identity (it depends on where the MCPs sit).

The origin is the centroid of the six palm joints.

Legend: B batch, N points, J joints (21).
"""
import numpy as np
import tensorflow as tf

from hsr_tf.geometry.procrustes import optimal_rotation
from hsr_tf.hand_model.skeleton import NUM_JOINTS, PALM_JOINTS

_EPS = 1e-9
METHODS = ("template", "axes")


def _check(name, x, last=3):
    if x.shape.rank != 3 or x.shape[-1] != last:
        raise ValueError(f"{name}: expected shape [B, N, {last}], found {x.shape}")


def _normalize(v):
    return v / tf.sqrt(tf.reduce_sum(tf.square(v), axis=-1, keepdims=True) + _EPS)


def palm_frame(joints, template_joints=None, method="template"):
    """Palm rotation and origin from the 21 hand joints.

    Args:
      joints: [B, 21, 3] float32 joints in the input frame (any units).
      template_joints: [21, 3] joints of the neutral template hand (hand frame);
        required for ``method="template"``.
      method: ``"template"`` or ``"axes"`` (see module docstring).
    Returns:
      (R [B, 3, 3] proper rotation, origin [B, 3]).
    """
    joints = tf.convert_to_tensor(joints, tf.float32)
    if joints.shape.rank != 3 or tuple(joints.shape[1:]) != (NUM_JOINTS, 3):
        raise ValueError(f"joints: expected shape [B, {NUM_JOINTS}, 3], found {joints.shape}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, found {method!r}")
    palm = tf.gather(joints, PALM_JOINTS, axis=1)  # [B, 6, 3]
    origin = tf.reduce_mean(palm, axis=1)
    if method == "template":
        if template_joints is None:
            raise ValueError("template_joints: expected [21, 3] joints for method='template', found None")
        template = tf.convert_to_tensor(template_joints, tf.float32)
        if tuple(template.shape) != (NUM_JOINTS, 3):
            raise ValueError(f"template_joints: expected shape [{NUM_JOINTS}, 3], found {template.shape}")
        template_palm = tf.gather(template, PALM_JOINTS, axis=0)
        template_palm = tf.broadcast_to(template_palm[None], tf.shape(palm))
        rot = optimal_rotation(template_palm, palm)["R"]
        return rot, origin
    wrist = joints[:, 0]
    mcps = tf.gather(joints, [5, 9, 13, 17], axis=1)
    y_axis = _normalize(tf.reduce_mean(mcps, axis=1) - wrist)
    across = joints[:, 5] - joints[:, 17]
    across = across - tf.reduce_sum(across * y_axis, axis=-1, keepdims=True) * y_axis
    x_axis = _normalize(across)
    z_axis = tf.linalg.cross(x_axis, y_axis)
    return tf.stack([x_axis, y_axis, z_axis], axis=-1), origin


def to_palm_frame(points, R, origin):
    """Derotates points into the canonical palm frame: ``R^T (p - origin)``.

    Args:
      points: [B, N, 3]. R: [B, 3, 3]. origin: [B, 3].
    Returns:
      [B, N, 3].
    """
    points = tf.convert_to_tensor(points, tf.float32)
    _check("points", points)
    return tf.einsum("bni,bij->bnj", points - origin[:, None, :], R)


def from_palm_frame(points, R, origin):
    """Inverse of ``to_palm_frame``: ``R p + origin``.

    Args:
      points: [B, N, 3] in the canonical palm frame. R: [B, 3, 3]. origin: [B, 3].
    Returns:
      [B, N, 3] in the input frame.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    _check("points", points)
    return tf.einsum("bij,bnj->bni", R, points) + origin[:, None, :]


def palm_frame_np(joints, method="axes"):
    """NumPy version of the ``"axes"`` definition (for data inspection and tests).

    Args:
      joints: [..., 21, 3].
    Returns:
      (R [..., 3, 3], origin [..., 3]).
    """
    if method != "axes":
        raise ValueError(f"method: palm_frame_np supports only 'axes', found {method!r}")
    joints = np.asarray(joints, dtype=np.float64)
    y = joints[..., [5, 9, 13, 17], :].mean(-2) - joints[..., 0, :]
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    x = joints[..., 5, :] - joints[..., 17, :]
    x -= (x * y).sum(-1, keepdims=True) * y
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1), joints[..., PALM_JOINTS, :].mean(-2)
