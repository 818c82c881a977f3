"""Regression heads of the depth shape network (Deng et al. Fig. 3b) and the joint regression layer.

``MLPHead``: the "two-layer MLP unit" on the 1024-d global feature: Dense(hidden) [+ BatchNorm]
+ ReLU [+ Dropout], then a linear Dense to ``prod(output_shape)`` values reshaped to
``[B, *output_shape]``. ``final_init_scale`` shrinks the initial weights of the last layer
(e.g. 0.1 for theta so the network starts near the neutral pose).

``SimilarityHead``: regresses {s, R, t} directly (the ``transform='regress'`` alternative to
Procrustes): an ``MLPHead`` to 10 numbers: a 6D rotation (Zhou et al. 2019; two columns, Gram-Schmidt),
a log-scale and a translation. ``s = scale_init * exp(clip(raw, -5, 5))`` so the head starts at
``scale_init`` (normalised units per mm); the 6D bias starts at the identity.

``JointRegression``: the joint regression network (section III-C): ONE fully connected layer with no
activation, from the flattened vertices ``[B, V*3]`` to ``[B, Jd*3]``.

Legend: B batch, F feature width, V vertices, J model joints, Jd dataset joints.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hsr_tf import precision


def _final_initializer(scale):
    # Glorot-uniform with its limit multiplied by ``scale`` (variance by scale^2).
    return keras.initializers.VarianceScaling(scale=float(scale) ** 2, mode="fan_avg", distribution="uniform")


@keras.saving.register_keras_serializable(package="hsr_tf")
class MLPHead(keras.layers.Layer):
    """Two-layer MLP regression head.

    Args:
      hidden_units: width of the hidden layer.
      output_shape: tuple, e.g. (21, 3).
      batch_norm: BatchNorm after the hidden Dense (as in the Point-to-Point/Hand PointNet heads).
      dropout: dropout rate after the hidden activation (0 = none).
      final_init_scale: multiplier of the last layer's initial weight range.
      final_bias_init: None (zeros) or a flat list of ``prod(output_shape)`` initial biases.

    Call: ``features [B, F]`` -> ``[B, *output_shape]``.
    """

    def __init__(self, hidden_units, output_shape, batch_norm=True, dropout=0.0, final_init_scale=1.0,
                 final_bias_init=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = int(hidden_units)
        self.out_shape = tuple(int(d) for d in output_shape)
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        self.final_init_scale = float(final_init_scale)
        self.final_bias_init = None if final_bias_init is None else [float(v) for v in final_bias_init]
        units = int(np.prod(self.out_shape))
        if self.final_bias_init is not None and len(self.final_bias_init) != units:
            raise ValueError(f"final_bias_init: expected {units} values, found {len(self.final_bias_init)}")
        self.hidden = keras.layers.Dense(self.hidden_units, use_bias=not self.batch_norm, name="hidden")
        self.bn = keras.layers.BatchNormalization(name="bn") if self.batch_norm else None
        self.drop = keras.layers.Dropout(self.dropout) if self.dropout > 0 else None
        bias_init = "zeros" if self.final_bias_init is None else keras.initializers.Constant(
            np.asarray(self.final_bias_init, np.float32))
        # The regressed values (theta, beta, joints, transform) in float32 under any precision policy.
        self.out = keras.layers.Dense(units, kernel_initializer=_final_initializer(self.final_init_scale),
                                      bias_initializer=bias_init, name="out", dtype=precision.FLOAT32_POLICY)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"MLPHead: expected input shape [B, F], found {input_shape}")
        self.hidden.build(input_shape)
        if self.bn is not None:
            self.bn.build((input_shape[0], self.hidden_units))
        self.out.build((input_shape[0], self.hidden_units))
        self.built = True

    def call(self, x, training=None):
        h = self.hidden(x)
        if self.bn is not None:
            h = self.bn(h, training=training)
        h = tf.nn.relu(h)
        if self.drop is not None:
            h = self.drop(h, training=training)
        y = self.out(h)
        return tf.reshape(y, [-1, *self.out_shape])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.out_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "output_shape": list(self.out_shape),
                "batch_norm": self.batch_norm, "dropout": self.dropout, "final_init_scale": self.final_init_scale,
                "final_bias_init": self.final_bias_init}


def rotation_6d_to_matrix(x6):
    """6D rotation representation (two 3-vectors) -> rotation matrix by Gram-Schmidt.

    Args:
      x6: [B, 6]; the first three entries are the first column direction, the last three the second.
    Returns:
      [B, 3, 3] proper rotations whose first two columns are the orthonormalised inputs.
    """
    a1, a2 = x6[:, :3], x6[:, 3:]
    b1 = tf.math.l2_normalize(a1, axis=-1, epsilon=1e-12)
    b2 = tf.math.l2_normalize(a2 - tf.reduce_sum(b1 * a2, axis=-1, keepdims=True) * b1, axis=-1, epsilon=1e-12)
    b3 = tf.linalg.cross(b1, b2)
    return tf.stack([b1, b2, b3], axis=-1)


@keras.saving.register_keras_serializable(package="hsr_tf")
class SimilarityHead(keras.layers.Layer):
    """Regresses the hand-to-input similarity {s, R, t} from the global feature.

    Args:
      hidden_units: hidden width of the MLP.
      scale_init: initial s (input units per hand-frame mm, e.g. 1/150 for the 150 mm normalisation).
      batch_norm: BatchNorm in the MLP.

    Call: ``features [B, F]`` -> ``(s [B], R [B, 3, 3], t [B, 3])``.
    """

    def __init__(self, hidden_units=512, scale_init=1.0 / 150.0, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = int(hidden_units)
        self.scale_init = float(scale_init)
        if not self.scale_init > 0:
            raise ValueError(f"scale_init: expected > 0, found {scale_init}")
        self.batch_norm = bool(batch_norm)
        self.mlp = MLPHead(self.hidden_units, (10,), batch_norm=self.batch_norm, final_init_scale=0.1,
                           final_bias_init=[1, 0, 0, 0, 1, 0, 0, 0, 0, 0], name="mlp")

    def build(self, input_shape):
        self.mlp.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        raw = self.mlp(x, training=training)
        rot = rotation_6d_to_matrix(raw[:, :6])
        s = self.scale_init * tf.exp(tf.clip_by_value(raw[:, 6], -5.0, 5.0))
        return s, rot, raw[:, 7:10]

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "scale_init": self.scale_init,
                "batch_norm": self.batch_norm}


@keras.saving.register_keras_serializable(package="hsr_tf")
class JointRegression(keras.layers.Layer):
    """Joint regression network: one linear fully connected layer, vertices -> dataset joints.

    Args:
      num_joints: Jd, the dataset's joints (21 synthetic/ablation, 14 NYU, 16 ICVL, 21 MSRA).
      use_bias: add a bias (default False: a pure linear map of the vertices, like J_re of Eq. 2,
        which stays translation-equivariant when its rows sum to one).
      kernel_init: None (Glorot uniform) or a [V*3, Jd*3] array, e.g. ``kron(J_re^T, I_3)``.

    Call: ``vertices [B, V, 3]`` -> ``[B, Jd, 3]``.
    """

    def __init__(self, num_joints, use_bias=False, kernel_init=None, **kwargs):
        super().__init__(**precision.float32_layer_kwargs(kwargs))  # vertices in, joints out: geometry
        self.num_joints = int(num_joints)
        if self.num_joints < 1:
            raise ValueError(f"num_joints: expected >= 1, found {num_joints}")
        self.use_bias = bool(use_bias)
        init = "glorot_uniform" if kernel_init is None else keras.initializers.Constant(
            np.asarray(kernel_init, np.float32))
        self._kernel_shape_hint = None if kernel_init is None else tuple(np.shape(kernel_init))
        self.dense = keras.layers.Dense(self.num_joints * 3, use_bias=self.use_bias, kernel_initializer=init,
                                        name="dense", dtype=precision.FLOAT32_POLICY)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != 3 or input_shape[1] is None:
            raise ValueError(f"JointRegression: expected vertices [B, V, 3], found {input_shape}")
        flat = int(input_shape[1]) * 3
        if self._kernel_shape_hint is not None and self._kernel_shape_hint != (flat, self.num_joints * 3):
            raise ValueError(f"kernel_init: expected shape {(flat, self.num_joints * 3)}, "
                             f"found {self._kernel_shape_hint}")
        self.dense.build((input_shape[0], flat))
        self.built = True

    def call(self, vertices):
        v = vertices.shape[1]
        flat = tf.reshape(vertices, [-1, v * 3])
        return tf.reshape(self.dense(flat), [-1, self.num_joints, 3])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_joints, 3)

    def get_config(self):
        # The initial kernel is not part of the config: the trained kernel is a weight.
        return {**super().get_config(), "num_joints": self.num_joints, "use_bias": self.use_bias}


def regressor_kernel(joint_regressor):
    """``kron(J_re^T, I_3)``: the [V*3, J*3] kernel that makes ``JointRegression`` equal J_re.

    Args:
      joint_regressor: [J, V].
    Returns:
      [V*3, J*3] float32 with kernel[3v + c, 3j + c] = J_re[j, v].
    """
    jre = np.asarray(joint_regressor, np.float64)
    return np.kron(jre.T, np.eye(3)).astype(np.float32)


__all__ = ["MLPHead", "SimilarityHead", "JointRegression", "rotation_6d_to_matrix", "regressor_kernel"]
