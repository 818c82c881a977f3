"""Inverse kinematics + LBS with the template hand: the "direct LBS" baseline of Ge et al. (supplementary B).

Legend: B batch, J joints (21), V vertices (1305). Millimetres.

From 3D joints only, the template hand (beta = 0, our learned model's mean shape and skinning weights) is posed:
1. the palm (wrist and the five finger roots) of the template is aligned to the predicted palm by a rotation
   (Procrustes); the predicted joints are rotated back by it, so the chain below starts at the identity;
2. walking the kinematic tree from the root, each non-tip joint j with child c gets the minimal ("swing")
   rotation, in its parent's posed frame, that turns the template bone j -> c onto the predicted bone direction
   (the twist about the bone is unobservable from joints and left at 0; tips get 0);
3. the hand model layer poses and skins the template; a similarity transform of its palm joints onto the
   predicted palm places the mesh in the camera frame (the scale follows the predicted skeleton).
Not differentiable in a useful sense (the paper trains this baseline with heat-map and pose losses only); the
output is wrapped in ``stop_gradient``.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hsr_tf.geometry import procrustes, rotations
from hsr_tf.hand_model import HandModel
from hsr_tf.hand_model.layer import HandModelLayer

PALM = (0, 1, 5, 9, 13, 17)


def _swing(a, b):
    """Axis-angle [B, 3] of the minimal rotation turning direction a [B, 3] onto b [B, 3]."""
    cross = tf.linalg.cross(a, b)
    sin = tf.norm(cross, axis=-1, keepdims=True)
    cos = tf.reduce_sum(a * b, axis=-1, keepdims=True)
    angle = tf.atan2(sin, cos)
    return cross / tf.maximum(sin, 1e-9) * angle


@keras.saving.register_keras_serializable(package="hsr_tf")
class InverseKinematicsLBS(keras.layers.Layer):
    """Joints [B, J, 3] mm -> template mesh posed onto them: dict ``vertices`` [B, V, 3], ``joints`` [B, J, 3]."""

    def __init__(self, hand_model=None, **kwargs):
        super().__init__(**kwargs)
        self.hand_model_path = hand_model
        model = HandModel.load(hand_model)
        self.layer = HandModelLayer(model, name="template")
        self.parents = model.parents.tolist()
        self.children = {}
        for j, p in enumerate(self.parents):
            if p >= 0:
                self.children.setdefault(p, []).append(j)
        self.rest_joints = (model.joint_regressor @ model.mean_shape).astype(np.float32)  # [J, 3]
        self.num_betas = model.num_betas

    def call(self, joints):
        joints = tf.stop_gradient(tf.cast(joints, tf.float32))
        if joints.shape.rank != 3 or joints.shape[1] != len(self.parents):
            raise ValueError(f"{self.name}: joints: expected [B, {len(self.parents)}, 3], found {joints.shape}")
        b = tf.shape(joints)[0]
        rest = tf.constant(self.rest_joints)
        palm = list(PALM)
        src = tf.tile(tf.gather(rest, palm)[None], [b, 1, 1])
        rot0 = procrustes.optimal_rotation(src, tf.gather(joints, palm, axis=1))["R"]
        local = tf.einsum("bji,bkj->bki", rot0, joints)  # R0^T p: the chain starts at the identity
        glob = [None] * len(self.parents)
        theta = [tf.zeros([b, 3])] * len(self.parents)
        glob[0] = tf.eye(3, batch_shape=[b])
        for j in range(1, len(self.parents)):
            parent = glob[self.parents[j]]
            kids = self.children.get(j, [])
            if not kids:
                glob[j] = parent
                continue
            c = kids[0]
            d = tf.broadcast_to(rest[c] - rest[j], [b, 3])
            target = tf.einsum("bji,bj->bi", parent, local[:, c] - local[:, j])  # parent^T (p_c - p_j)
            d = d / tf.norm(d, axis=-1, keepdims=True)
            target = target / tf.maximum(tf.norm(target, axis=-1, keepdims=True), 1e-9)
            theta[j] = _swing(d, target)
            glob[j] = tf.matmul(parent, rotations.axis_angle_to_matrix(theta[j]))
        posed = self.layer(tf.zeros([b, self.num_betas]), tf.stack(theta, axis=1))
        s, r, t = procrustes.similarity_procrustes(tf.gather(posed["joints"], palm, axis=1),
                                                   tf.gather(joints, palm, axis=1))
        out = {k: procrustes.apply_similarity(posed[k], s, r, t) for k in ("vertices", "joints")}
        return {k: tf.stop_gradient(v) for k, v in out.items()}

    def get_config(self):
        return {**super().get_config(), "hand_model": self.hand_model_path}
