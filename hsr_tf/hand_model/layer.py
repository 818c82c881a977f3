"""Keras layer evaluating the SMPL-style hand model (paper section III-B, Eqs. 1-3).

Legend: B batch, V vertices (1305), S shape parameters (10), J joints (21),
P pose-blend features (9 * (J - 1) = 180). Millimetres, neutral hand frame (docs/conventions.md, docs/hand_model.md).

  T(beta, theta) = B0 + sum_n beta_n B_n + pose_feature(R(theta)) . P            (Eq. 1)
  J0(beta)       = J_re T(beta, theta0)                                          (Eq. 2)
  V_i            = sum_b w_ib G_b(theta, J0) G_b(theta0, J0)^-1 T_i(beta, theta)  (Eq. 3)

``pose_feature`` is (R_j(theta) - I) of the 20 non-root joints (theta0 = 0 so R_j(theta0) = I); the
root rotation (global orientation) never deforms the shape. The kinematic chain is processed one tree
depth level at a time (5 levels for the hand) with batched gathers and matmuls.

Serialization: the model arrays are the layer's non-trainable weights, so ``.keras`` files and
SavedModels carry them. ``get_config`` stores only sizes, ``parents``, ``faces`` and ``source``:
``"packaged"`` when the layer was built from the packaged asset (``from_config`` reloads it), else
``"weights"`` (``from_config`` builds placeholders that the saved weights must fill; calling the
layer before they are loaded raises instead of silently returning zeros).
"""
import os

import keras
import numpy as np
import tensorflow as tf

from hsr_tf.geometry.rotations import axis_angle_to_matrix, pose_feature
from hsr_tf.hand_model.model import HandModel, default_asset_path

_VARIABLES = ("mean_shape", "shape_basis", "pose_basis", "joint_regressor", "skinning_weights")


class ChainPlan:
    """Static plan for posing a kinematic tree one depth level at a time.

    Args:
      parents: [J] parent index per joint, -1 for the root; parents precede children.
    """

    def __init__(self, parents):
        self.parents = np.asarray(parents, dtype=np.int32)
        j = len(self.parents)
        depth = np.zeros(j, dtype=np.int64)
        for k in range(1, j):
            depth[k] = depth[self.parents[k]] + 1
        self.levels = [np.flatnonzero(depth == d).astype(np.int32) for d in range(depth.max() + 1)]
        self.inverse_order = np.argsort(np.concatenate(self.levels)).astype(np.int32)
        self.parent_slot = []  # for each level >= 1: index of each joint's parent inside the previous level
        for d in range(1, len(self.levels)):
            prev = {int(jj): i for i, jj in enumerate(self.levels[d - 1])}
            self.parent_slot.append(np.array([prev[int(self.parents[jj])] for jj in self.levels[d]], np.int32))

    def forward_kinematics(self, rot, rest_joints):
        """Global rotations [B, J, 3, 3] and posed joints [B, J, 3].

        Args:
          rot: [B, J, 3, 3] local rotations; rest_joints: [B, J, 3] mm.
        """
        root = self.levels[0]
        level_rot = tf.gather(rot, root, axis=1)
        level_pos = tf.gather(rest_joints, root, axis=1)
        rots, poss = [level_rot], [level_pos]
        for d in range(1, len(self.levels)):
            idx = self.levels[d]
            slot = self.parent_slot[d - 1]
            parent_rot = tf.gather(level_rot, slot, axis=1)
            parent_pos = tf.gather(level_pos, slot, axis=1)
            offset = tf.gather(rest_joints, idx, axis=1) - tf.gather(rest_joints, self.parents[idx], axis=1)
            level_pos = parent_pos + tf.reduce_sum(parent_rot * offset[:, :, None, :], axis=-1)
            level_rot = tf.matmul(parent_rot, tf.gather(rot, idx, axis=1))
            rots.append(level_rot)
            poss.append(level_pos)
        global_rot = tf.gather(tf.concat(rots, axis=1), self.inverse_order, axis=1)
        posed = tf.gather(tf.concat(poss, axis=1), self.inverse_order, axis=1)
        return global_rot, posed


