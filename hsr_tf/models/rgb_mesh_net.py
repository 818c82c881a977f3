"""The RGB hand mesh network of Ge et al. (CVPR 2019, sections 4.1-4.2) and its baselines, Keras.

Legend: B batch, S input size (px), H heat-map size (S/4), C feature width, V vertices (1305), J joints (21),
M_l graph nodes of coarsening level l (incl. fake nodes; M_4 = 105 for our mesh, M_0 = 1680).

Input: a dict ``image`` float32 [B, S, S, 3] RGB in [0, 1], ``camera`` [B, 4] (fx, fy, cx, cy of the crop),
``root_depth`` [B] mm, ``bone_scale`` [B] mm (given at test time, section 5.1). The camera, root depth and
scale are used only to convert the (u, v, d) predictions to camera millimetres (hsr_tf.geometry.uvd); the
network itself sees the image only.

Outputs (dict): ``heatmaps`` [B, H, H, J] (last stack), ``heatmaps_all`` [B, stacks, H, H, J], ``latent``,
``joints_uvd`` [B, J, 3] (u_n, v_n normalised crop coordinates, d = (z - root_depth) / bone_scale),
``joints`` [B, J, 3] camera mm, ``joints_uv`` [B, J, 2] crop px, and for variants with a mesh ``uvd``
[B, V, 3] and ``vertices`` [B, V, 3] mm; with ``task_transfer`` also ``joints_transfer`` [B, J, 3] mm.

Variants (``variant``):
  "mesh"        ours: hourglass -> encoder -> mesh Graph CNN (Fig. 4) -> per-vertex uvd; joints by the linear
                graph-CNN pose regressor from the mesh uvd;
  "direct_lbs"  3 FC from the latent vector to the joints, mesh by IK + LBS of the template (hsr_tf.models.ik);
  "hand_model"  3 FC to beta, theta and the root's (u_n, v_n) -> HandModelLayer (our learned model in place of
                MANO), placed by the given root depth and scale;
  "baseline1"   3 FC from the latent vector to the joints, no mesh (Table 3 "Baseline 1").
``task_transfer=True`` adds supplementary C's 3-FC pose head on the (gradient-stopped) latent vector.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hsr_tf.geometry import uvd as uvd_lib
from hsr_tf.graph import load_mesh_graph
from hsr_tf.layers.graph_conv import ChebConv, FromGraphNodes, GraphMaxPool, GraphUpsample, ToGraphNodes
from hsr_tf.models.hourglass import ResidualEncoder, StackedHourglass

VARIANTS = ("mesh", "direct_lbs", "hand_model", "baseline1")
PAPER_CONFIG = dict(image_size=256, filters=256, num_stacks=2, num_residual=2, gcn_fc=512, gcn_features=(64, 32),
                    regressor_features=(32, 64), regressor_hidden=512, mlp_hidden=512)


@keras.saving.register_keras_serializable(package="hsr_tf")
class MeshGCN(keras.layers.Layer):
    """Fig. 4: FC(fc, ReLU) -> FC to ``features[0]`` per coarsest node -> 2 x (up x2, up x2, ChebConv, ChebConv).

    Widths 64 -> 64 -> 32 on level 2, then 32 -> 32 -> 3 on level 0; BN + ReLU after every ChebConv but the last.
    Call: ``latent [B, D]`` -> ``[B, V, 3]`` (u_n, v_n, d) in vertex order.
    """

    def __init__(self, fc=512, features=(64, 32), K=3, graph_path=None, **kwargs):
        super().__init__(**kwargs)
        self.fc_units, self.features, self.K, self.graph_path = int(fc), tuple(int(f) for f in features), int(K), \
            graph_path
        graph = load_mesh_graph(graph_path)
        if graph.levels != 4:
            raise ValueError(f"graph_path: expected a 4-level coarsening (Fig. 4), found {graph.levels}")
        self.coarse_nodes = graph.num_nodes(4)
        f0, f1 = self.features
        self.fc1 = keras.layers.Dense(self.fc_units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(self.coarse_nodes * f0, name="fc2")
        self.up = GraphUpsample(2, name="up")
        self.convs = [ChebConv(f0, K, level=2, graph_path=graph_path, name="cheb2a"),
                      ChebConv(f1, K, level=2, graph_path=graph_path, name="cheb2b"),
                      ChebConv(f1, K, level=0, graph_path=graph_path, name="cheb0a"),
                      ChebConv(3, K, level=0, graph_path=graph_path, name="cheb0b",
                               kernel_initializer=keras.initializers.VarianceScaling(0.01))]
        self.bns = [keras.layers.BatchNormalization(name=f"bn{i}") for i in range(3)]
        self.to_vertices = FromGraphNodes(graph_path, name="to_vertices")

    def call(self, latent, training=False):
        x = self.fc2(self.fc1(latent))
        x = keras.ops.reshape(x, (-1, self.coarse_nodes, self.features[0]))
        x = self.up(x)
        for i, conv in enumerate(self.convs):
            if i == 2:
                x = self.up(x)
            x = conv(x)
            if i < 3:
                x = keras.ops.relu(self.bns[i](x, training=training))
        return self.to_vertices(x)

    def get_config(self):
        return {**super().get_config(), "fc": self.fc_units, "features": list(self.features), "K": self.K,
                "graph_path": self.graph_path}


@keras.saving.register_keras_serializable(package="hsr_tf")
class GraphPoseRegressor(keras.layers.Layer):
    """Linear graph CNN (section 4.2): ChebConv 3->f0->f0, pool x4, f0->f1->f1, pool x4, FC(hidden), FC(J*3).

    Batch norm after every ChebConv and the hidden FC, no non-linearity (max pooling over real nodes only).
    Call: ``uvd [B, V, 3]`` -> ``[B, J, 3]`` in the same (u_n, v_n, d) representation.
    """

    def __init__(self, features=(32, 64), hidden=512, num_joints=21, K=3, graph_path=None, **kwargs):
        super().__init__(**kwargs)
        self.features, self.hidden, self.num_joints = tuple(int(f) for f in features), int(hidden), int(num_joints)
        self.K, self.graph_path = int(K), graph_path
        graph = load_mesh_graph(graph_path)
        f0, f1 = self.features
        self.to_nodes = ToGraphNodes(graph_path, name="to_nodes")
        self.convs = [ChebConv(f0, K, level=0, graph_path=graph_path, name="cheb0a"),
                      ChebConv(f0, K, level=0, graph_path=graph_path, name="cheb0b"),
                      ChebConv(f1, K, level=2, graph_path=graph_path, name="cheb2a"),
                      ChebConv(f1, K, level=2, graph_path=graph_path, name="cheb2b")]
        self.bns = [keras.layers.BatchNormalization(name=f"bn{i}") for i in range(5)]
        self.pool0 = GraphMaxPool(2, real_mask=graph.real_mask(0), name="pool0")
        self.pool2 = GraphMaxPool(2, real_mask=graph.real_mask(2), name="pool2")
        self.fc1 = keras.layers.Dense(self.hidden, name="fc1")
        self.fc2 = keras.layers.Dense(self.num_joints * 3, name="fc2")

    def call(self, uvd, training=False):
        x = self.to_nodes(uvd)
        for i, conv in enumerate(self.convs):
            x = self.bns[i](conv(x), training=training)
            if i == 1:
                x = self.pool0(x)
        x = self.pool2(x)
        x = keras.ops.reshape(x, (-1, x.shape[1] * x.shape[2]))
        x = self.bns[4](self.fc1(x), training=training)
        return keras.ops.reshape(self.fc2(x), (-1, self.num_joints, 3))

    def get_config(self):
        return {**super().get_config(), "features": list(self.features), "hidden": self.hidden,
                "num_joints": self.num_joints, "K": self.K, "graph_path": self.graph_path}


def _mlp(hidden, out, name):
    return keras.Sequential([keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(out)], name=name)


def _check_inputs(inputs, image_size):
    if not isinstance(inputs, dict):
        raise ValueError("inputs: expected a dict with image, camera, root_depth, bone_scale, found "
                         f"{type(inputs).__name__}")
    missing = [k for k in ("image", "camera", "root_depth", "bone_scale") if k not in inputs]
    if missing:
        raise ValueError(f"inputs: missing {missing}")
    shape = tuple(inputs["image"].shape)
    if len(shape) != 4 or shape[1:] != (image_size, image_size, 3):
        raise ValueError(f"inputs['image']: expected [B, {image_size}, {image_size}, 3], found {shape}")


@keras.saving.register_keras_serializable(package="hsr_tf")
class RGBMeshNet(keras.Model):
    """Ge et al.'s network (or a baseline, ``variant``); see the module docstring. Widths default to the paper's."""

    def __init__(self, variant="mesh", image_size=256, filters=256, num_stacks=2, num_residual=2, gcn_fc=512,
                 gcn_features=(64, 32), regressor_features=(32, 64), regressor_hidden=512, mlp_hidden=512,
                 task_transfer=False, num_joints=21, graph_path=None, hand_model=None, **kwargs):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, found {variant!r}")
        self.variant, self.image_size, self.filters = variant, int(image_size), int(filters)
        self.num_stacks, self.num_residual, self.gcn_fc = int(num_stacks), int(num_residual), int(gcn_fc)
        self.gcn_features = tuple(int(f) for f in gcn_features)
        self.regressor_features = tuple(int(f) for f in regressor_features)
        self.regressor_hidden, self.mlp_hidden = int(regressor_hidden), int(mlp_hidden)
        self.task_transfer, self.num_joints = bool(task_transfer), int(num_joints)
        self.graph_path, self.hand_model = graph_path, hand_model
        self.heatmap_size = self.image_size // 4
        self.hourglass = StackedHourglass(self.filters, self.num_joints, self.num_stacks, self.num_residual,
                                          name="hourglass")
        self.encoder = ResidualEncoder(self.filters, 4, self.num_residual, name="encoder")
        self.mesh_gcn = self.pose_regressor = self.joint_mlp = self.param_mlp = self.ik = self.hand_layer = None
        if variant == "mesh":
            self.mesh_gcn = MeshGCN(self.gcn_fc, self.gcn_features, graph_path=graph_path, name="mesh_gcn")
            self.pose_regressor = GraphPoseRegressor(self.regressor_features, self.regressor_hidden, self.num_joints,
                                                     graph_path=graph_path, name="pose_regressor")
        elif variant in ("direct_lbs", "baseline1"):
            self.joint_mlp = _mlp(self.mlp_hidden, self.num_joints * 3, "joint_mlp")
            if variant == "direct_lbs":
                from hsr_tf.models.ik import InverseKinematicsLBS
                self.ik = InverseKinematicsLBS(hand_model, name="ik_lbs")
        else:
            from hsr_tf.hand_model import HandModel
            from hsr_tf.hand_model.layer import HandModelLayer
            model = HandModel.load(hand_model)
            self.hand_layer = HandModelLayer(model, name="hand_model")
            self.num_betas = model.num_betas
            self.param_mlp = _mlp(self.mlp_hidden, self.num_betas + self.num_joints * 3 + 2, "param_mlp")
        self.transfer_mlp = _mlp(self.mlp_hidden, self.num_joints * 3, "transfer_mlp") if self.task_transfer else None

    # ------------------------------------------------------------------ parts by phase of the schedule
    def sub_networks(self) -> dict:
        """{name: layer} of the trainable parts: hourglass, encoder, and the variant's heads."""
        parts = {"hourglass": self.hourglass, "encoder": self.encoder}
        for name in ("mesh_gcn", "pose_regressor", "joint_mlp", "param_mlp", "transfer_mlp"):
            if getattr(self, name) is not None:
                parts[name] = getattr(self, name)
        return parts

    def example_input(self, batch_size=1) -> dict:
        s = self.image_size
        return {"image": tf.zeros([batch_size, s, s, 3]), "camera": tf.tile([[2.0 * s, 2.0 * s, s / 2, s / 2]],
                                                                             [batch_size, 1]),
                "root_depth": tf.fill([batch_size], 500.0), "bone_scale": tf.fill([batch_size], 30.0)}

    def _to_mm(self, uvd_n, inputs):
        return uvd_lib.normalized_uvd_to_camera(uvd_n, inputs["camera"], inputs["root_depth"], inputs["bone_scale"],
                                                self.image_size)

    def _to_uvd(self, xyz, inputs):
        return uvd_lib.camera_to_normalized_uvd(xyz, inputs["camera"], inputs["root_depth"], inputs["bone_scale"],
                                                self.image_size)

    def call(self, inputs, training=False):
        _check_inputs(inputs, self.image_size)
        image = tf.cast(inputs["image"], tf.float32) - 0.5
        hg = self.hourglass(image, training=training)
        latent = self.encoder(hg["features"], hg["heatmaps"], training=training)
        out = {"heatmaps": hg["heatmaps"], "heatmaps_all": hg["heatmaps_all"], "latent": latent}
        if self.variant == "mesh":
            out["uvd"] = self.mesh_gcn(latent, training=training)
            out["vertices"] = self._to_mm(out["uvd"], inputs)
            # Trained alone in phase 2 (PoseRegressorModel); inside the full network it runs with its moving
            # statistics, as a fixed linear map of the mesh.
            out["joints_uvd"] = self.pose_regressor(out["uvd"], training=False)
            out["joints"] = self._to_mm(out["joints_uvd"], inputs)
        elif self.variant in ("direct_lbs", "baseline1"):
            out["joints_uvd"] = keras.ops.reshape(self.joint_mlp(latent, training=training), (-1, self.num_joints, 3))
            out["joints"] = self._to_mm(out["joints_uvd"], inputs)
            if self.ik is not None:
                out["vertices"] = self.ik(out["joints"])["vertices"]
                out["uvd"] = self._to_uvd(out["vertices"], inputs)
        else:
            p = self.param_mlp(latent, training=training)
            s, j = self.num_betas, self.num_joints
            beta, theta = p[:, :s], keras.ops.reshape(p[:, s:s + 3 * j], (-1, j, 3))
            root_uvd = tf.concat([p[:, None, s + 3 * j:], tf.zeros_like(p[:, None, :1])], -1)  # d = 0 at the root
            root = self._to_mm(root_uvd, inputs)[:, 0]
            posed = self.hand_layer(beta, theta)
            scale = uvd_lib.bone_scale_from_joints(posed["joints"])
            for key in ("vertices", "joints"):
                rel = uvd_lib.scale_invariant_relative(posed[key], posed["joints"][:, 0], scale)
                out[key] = root[:, None] + rel * tf.reshape(tf.cast(inputs["bone_scale"], tf.float32), [-1, 1, 1])
            out["uvd"] = self._to_uvd(out["vertices"], inputs)
            out["joints_uvd"] = self._to_uvd(out["joints"], inputs)
        out["joints_uv"] = uvd_lib.denormalize_uv(out["joints_uvd"][..., :2], self.image_size)
        if self.transfer_mlp is not None:
            t = keras.ops.reshape(self.transfer_mlp(tf.stop_gradient(latent), training=training),
                                  (-1, self.num_joints, 3))
            out["joints_transfer"] = self._to_mm(t, inputs)
        return out

    def get_config(self):
        return {**super().get_config(), "variant": self.variant, "image_size": self.image_size,
                "filters": self.filters, "num_stacks": self.num_stacks, "num_residual": self.num_residual,
                "gcn_fc": self.gcn_fc, "gcn_features": list(self.gcn_features),
                "regressor_features": list(self.regressor_features), "regressor_hidden": self.regressor_hidden,
                "mlp_hidden": self.mlp_hidden, "task_transfer": self.task_transfer, "num_joints": self.num_joints,
                "graph_path": self.graph_path, "hand_model": self.hand_model}

    @property
    def faces(self) -> np.ndarray:
        return load_mesh_graph(self.graph_path).faces


@keras.saving.register_keras_serializable(package="hsr_tf")
class PoseRegressorModel(keras.Model):
    """Phase 2 of the schedule: the pose regressor alone on ground-truth meshes.

    Call: dict ``vertices`` [B, V, 3] mm, ``camera``, ``root_depth``, ``bone_scale`` -> dict ``joints_uvd``,
    ``joints`` [B, J, 3] mm. Shares ``regressor`` (a :class:`GraphPoseRegressor`) with the full network.
    """

    def __init__(self, regressor: GraphPoseRegressor, image_size: int, **kwargs):
        super().__init__(**kwargs)
        self.regressor, self.image_size = regressor, int(image_size)

    def call(self, inputs, training=False):
        args = (inputs["camera"], inputs["root_depth"], inputs["bone_scale"], self.image_size)
        uvd = uvd_lib.camera_to_normalized_uvd(inputs["vertices"], *args)
        joints_uvd = self.regressor(uvd, training=training)
        return {"joints_uvd": joints_uvd, "joints": uvd_lib.normalized_uvd_to_camera(joints_uvd, *args)}

    def get_config(self):
        raise NotImplementedError("PoseRegressorModel shares its layer with an RGBMeshNet; save the RGBMeshNet")
