"""HandShapeNet: the depth hand-shape network of Deng et al. (section III, Fig. 3).

Stage k (k = 1, 2) on points P_k [B,N,3] in frame F_k:

    shape network (PointNet++ SA(512, r1, 64) -> SA(128, r2, 64) -> global -> 1024-d; three
    parallel two-layer MLP heads) -> theta [B,21,3], beta [B,S], J_input [B,21,3] (in F_k)
    hand model layer (beta, theta) -> V_h [B,V,3], J_h [B,21,3], T(beta, theta0)   (hand frame, mm)
    {s, R, t}: similarity Procrustes taking J_h onto J_input (``transform='procrustes'``, default)
               or regressed from the global feature (``transform='regress'``)
    V = s R V_h + t,  J = s R J_h + t                                               (in F_k)

F_1 is the (normalised) input frame. For stage 2 the palm frame (R_p, o_p) of the stage-1 joints
J (wrist + five finger roots, ``hsr_tf.hand_model.palm_frame``) derotates the input:
P_2 = R_p^T (P - o_p); stage-2 results are mapped back with p -> R_p p + o_p. The scale ``s``
absorbs the hand-frame mm -> normalised-unit conversion (about 1/150 for the reader's fixed
150 mm scale).

Joint regression network: ``JointRegression`` (one Dense, no activation) from the final vertices
[B, V*3] to the dataset's joints [B, Jd, 3].

Every output is in the normalised input frame (the frame of ``points``) unless said otherwise:

    vertices [B,V,3], joints [B,21,3], joints_input [B,21,3], rest_vertices [B,V,3] (hand frame mm),
    beta [B,S], theta [B,21,3], scale [B], rotation [B,3,3], translation [B,3] (hand frame ->
    input frame: x_in = scale * rotation @ x_hand + translation), dataset_joints [B,Jd,3]
    (= regression_joints with joint regression, else = joints), regression_joints [B,Jd,3]
    (only with joint regression), and per stage ``stage{k}_<name>`` for vertices, joints,
    joints_input, rest_vertices, beta, theta, scale, rotation, translation; with two stages also
    palm_rotation [B,3,3], palm_origin [B,3] and stage2_points [B,N,3] (the derotated input).

Legend: B batch, N input points, V vertices (1305), S shape parameters (10), J model joints (21),
Jd dataset joints.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from hsr_tf import precision
from hsr_tf.geometry.procrustes import apply_similarity, similarity_procrustes
from hsr_tf.hand_model.layer import HandModelLayer
from hsr_tf.hand_model.palm_frame import METHODS as PALM_METHODS
from hsr_tf.hand_model.palm_frame import from_palm_frame, palm_frame, to_palm_frame
from hsr_tf.layers.heads import JointRegression, MLPHead, SimilarityHead, regressor_kernel
from hsr_tf.layers.set_abstraction import GlobalSetAbstraction, SetAbstraction

TRANSFORMS = ("procrustes", "regress")
STAGE2_CENTERS = ("palm", "origin")
#: outputs that are point sets in the normalised input frame (converted by ``outputs_to_camera_mm``).
POINT_OUTPUTS = ("vertices", "joints", "joints_input", "dataset_joints", "regression_joints",
                 "stage1_vertices", "stage1_joints", "stage1_joints_input",
                 "stage2_vertices", "stage2_joints", "stage2_joints_input")

#: Defaults of the shape network (both stages); radii in normalised units (150 mm per unit).
SHAPE_NETWORK_DEFAULTS = dict(
    sa1_npoint=512, sa1_radius=0.1, sa1_nsample=64, sa1_mlp=(64, 64, 128),
    sa2_npoint=128, sa2_radius=0.2, sa2_nsample=64, sa2_mlp=(128, 128, 256),
    global_mlp=(256, 512, 1024), head_hidden=512, head_batch_norm=True, head_dropout=0.0,
    sampling="fps", grouping="ball", normalize_by_radius=False,
    theta_init_scale=0.1, beta_init_scale=0.1, joints_init_scale=1.0,
)


@keras.saving.register_keras_serializable(package="hsr_tf")
class ShapeNetwork(keras.layers.Layer):
    """PointNet++ shape network of one stage (Fig. 3b).

    Args:
      num_joints: J (21). num_betas: S.
      transform: 'procrustes' (heads theta, beta, J_input) or 'regress' (adds a ``SimilarityHead``).
      transform_scale_init: initial s of the regressed transform (input units per mm).
      sa1_*, sa2_*: the two set-abstraction levels (npoint, radius, nsample, mlp);
      global_mlp: the global level (last width = feature size, 1024);
      head_hidden, head_batch_norm, head_dropout: the two-layer MLP heads;
      sampling, grouping, normalize_by_radius: passed to ``SetAbstraction``;
      theta_init_scale, beta_init_scale, joints_init_scale: ``MLPHead.final_init_scale`` of each head.

    Call: ``points [B, N, 3]`` -> dict ``feature [B, F]``, ``theta [B, J, 3]``, ``beta [B, S]``,
    ``joints_input [B, J, 3]`` and, for 'regress', ``scale [B]``, ``rotation [B,3,3]``, ``translation [B,3]``.
    """

    def __init__(self, num_joints=21, num_betas=10, transform="procrustes", transform_scale_init=1.0 / 150.0,
                 **kwargs):
        cfg = dict(SHAPE_NETWORK_DEFAULTS)
        for key in list(kwargs):
            if key in cfg:
                cfg[key] = kwargs.pop(key)
        # float32 container: the set-abstraction levels run float32 ops; only their MLPs and the heads'
        # hidden layers follow a mixed policy (hsr_tf.precision).
        super().__init__(**precision.float32_layer_kwargs(kwargs))
        if transform not in TRANSFORMS:
            raise ValueError(f"transform: expected one of {TRANSFORMS}, found {transform!r}")
        self.num_joints, self.num_betas = int(num_joints), int(num_betas)
        self.transform = transform
        self.transform_scale_init = float(transform_scale_init)
        for key in ("sa1_mlp", "sa2_mlp", "global_mlp"):
            cfg[key] = [int(c) for c in cfg[key]]
        self.cfg = cfg
        sa_kw = dict(sampling=cfg["sampling"], grouping=cfg["grouping"],
                     normalize_by_radius=cfg["normalize_by_radius"])
        self.sa1 = SetAbstraction(int(cfg["sa1_npoint"]), float(cfg["sa1_radius"]), int(cfg["sa1_nsample"]),
                                  cfg["sa1_mlp"], name="sa1", **sa_kw)
        self.sa2 = SetAbstraction(int(cfg["sa2_npoint"]), float(cfg["sa2_radius"]), int(cfg["sa2_nsample"]),
                                  cfg["sa2_mlp"], name="sa2", **sa_kw)
        self.sa_global = GlobalSetAbstraction(cfg["global_mlp"], name="sa_global")
        head_kw = dict(batch_norm=cfg["head_batch_norm"], dropout=cfg["head_dropout"])
        hidden = int(cfg["head_hidden"])
        self.theta_head = MLPHead(hidden, (self.num_joints, 3), final_init_scale=cfg["theta_init_scale"],
                                  name="theta_head", **head_kw)
        self.beta_head = MLPHead(hidden, (self.num_betas,), final_init_scale=cfg["beta_init_scale"],
                                 name="beta_head", **head_kw)
        self.joints_head = MLPHead(hidden, (self.num_joints, 3), final_init_scale=cfg["joints_init_scale"],
                                   name="joints_head", **head_kw)
        self.transform_head = None
        if transform == "regress":
            self.transform_head = SimilarityHead(hidden, self.transform_scale_init,
                                                 batch_norm=cfg["head_batch_norm"], name="transform_head")
        self.supports_jit = self.sa1.supports_jit

    def call(self, points, training=None):
        points = tf.convert_to_tensor(points, tf.float32)
        if points.shape.rank != 3 or points.shape[-1] != 3:
            raise ValueError(f"points: expected shape [B, N, 3], found {points.shape}")
        xyz1, f1 = self.sa1(points, None, training=training)
        xyz2, f2 = self.sa2(xyz1, f1, training=training)
        feature = self.sa_global(xyz2, f2, training=training)
        out = {
            "feature": feature,
            "theta": self.theta_head(feature, training=training),
            "beta": self.beta_head(feature, training=training),
            "joints_input": self.joints_head(feature, training=training),
        }
        if self.transform_head is not None:
            out["scale"], out["rotation"], out["translation"] = self.transform_head(feature, training=training)
        return out

    def get_config(self):
        cfg = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.cfg.items()}
        return {**super().get_config(), **cfg, "num_joints": self.num_joints, "num_betas": self.num_betas,
                "transform": self.transform, "transform_scale_init": self.transform_scale_init}


@keras.saving.register_keras_serializable(package="hsr_tf")
class HandShapeNet(keras.Model):
    """The full depth network: shape stage 1 [+ stage 2] [+ joint regression].

    Args:
      hand_model: a ``HandModel``, a path to a model .npz, None (the packaged asset) or a
        ``HandModelLayer`` (used as is).
      num_stages: 1 or 2.
      use_joint_regression: add the joint regression network.
      num_dataset_joints: Jd, its output joints (21 synthetic/ablation, 14 NYU, 16 ICVL, 21 MSRA).
      joint_regression_bias: bias in the joint regression layer (default False, see notes).
      joint_regression_init: 'auto' ('regressor' when Jd equals the model's joints, else 'glorot'),
        'regressor' (kron(J_re^T, I3): starts equal to the hand model's joint regressor) or 'glorot'.
      transform: 'procrustes' (default) or 'regress' (see module docstring).
      transform_scale_init: initial s for 'regress' (normalised units per mm; 1/150).
      predict_root_rotation: if False (default) theta[:, 0] is fixed to 0 and the global orientation
        comes only from R (the two are redundant); if True the theta head's root row is used.
      palm_method: 'template' (default; rotation taking the hand model's neutral palm joints onto the
        stage-1 palm joints) or 'axes' (wrist->MCP / pinky->index axes), see ``palm_frame``.
      stage2_center: 'palm' (default; stage 2 sees points centred on the stage-1 palm centroid) or
        'origin' (rotation about the input origin only).
      palm_frame_gradient: let gradients flow through the palm frame into stage 1 (default False:
        the palm frame is treated as a data normalisation).
      shape_network: dict of ``ShapeNetwork`` keyword overrides (same for both stages), see
        ``SHAPE_NETWORK_DEFAULTS``.

    Call: ``points [B, N, 3]`` (normalised input frame), ``training`` -> dict (module docstring).
    """

    def __init__(self, hand_model=None, num_stages=2, use_joint_regression=True, num_dataset_joints=21,
                 joint_regression_bias=False, joint_regression_init="auto", transform="procrustes",
                 transform_scale_init=1.0 / 150.0, predict_root_rotation=False, palm_method="template",
                 stage2_center="palm", palm_frame_gradient=False, shape_network=None, **kwargs):
        # Geometry (hand model, Procrustes, palm frame) is float32 under any policy (hsr_tf.precision).
        super().__init__(**precision.float32_layer_kwargs(kwargs))
        if num_stages not in (1, 2):
            raise ValueError(f"num_stages: expected 1 or 2, found {num_stages!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform: expected one of {TRANSFORMS}, found {transform!r}")
        if palm_method not in PALM_METHODS:
            raise ValueError(f"palm_method: expected one of {PALM_METHODS}, found {palm_method!r}")
        if stage2_center not in STAGE2_CENTERS:
            raise ValueError(f"stage2_center: expected one of {STAGE2_CENTERS}, found {stage2_center!r}")
        if joint_regression_init not in ("auto", "regressor", "glorot"):
            raise ValueError("joint_regression_init: expected 'auto', 'regressor' or 'glorot', "
                             f"found {joint_regression_init!r}")
        if isinstance(hand_model, dict):  # serialized HandModelLayer (from_config)
            hand_model = keras.saving.deserialize_keras_object(hand_model)
        if isinstance(hand_model, HandModelLayer):
            self.hand_model_layer = hand_model
        else:
            self.hand_model_layer = HandModelLayer(hand_model, name="hand_model", dtype=precision.FLOAT32_POLICY)
        hm = self.hand_model_layer
        self.num_stages = int(num_stages)
        self.use_joint_regression = bool(use_joint_regression)
        self.num_dataset_joints = int(num_dataset_joints)
        self.joint_regression_bias = bool(joint_regression_bias)
        self.joint_regression_init = joint_regression_init
        self.transform = transform
        self.transform_scale_init = float(transform_scale_init)
        self.predict_root_rotation = bool(predict_root_rotation)
        self.palm_method = palm_method
        self.stage2_center = stage2_center
        self.palm_frame_gradient = bool(palm_frame_gradient)
        self.shape_network_config = {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in dict(shape_network or {}).items()}
        unknown = set(self.shape_network_config) - set(SHAPE_NETWORK_DEFAULTS)
        if unknown:
            raise ValueError(f"shape_network: unknown keys {sorted(unknown)}; expected some of "
                             f"{sorted(SHAPE_NETWORK_DEFAULTS)}")
        net_kw = dict(num_joints=hm.num_joints, num_betas=hm.num_betas, transform=transform,
                      transform_scale_init=self.transform_scale_init, **self.shape_network_config)
        self.stage_networks = [ShapeNetwork(name=f"shape_network{k + 1}", **net_kw) for k in range(self.num_stages)]
        self.joint_regression = None
        if self.use_joint_regression:
            init = joint_regression_init
            if init == "auto":
                init = "regressor" if self.num_dataset_joints == hm.num_joints else "glorot"
            if init == "regressor":
                if self.num_dataset_joints != hm.num_joints:
                    raise ValueError(f"joint_regression_init='regressor': expected num_dataset_joints = "
                                     f"{hm.num_joints}, found {self.num_dataset_joints}")
                kernel = regressor_kernel(hm.joint_regressor)
            else:
                kernel = None
            self.joint_regression = JointRegression(self.num_dataset_joints, use_bias=self.joint_regression_bias,
                                                    kernel_init=kernel, name="joint_regression")
        elif self.num_dataset_joints != hm.num_joints:
            raise ValueError(f"num_dataset_joints: without joint regression the dataset joints are the model's "
                             f"{hm.num_joints} joints, found num_dataset_joints={self.num_dataset_joints}")
        self.supports_jit = self.stage_networks[0].supports_jit
        self._num_points_seen = None

    # ------------------------------------------------------------ helpers
    def template_joints(self):
        """[J, 3] joints of the mean shape at the neutral pose (hand frame, mm)."""
        hm = self.hand_model_layer
        out = hm(tf.zeros([1, hm.num_betas]), tf.zeros([1, hm.num_joints, 3]))
        return out["joints"][0]

    def mean_shape(self):
        """[V, 3] NumPy B0 of the hand model (mm), for ``HandShapeLoss``."""
        return self.hand_model_layer.mean_shape

    @property
    def faces(self):
        """[F, 3] int32 triangles of the hand mesh."""
        return self.hand_model_layer.faces

    def _stage(self, net, points, training):
        head = net(points, training=training)
        theta = head["theta"]
        if not self.predict_root_rotation:
            theta = tf.concat([tf.zeros_like(theta[:, :1]), theta[:, 1:]], axis=1)
        hm = self.hand_model_layer(head["beta"], theta)
        if self.transform == "procrustes":
            s, rot, t = similarity_procrustes(hm["joints"], head["joints_input"])
        else:
            s, rot, t = head["scale"], head["rotation"], head["translation"]
        return {
            "vertices": apply_similarity(hm["vertices"], s, rot, t),
            "joints": apply_similarity(hm["joints"], s, rot, t),
            "joints_input": head["joints_input"],
            "rest_vertices": hm["rest_vertices"],
            "beta": head["beta"],
            "theta": theta,
            "scale": s,
            "rotation": rot,
            "translation": t,
        }

    # ------------------------------------------------------------ forward
    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[-1] != 3 or shape[1] is None:
            raise ValueError(f"points: expected shape [B, N, 3] with known N, found {shape}")
        # Build the sub-layers without running the hand model layer (which, restored from a config,
        # refuses to run before its weights are loaded).
        zeros = tf.zeros((1, shape[1], 3), tf.float32)
        for net in self.stage_networks:
            net(zeros, training=False)
        if self.joint_regression is not None:
            self.joint_regression.build((None, self.hand_model_layer.num_vertices, 3))
        if not self._num_points_seen:
            self._num_points_seen = int(shape[1])
        self.built = True

    def get_build_config(self):
        # N of the first call; the weights do not depend on it, but SA levels need N >= npoint.
        return {"input_shape": [None, self._num_points_seen, 3]} if self._num_points_seen else None

    def build_from_config(self, config):
        if config and config.get("input_shape"):
            self.build(config["input_shape"])

    def call(self, points, training=None):
        points = tf.convert_to_tensor(points, tf.float32)
        if points.shape.rank != 3 or points.shape[-1] != 3:
            raise ValueError(f"points: expected shape [B, N, 3], found {points.shape}")
        if points.shape[1] is not None and not self._num_points_seen:
            self._num_points_seen = int(points.shape[1])
        outputs = {}
        st = self._stage(self.stage_networks[0], points, training)
        for key, val in st.items():
            outputs[f"stage1_{key}"] = val
        if self.num_stages == 2:
            template = self.template_joints() if self.palm_method == "template" else None
            rot_p, origin = palm_frame(st["joints"], template, method=self.palm_method)
            if self.stage2_center == "origin":
                origin = tf.zeros_like(origin)
            if not self.palm_frame_gradient:
                rot_p, origin = tf.stop_gradient(rot_p), tf.stop_gradient(origin)
            points2 = to_palm_frame(points, rot_p, origin)
            st2 = self._stage(self.stage_networks[1], points2, training)
            st = dict(st2)
            for key in ("vertices", "joints", "joints_input"):
                st[key] = from_palm_frame(st2[key], rot_p, origin)
            st["rotation"] = tf.matmul(rot_p, st2["rotation"])
            st["translation"] = tf.einsum("bij,bj->bi", rot_p, st2["translation"]) + origin
            for key, val in st.items():
                outputs[f"stage2_{key}"] = val
            outputs["palm_rotation"] = rot_p
            outputs["palm_origin"] = origin
            outputs["stage2_points"] = points2
        outputs.update(st)
        if self.joint_regression is not None:
            outputs["regression_joints"] = self.joint_regression(st["vertices"])
            outputs["dataset_joints"] = outputs["regression_joints"]
        else:
            outputs["dataset_joints"] = st["joints"]
        return outputs

    # ------------------------------------------------------------ config
    def get_config(self):
        return {
            "name": self.name,
            "hand_model": keras.saving.serialize_keras_object(self.hand_model_layer),
            "num_stages": self.num_stages,
            "use_joint_regression": self.use_joint_regression,
            "num_dataset_joints": self.num_dataset_joints,
            "joint_regression_bias": self.joint_regression_bias,
            "joint_regression_init": self.joint_regression_init,
            "transform": self.transform,
            "transform_scale_init": self.transform_scale_init,
            "predict_root_rotation": self.predict_root_rotation,
            "palm_method": self.palm_method,
            "stage2_center": self.stage2_center,
            "palm_frame_gradient": self.palm_frame_gradient,
            "shape_network": dict(self.shape_network_config),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def outputs_to_camera_mm(outputs, batch=None, keys=POINT_OUTPUTS, undo_augmentation=True, center=None, scale=None,
                         rotation=None):
    """Converts the point-valued outputs (normalised input frame) to camera-frame millimetres.

    Either pass the reader ``batch`` of the same frames (uses ``hsr_tf.data.reader.to_camera_mm``: undoes the
    augmentation when ``undo_augmentation``, then the normalisation), or ``center`` [B, 3] mm and ``scale`` [B]
    mm (and optionally ``rotation`` [B, 3, 3]) of an un-augmented normalisation: ``x_mm = scale x R^T + center``.

    Args:
      outputs: dict from ``HandShapeNet``.
      batch: reader batch (center, scale, rotation, aug_matrix, aug_shift) or None.
      keys: which outputs to convert (those absent are skipped).
      undo_augmentation: with ``batch``: also undo its augmentation (False: the augmented virtual sample).
      center, scale, rotation: used when ``batch`` is None.
    Returns:
      dict key -> [B, M, 3] float32 mm.
    """
    from hsr_tf.data.reader import to_camera_mm

    if batch is None:
        if center is None or scale is None:
            raise ValueError("outputs_to_camera_mm: expected a reader batch or center and scale, found neither")
        center = tf.convert_to_tensor(center, tf.float32)
        scale = tf.reshape(tf.convert_to_tensor(scale, tf.float32), [-1])
        if center.shape.rank != 2 or center.shape[-1] != 3:
            raise ValueError(f"center: expected shape [B, 3], found {center.shape}")
        if rotation is None:
            rotation = tf.eye(3, batch_shape=tf.shape(center)[:1])
        batch = {"center": center, "scale": scale, "rotation": tf.convert_to_tensor(rotation, tf.float32)}
        undo_augmentation = False
    return {k: to_camera_mm(outputs[k], batch, undo_augmentation=undo_augmentation)
            for k in keys if k in outputs}


__all__ = ["HandShapeNet", "ShapeNetwork", "outputs_to_camera_mm", "SHAPE_NETWORK_DEFAULTS"]