def pose_and_skin(plan, rest, rest_joints, theta, pose_basis, skinning_weights):
    """Pose blend (Eq. 1 pose term) and linear blend skinning (Eq. 3).

    Args:
      plan: :class:`ChainPlan` of the skeleton.
      rest: [B, V, 3] shaped template T(beta, theta0), mm.
      rest_joints: [B, J, 3] J0, mm.
      theta: [B, J, 3] axis-angle, radians.
      pose_basis: [P, V * 3] pose blend shapes (P = 9 (J - 1)), mm.
      skinning_weights: [V, J].
    Returns:
      (vertices [B, V, 3], joints [B, J, 3]) float32 mm.
    """
    num_vertices = rest.shape[1] if rest.shape[1] is not None else tf.shape(rest)[1]
    num_joints = len(plan.parents)
    rot = axis_angle_to_matrix(theta)  # [B, J, 3, 3]
    global_rot, posed_joints = plan.forward_kinematics(rot, rest_joints)
    # G_b(theta) G_b(theta0)^-1: x -> R_b (x - J0_b) + J_b, i.e. [R_b | J_b - R_b J0_b].
    trans = posed_joints - tf.reduce_sum(global_rot * rest_joints[:, :, None, :], axis=-1)
    # The per-vertex work runs vertex-major ([V, 3, B]) so that the pose blend and the skinning are
    # single large 2-D matmuls (batched matmuls with J = 21 inner dims, and slices/transposes of
    # [B, V, 12] tensors, dominated the CPU profile of the batch-major version).
    feat = pose_feature(rot)  # [B, P]
    offsets = tf.matmul(pose_basis, feat, transpose_a=True, transpose_b=True)  # [V*3, B]
    blended = tf.transpose(rest, [1, 2, 0]) + tf.reshape(offsets, [num_vertices, 3, -1])  # [V, 3, B]
    rot_t = tf.reshape(tf.transpose(global_rot, [1, 2, 3, 0]), [num_joints, -1])  # [J, 9 B]
    trans_t = tf.reshape(tf.transpose(trans, [1, 2, 0]), [num_joints, -1])  # [J, 3 B]
    vert_rot = tf.reshape(tf.matmul(skinning_weights, rot_t), [num_vertices, 3, 3, -1])  # [V, 3, 3, B]
    vert_trans = tf.reshape(tf.matmul(skinning_weights, trans_t), [num_vertices, 3, -1])  # [V, 3, B]
    vertices = tf.reduce_sum(vert_rot * blended[:, None, :, :], axis=2) + vert_trans  # [V, 3, B]
    vertices = tf.transpose(vertices, [2, 0, 1])
    return vertices, posed_joints


