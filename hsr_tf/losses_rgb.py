"""Losses of the RGB mesh network (Ge et al. section 4.3): heat-map, mesh (vertex, normal, edge, Laplacian), pose.

Legend: B batch, H heat-map size, J joints, V vertices, F triangles, E edges, T stacks.

Units and normalisation (the paper prints sums and no units; we keep its sums, so its relative weights hold):
- 3D terms are computed on coordinates divided by the frame's ``scale`` [B] (``bone_scale``, the middle MCP->PIP
  length, mm) -- the scale-invariant space the network predicts; pass ``scale=None`` for plain units (e.g. mm).
- every mesh term is the paper's sum (over vertices, edges, or triangle edges) divided by V, a constant, so that
  its magnitude is "per vertex" while the ratios between terms (lambda_v : lambda_n : lambda_e : lambda_l =
  1 : 1 : 1 : 50) stay the paper's; the pose term is its sum over joints divided by J;
- the 2D vertex term uses normalised crop coordinates u_n = 2 (u + 0.5) / S - 1 (hsr_tf.geometry.uvd);
- the heat-map loss is the sum over joints of the per-pixel mean squared error, summed over stacks;
- frame ``weights`` [B] (e.g. ``has_vertices``) give a weighted mean over the batch (0 when all weights are 0).
Edge and Laplacian losses take a reference mesh, ground truth or the pseudo-ground truth of weak supervision.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from hsr_tf.graph import mesh_edges


def _frame_mean(per_frame, weights):
    if weights is None:
        return tf.reduce_mean(per_frame)
    w = tf.cast(tf.reshape(weights, [-1]), per_frame.dtype)
    return tf.reduce_sum(per_frame * w) / tf.maximum(tf.reduce_sum(w), 1e-12)


def _scaled(x, scale):
    x = tf.cast(x, tf.float32)
    if scale is None:
        return x
    return x / tf.reshape(tf.cast(scale, tf.float32), [-1] + [1] * (x.shape.rank - 1))


def _check(name, x, rank, last=None):
    if x.shape.rank != rank or (last is not None and x.shape[-1] != last):
        raise ValueError(f"{name}: expected rank {rank}" + (f" with last dimension {last}" if last else "")
                         + f", found {x.shape}")


@functools.lru_cache(maxsize=8)
def _topology(faces_bytes: bytes, num_faces: int):
    faces = np.frombuffer(faces_bytes, np.int64).reshape(num_faces, 3)
    edges = mesh_edges(faces)
    v = int(faces.max()) + 1
    deg = np.bincount(edges.ravel(), minlength=v).astype(np.float64)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    order = np.lexsort((cols, rows))
    vals = (1.0 / deg[rows])[order]
    return faces, edges, np.stack([rows[order], cols[order]], 1), vals.astype(np.float32), v


def topology(faces):
    """(faces int64 [F, 3], edges [E, 2], neighbour-mean sparse indices [2E, 2], values [2E] = 1/B_i, V)."""
    faces = np.ascontiguousarray(np.asarray(faces, np.int64))
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected [F, 3], found {faces.shape}")
    return _topology(faces.tobytes(), faces.shape[0])


def heatmap_loss(pred, gt, weights=None):
    """pred [B, H, H, J] or [B, T, H, H, J] (every stack supervised), gt [B, H, H, J] -> scalar."""
    pred = tf.convert_to_tensor(pred, tf.float32)
    gt = tf.convert_to_tensor(gt, tf.float32)
    _check("gt", gt, 4)
    if pred.shape.rank == 4:
        pred = pred[:, None]
    _check("pred", pred, 5)
    if pred.shape[2:] != gt.shape[1:]:
        raise ValueError(f"pred: expected heat-maps of shape {gt.shape[1:]} like gt, found {pred.shape[2:]}")
    per_frame = tf.reduce_sum(tf.reduce_mean(tf.square(pred - gt[:, None]), axis=[2, 3]), axis=[1, 2])
    return _frame_mean(per_frame, weights)


def vertex_loss(pred_xyz, gt_xyz, pred_uv=None, gt_uv=None, scale=None, weights=None):
    """Eq. (2) / V: mean over vertices of ||v3D - v^3D||^2 (/scale^2) + ||v2D - v^2D||^2. [B, V, 3], [B, V, 2]."""
    p, g = _scaled(pred_xyz, scale), _scaled(gt_xyz, scale)
    _check("pred_xyz", p, 3, 3)
    per_frame = tf.reduce_mean(tf.reduce_sum(tf.square(p - g), -1), -1)
    if pred_uv is not None:
        d2 = tf.convert_to_tensor(pred_uv, tf.float32) - tf.convert_to_tensor(gt_uv, tf.float32)
        per_frame = per_frame + tf.reduce_mean(tf.reduce_sum(tf.square(d2), -1), -1)
    return _frame_mean(per_frame, weights)


def normal_loss(pred_xyz, gt_xyz, faces, scale=None, weights=None):
    """Eq. (3) / V: sum over triangles t and their 3 edges (i, j) of <v^_i - v^_j, n_t>^2, n_t from gt."""
    faces, _, _, _, v = topology(faces)
    p, g = _scaled(pred_xyz, scale), _scaled(gt_xyz, scale)
    _check("pred_xyz", p, 3, 3)
    gf = tf.gather(g, faces, axis=1)  # [B, F, 3, 3]
    n = tf.linalg.cross(gf[:, :, 1] - gf[:, :, 0], gf[:, :, 2] - gf[:, :, 0])
    n = n / tf.maximum(tf.norm(n, axis=-1, keepdims=True), 1e-12)
    pf = tf.gather(p, faces, axis=1)
    total = 0.0
    for a, b in ((0, 1), (1, 2), (2, 0)):
        total += tf.reduce_sum(tf.square(tf.reduce_sum((pf[:, :, a] - pf[:, :, b]) * n, -1)), -1)
    return _frame_mean(total / float(v), weights)


def edge_loss(pred_xyz, ref_xyz, faces, scale=None, weights=None):
    """Eq. (4) / V: sum over mesh edges of (||e||^2 - ||e^||^2)^2, e from the reference mesh ``ref_xyz``."""
    _, edges, _, _, v = topology(faces)
    p, r = _scaled(pred_xyz, scale), _scaled(ref_xyz, scale)
    _check("pred_xyz", p, 3, 3)

    def sq_len(x):
        return tf.reduce_sum(tf.square(tf.gather(x, edges[:, 0], axis=1) - tf.gather(x, edges[:, 1], axis=1)), -1)

    return _frame_mean(tf.reduce_sum(tf.square(sq_len(r) - sq_len(p)), -1) / float(v), weights)


def laplacian_loss(pred_xyz, ref_xyz, faces, scale=None, weights=None):
    """Eq. (5) / V: sum over vertices of ||delta_i - mean_{k in N(i)} delta_k||^2 with delta = ref - pred."""
    _, _, idx, vals, v = topology(faces)
    delta = _scaled(ref_xyz, scale) - _scaled(pred_xyz, scale)
    _check("pred_xyz", delta, 3, 3)
    if delta.shape[1] != v:
        raise ValueError(f"pred_xyz: expected {v} vertices (faces), found {delta.shape[1]}")
    mean_nbr = tf.sparse.SparseTensor(idx, vals, (v, v))
    b = tf.shape(delta)[0]
    flat = tf.reshape(tf.transpose(delta, [1, 0, 2]), [v, -1])  # [V, B * 3]
    avg = tf.transpose(tf.reshape(tf.sparse.sparse_dense_matmul(mean_nbr, flat), [v, b, 3]), [1, 0, 2])
    return _frame_mean(tf.reduce_sum(tf.square(delta - avg), [1, 2]) / float(v), weights)


def pose_loss(pred_joints, gt_joints, scale=None, weights=None):
    """L_J / J: mean over joints of ||phi - phi^||^2 (/scale^2). [B, J, 3]."""
    p, g = _scaled(pred_joints, scale), _scaled(gt_joints, scale)
    _check("pred_joints", p, 3, 3)
    return _frame_mean(tf.reduce_mean(tf.reduce_sum(tf.square(p - g), -1), -1), weights)


@dataclasses.dataclass
class RGBLossConfig:
    """Weights of L_fully = lambda_h L_H + lambda_m L_M + lambda_j L_J, L_M = sum lambda_x L_x (paper values).

    Set a weight to 0 to drop its term (Table 1 ablations): the term is then neither computed nor reported.
    """

    lambda_h: float = 0.5
    lambda_m: float = 1.0
    lambda_j: float = 1.0
    lambda_v: float = 1.0
    lambda_n: float = 1.0
    lambda_e: float = 1.0
    lambda_l: float = 50.0
    joints_key: str = "joints"


def fully_supervised_loss(batch, outputs, faces, config: RGBLossConfig, image_size: int):
    """Eq. (6) on one batch of hsr_tf.data.rgb_reader. Returns (total, {term: value}).

    Mesh terms need ``outputs['vertices']`` / ``['uvd']`` and use ``batch['has_vertices']`` as frame weights.
    """
    from hsr_tf.geometry import uvd as uvd_lib

    scale = batch["bone_scale"]
    terms = {}
    total = tf.constant(0.0)
    if config.lambda_h:
        terms["heatmap"] = heatmap_loss(outputs["heatmaps_all"], batch["heatmaps"])
        total += config.lambda_h * terms["heatmap"]
    if config.lambda_m and "vertices" in outputs:
        w = batch.get("has_vertices")
        gt, pred = batch["vertices"], outputs["vertices"]
        mesh = 0.0
        if config.lambda_v:
            gt_uv = uvd_lib.normalize_uv(uvd_lib.camera_to_uvd(gt, batch["camera"], batch["root_depth"], scale)[..., :2],
                                         image_size)
            terms["vertex"] = vertex_loss(pred, gt, outputs["uvd"][..., :2], gt_uv, scale, w)
            mesh += config.lambda_v * terms["vertex"]
        if config.lambda_n:
            terms["normal"] = normal_loss(pred, gt, faces, scale, w)
            mesh += config.lambda_n * terms["normal"]
        if config.lambda_e:
            terms["edge"] = edge_loss(pred, gt, faces, scale, w)
            mesh += config.lambda_e * terms["edge"]
        if config.lambda_l:
            terms["laplacian"] = laplacian_loss(pred, gt, faces, scale, w)
            mesh += config.lambda_l * terms["laplacian"]
        terms["mesh"] = mesh
        total += config.lambda_m * mesh
    if config.lambda_j:
        terms["pose"] = pose_loss(outputs[config.joints_key], batch["joints"], scale)
        total += config.lambda_j * terms["pose"]
    return total, terms