@keras.saving.register_keras_serializable(package="hsr_tf")
class HandModelLayer(keras.layers.Layer):
    """SMPL-style hand model layer.

    Args:
      model: a :class:`HandModel`, a path to a model .npz, or None for the packaged default.
      model_spec: internal (used by ``from_config``); do not pass together with ``model``.

    Call:
      beta: [B, S] shape parameters; theta: [B, J, 3] axis-angle per joint relative to its parent
      (``theta[:, 0]`` = global orientation about joint 0), radians.
    Returns:
      dict with ``vertices`` [B, V, 3], ``joints`` [B, J, 3] and ``rest_vertices`` [B, V, 3]
      (= T(beta, theta0), no pose blend), float32 mm.
    """

    def __init__(self, model=None, model_spec=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if model is not None and model_spec is not None:
            raise ValueError("model/model_spec: expected at most one of them, found both")
        self._awaiting_weights = False
        if model_spec is not None:
            spec = dict(model_spec)
            if spec.get("source") == "packaged":
                model = HandModel.load()
            else:
                self._awaiting_weights = True
                model = None
        else:
            if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
                model = HandModel.load(model)
            if not isinstance(model, HandModel):
                raise ValueError(f"model: expected a HandModel, a path or None, found {type(model).__name__}")
            spec = {
                "num_vertices": model.num_vertices,
                "num_betas": model.num_betas,
                "num_joints": model.num_joints,
                "parents": model.parents.tolist(),
                "faces": model.faces.tolist(),
                "source": "packaged" if (model.source is not None and _same_file(model.source, default_asset_path()))
                else "weights",
            }
        self._spec = spec
        v, s, j = int(spec["num_vertices"]), int(spec["num_betas"]), int(spec["num_joints"])
        self.num_vertices, self.num_betas, self.num_joints = v, s, j
        self.parents = np.asarray(spec["parents"], dtype=np.int32)
        self.faces = np.asarray(spec["faces"], dtype=np.int32).reshape(-1, 3)
        if self.parents.shape != (j,):
            raise ValueError(f"model_spec.parents: expected {j} entries, found {self.parents.shape}")
        shapes = {
            "mean_shape": (v, 3),
            "shape_basis": (s, v * 3),
            "pose_basis": (9 * (j - 1), v * 3),
            "joint_regressor": (j, v),
            "skinning_weights": (v, j),
        }
        for name, shape in shapes.items():
            var = self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False, dtype="float32")
            if model is not None:
                var.assign(np.asarray(getattr(model, name), np.float32).reshape(shape))
            setattr(self, "_" + name, var)
        self._plan = ChainPlan(self.parents)  # joints of equal depth are posed together
        self.built = True

    @property
    def mean_shape(self):
        """[V, 3] NumPy float32 B0 (mm), the current value of the layer's weight."""
        return keras.ops.convert_to_numpy(self._mean_shape)

    @property
    def joint_regressor(self):
        """[J, V] NumPy float32 J_re (rows sum to 1), the current value of the layer's weight."""
        return keras.ops.convert_to_numpy(self._joint_regressor)

    # ------------------------------------------------------------ weights loading
    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._awaiting_weights = False

    # ------------------------------------------------------------ checks
    def _check_inputs(self, beta, theta):
        if beta.shape.rank != 2 or beta.shape[1] != self.num_betas:
            raise ValueError(f"beta: expected shape [B, {self.num_betas}], found {beta.shape}")
        if theta.shape.rank != 3 or tuple(theta.shape[1:]) != (self.num_joints, 3):
            raise ValueError(f"theta: expected shape [B, {self.num_joints}, 3], found {theta.shape}")
        if beta.shape[0] is not None and theta.shape[0] is not None and beta.shape[0] != theta.shape[0]:
            raise ValueError(f"beta/theta: expected the same batch size, found {beta.shape[0]} and {theta.shape[0]}")

    # ------------------------------------------------------------ forward
    def call(self, beta, theta):
        if self._awaiting_weights:
            raise ValueError("HandModelLayer: built from a config with source='weights' but its weights were "
                             "never loaded; load the .keras file/weights or pass a HandModel")
        beta = tf.convert_to_tensor(beta)
        theta = tf.convert_to_tensor(theta)
        self._check_inputs(beta, theta)
        beta = tf.cast(beta, tf.float32)
        theta = tf.cast(theta, tf.float32)
        v = self.num_vertices
        mean_shape = tf.convert_to_tensor(self._mean_shape)
        shape_basis = tf.convert_to_tensor(self._shape_basis)
        regressor = tf.convert_to_tensor(self._joint_regressor)

        # Eq. 1 without the pose term, and Eq. 2 (J_re is linear: regress the mean and basis once).
        rest = mean_shape[None] + tf.reshape(tf.matmul(beta, shape_basis), [-1, v, 3])
        joints_mean = tf.matmul(regressor, mean_shape)  # [J, 3]
        joints_basis = tf.einsum("jv,svc->sjc", regressor, tf.reshape(shape_basis, [-1, v, 3]))
        rest_joints = joints_mean[None] + tf.einsum("bs,sjc->bjc", beta, joints_basis)  # [B, J, 3]

        vertices, joints = pose_and_skin(self._plan, rest, rest_joints, theta,
                                         tf.convert_to_tensor(self._pose_basis),
                                         tf.convert_to_tensor(self._skinning_weights))
        return {"vertices": vertices, "joints": joints, "rest_vertices": rest}

    def compute_output_spec(self, beta, theta):
        batch = beta.shape[0]
        v = self.num_vertices
        return {
            "vertices": keras.KerasTensor((batch, v, 3), dtype="float32"),
            "joints": keras.KerasTensor((batch, self.num_joints, 3), dtype="float32"),
            "rest_vertices": keras.KerasTensor((batch, v, 3), dtype="float32"),
        }

    # ------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config["model_spec"] = dict(self._spec)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(model_spec=config.pop("model_spec"), **config)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
