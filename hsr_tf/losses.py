"""Losses of the depth hand-shape network (Deng et al., section III-D, Eqs. 4-8).

    L_total = lambda_J L_J + lambda_C L_C + lambda_B0 L_B0 + 1[GT shape] lambda_S L_S     (Eq. 4)
    lambda = (2, 1, 1, 1)

    L_J  = sum_i ||J_i - J*_i||^2          over the K supervised joints        (Eq. 5)
    L_C  = sum_i ||p_i - V_n(i)||^2        over the Q input points whose nearest
                                           predicted vertex is within tau = 5 mm (Eq. 6)
    L_S  = sum_i ||V_i - V*_i||^2          over the N = 1305 vertices          (Eq. 7)
    L_B0 = sum_i ||T_i(beta, theta0) - B0_i||^2  over the N vertices          (Eq. 8)

How the terms are assembled (see docs/papers.md ("Depth network, losses and metrics")):

* Units: every term is computed in MILLIMETRES (squared), whatever the input
  normalisation: offsets in the normalised input frame are multiplied by the batch's
  ``scale`` [B] (mm per normalised unit, see ``hsr_tf.data.reader``). ``L_B0`` lives
  in the hand frame, already mm. The tau cut-off is applied to mm distances.
* Reduction (``reduction``): ``"mean"`` (default) divides each sum by its number of
  elements (K joints, Q points within tau, N vertices), so every term is a mean squared
  distance in mm^2 and the printed weights (2, 1, 1, 1) are the relative weights of
  comparable quantities. ``"sum"`` keeps the sums exactly as printed; then L_S and
  L_B0 (1305 terms) outweigh L_J (21 terms) by a further factor of about 62 and L_C by
  up to Q. Frames are averaged over the batch in both cases.
* Stages: the same loss (L_J, L_C, L_B0, L_S) is applied to each stage's output
  ("we adopt the same loss for Stage 1 and Stage 2"). The stage joint loss compares
  the stage's 21 model joints with the ground truth through the joint correspondence
  (identity on synthetic data; the paper's NYU/ICVL/MSRA pairs through
  ``hsr_tf.data.datasets.DatasetSpec``) and is weighted by ``stage_joint_weight(epoch)``
  (1, then 0.1 from epoch ``stage_joint_decay_epoch`` = 20 on). With
  ``supervise_joints_input`` the shape network's direct joint output ``J_input``
  (the Procrustes target) gets the same joint loss (our reading: it is the joint output
  "at the end of each shape network").
* Joint regression: ``L_J`` between ``dataset_joints`` and the batch joints selected
  by ``regression_joint_indices``, weight lambda_J, no decay.
* Shape indicator: L_S is used when the batch has ``vertices`` and ``use_shape``;
  an optional ``has_vertices`` [B] in the batch masks frames without a ground-truth mesh.

Legend: B batch, N input points, V vertices (1305), J joints, K supervised joints.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from hsr_tf import ops
from hsr_tf.layers import training_path

REDUCTIONS = ("mean", "sum")


def _check_pts(name, x):
    if x.shape.rank != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [B, N, 3], found {x.shape}")


def _scale_vector(scale, batch_like):
    """scale [B] or [B, 1] or scalar -> [B] float32."""
    scale = tf.convert_to_tensor(scale, tf.float32)
    if scale.shape.rank == 0:
        return tf.fill(tf.shape(batch_like)[:1], scale)
    if scale.shape.rank == 2 and scale.shape[-1] == 1:
        scale = scale[:, 0]
    if scale.shape.rank != 1:
        raise ValueError(f"scale: expected shape [B] (mm per normalised unit), found {scale.shape}")
    return scale


def _reduce(sq_dist, reduction, mask=None):
    """Per-frame sum or mean of squared distances [B, M] -> [B]."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, found {reduction!r}")
    if mask is None:
        total = tf.reduce_sum(sq_dist, axis=-1)
        if reduction == "sum":
            return total
        return total / tf.cast(tf.shape(sq_dist)[-1], sq_dist.dtype)
    total = tf.reduce_sum(sq_dist * mask, axis=-1)
    if reduction == "sum":
        return total
    return total / tf.maximum(tf.reduce_sum(mask, axis=-1), 1.0)


def squared_error_mm(pred, target, scale, reduction="mean"):
    """Per-frame ``sum_i ||(pred_i - target_i) * scale||^2`` (or its mean over i), mm^2.

    Shared by L_J (Eq. 5) and L_S (Eq. 7).

    Args:
      pred: [B, M, 3] predicted points (normalised frame).
      target: [B, M, 3] ground truth (same frame).
      scale: [B] mm per normalised unit (1.0 if the inputs are already mm).
      reduction: "mean" or "sum" over the M points.
    Returns:
      [B] float32, mm^2.
    """
    pred = tf.convert_to_tensor(pred, tf.float32)
    target = tf.convert_to_tensor(target, tf.float32)
    _check_pts("pred", pred)
    _check_pts("target", target)
    if pred.shape[1] is not None and target.shape[1] is not None and pred.shape[1] != target.shape[1]:
        raise ValueError(f"target: expected {pred.shape[1]} points like pred, found {target.shape[1]}")
    s = _scale_vector(scale, pred)
    diff = (pred - target) * s[:, None, None]
    return _reduce(tf.reduce_sum(tf.square(diff), axis=-1), reduction)


def joint_loss(pred_joints, gt_joints, scale, reduction="mean"):
    """L_J (Eq. 5) per frame, mm^2. Shapes [B, K, 3]; see ``squared_error_mm``."""
    return squared_error_mm(pred_joints, gt_joints, scale, reduction)


def shape_loss(pred_vertices, gt_vertices, scale, reduction="mean"):
    """L_S (Eq. 7) per frame, mm^2. Shapes [B, V, 3]; see ``squared_error_mm``."""
    return squared_error_mm(pred_vertices, gt_vertices, scale, reduction)


def mean_shape_loss(rest_vertices, mean_shape, reduction="mean"):
    """L_B0 (Eq. 8) per frame: ``sum_i ||T_i(beta, theta0) - B0_i||^2``, mm^2.

    Args:
      rest_vertices: [B, V, 3] T(beta, theta0) in the hand frame, mm.
      mean_shape: [V, 3] B0, mm.
      reduction: "mean" or "sum" over the V vertices.
    Returns:
      [B] float32.
    """
    rest_vertices = tf.convert_to_tensor(rest_vertices, tf.float32)
    mean_shape = tf.convert_to_tensor(mean_shape, tf.float32)
    _check_pts("rest_vertices", rest_vertices)
    if mean_shape.shape.rank != 2 or mean_shape.shape[0] != rest_vertices.shape[1] or mean_shape.shape[1] != 3:
        raise ValueError(f"mean_shape: expected shape [{rest_vertices.shape[1]}, 3], found {mean_shape.shape}")
    return _reduce(tf.reduce_sum(tf.square(rest_vertices - mean_shape[None]), axis=-1), reduction)


def nearest_vertex(points, vertices):
    """Index of the nearest vertex of every point (no gradient), brute force; ties to the lower index.

    Args:
      points: [B, N, 3]. vertices: [B, V, 3].
    Returns:
      int32 [B, N].
    """
    points = tf.stop_gradient(points)
    vertices = tf.stop_gradient(vertices)
    if ops.backend() == "compiled" and training_path.current().nearest_vertex_scan:
        # The compiled nearest-point scan (~8x faster than the matrix below at B = 32, N = 1024, V = 1305); it
        # refuses non-finite coordinates, so a diverged prediction is zeroed here and its non-finite loss is
        # left for the training loop to report (or skip).
        def finite(x):
            return tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
        return ops.knn(finite(vertices), finite(points), 1)[1][..., 0]
    # ||p - v||^2 = |p|^2 - 2 p.v + |v|^2; |p|^2 is constant per point and does not change the argmin.
    cross = tf.einsum("bnc,bvc->bnv", points, vertices)
    d2 = tf.reduce_sum(tf.square(vertices), axis=-1)[:, None, :] - 2.0 * cross
    return tf.argmin(d2, axis=-1, output_type=tf.int32)


def chamfer_loss(points, vertices, scale, tau_mm=5.0, reduction="mean", return_count=False):
    """L_C (Eq. 6) per frame: input points -> nearest predicted vertex, squared, within tau.

    Only points whose nearest vertex lies within ``tau_mm`` (distance computed in mm,
    i.e. normalised distance times ``scale``) contribute; the others are ignored (no
    loss, no gradient). With ``reduction="mean"`` the sum is divided by Q, the number
    of contributing points (0 when Q = 0).

    Args:
      points: [B, N, 3] input points (normalised frame).
      vertices: [B, V, 3] predicted vertices (same frame).
      scale: [B] mm per normalised unit.
      tau_mm: cut-off distance, mm.
      reduction: "mean" or "sum" over the Q points.
      return_count: also return Q [B] (float32).
    Returns:
      [B] float32 mm^2 (and Q [B] if requested).
    """
    points = tf.convert_to_tensor(points, tf.float32)
    vertices = tf.convert_to_tensor(vertices, tf.float32)
    _check_pts("points", points)
    _check_pts("vertices", vertices)
    s = _scale_vector(scale, points)
    idx = nearest_vertex(points, vertices)
    nearest = tf.gather(vertices, idx, batch_dims=1)  # [B, N, 3]
    d2 = tf.reduce_sum(tf.square((points - nearest) * s[:, None, None]), axis=-1)  # mm^2
    within = tf.cast(tf.stop_gradient(d2) <= tau_mm * tau_mm, tf.float32)
    loss = _reduce(d2, reduction, mask=within)
    if return_count:
        return loss, tf.reduce_sum(within, axis=-1)
    return loss


def stage_joint_weight(epoch, decay_epoch=20, factor=0.1):
    """Multiplier of the shape networks' joint loss (paper III-E-2).

    1 for epochs 0 .. decay_epoch-1 (0-based), ``factor`` from ``decay_epoch`` on
    ("drop joint loss of hand shape network by 10 times after training for 20 epochs").

    Args:
      epoch: int or scalar tensor, 0-based epoch index.
    Returns:
      float (or float32 scalar tensor when ``epoch`` is a tensor).
    """
    if isinstance(epoch, (int, np.integer, float, np.floating)):
        return float(factor) if epoch >= decay_epoch else 1.0
    epoch = tf.convert_to_tensor(epoch)
    return tf.where(tf.cast(epoch, tf.float32) >= float(decay_epoch), float(factor), 1.0)


@dataclasses.dataclass
class LossConfig:
    """Weights and switches of Eq. 4 (defaults = the paper).

    Attributes:
      joint_weight, chamfer_weight, mean_shape_weight, shape_weight: lambda_J, lambda_C,
        lambda_B0, lambda_S (2, 1, 1, 1).
      use_joint, use_chamfer, use_mean_shape, use_shape: enable each term (ablations).
        ``use_joint`` switches off both the stage joint losses and the regression joint loss.
      use_stage_joint: the stage (shape-network) joint loss.
      use_regression_joint: the joint-regression-network loss (ignored when the model
        has no joint regression, i.e. outputs no ``dataset_joints`` of its own).
      supervise_joints_input: also apply the stage joint loss to each shape network's
        direct joint output J_input.
      chamfer_tau_mm: the cut-off tau, mm.
      reduction: "mean" or "sum" (see module docstring).
      stage_joint_decay_epoch, stage_joint_decay_factor: the x0.1 after 20 epochs schedule.
      correspondence: None/'identity' (our 21 joints = the batch joints, synthetic data), or a
        dataset name ('nyu', 'icvl', 'msra') whose ``DatasetSpec`` pairs our joints with the
        batch joints.
      regression_joint_indices: indices into the batch joints that the joint-regression output
        predicts (None: all batch joints).
    """

    joint_weight: float = 2.0
    chamfer_weight: float = 1.0
    mean_shape_weight: float = 1.0
    shape_weight: float = 1.0
    use_joint: bool = True
    use_chamfer: bool = True
    use_mean_shape: bool = True
    use_shape: bool = True
    use_stage_joint: bool = True
    use_regression_joint: bool = True
    supervise_joints_input: bool = True
    chamfer_tau_mm: float = 5.0
    reduction: str = "mean"
    stage_joint_decay_epoch: int = 20
    stage_joint_decay_factor: float = 0.1
    correspondence: str | None = None
    regression_joint_indices: tuple | None = None

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, found {self.reduction!r}")
        if self.correspondence not in (None, "identity", "nyu", "icvl", "msra"):
            raise ValueError("correspondence: expected None, 'identity', 'nyu', 'icvl' or 'msra', "
                             f"found {self.correspondence!r}")
        if self.chamfer_tau_mm <= 0:
            raise ValueError(f"chamfer_tau_mm: expected > 0, found {self.chamfer_tau_mm}")
        if self.regression_joint_indices is not None:
            self.regression_joint_indices = tuple(int(i) for i in self.regression_joint_indices)


class HandShapeLoss:
    """Eq. 4 over the outputs of ``HandShapeNet`` and a reader batch.

    Args:
      mean_shape: [V, 3] B0 of the hand model (mm), e.g. ``HandModel.mean_shape`` or
        ``HandShapeNet.mean_shape``.
      config: a ``LossConfig`` (or None for the paper's defaults); keyword overrides allowed.

    Call:
      ``loss(outputs, batch, epoch=0) -> (total scalar, terms dict of scalars)``.
      ``outputs``: the model's dict (``stage{k}_vertices``, ``stage{k}_joints``,
      ``stage{k}_joints_input``, ``stage{k}_rest_vertices`` for k = 1..num_stages, and
      ``regression_joints`` [B,Jd,3] when the model has a joint regression network; without it there is
      no regression term).
      ``epoch``: 0-based epoch (int or scalar tensor) for ``stage_joint_weight``.
      ``batch``: the reader dict (``points`` [B,N,3], ``joints`` [B,J,3], ``scale`` [B],
      optionally ``vertices`` [B,V,3] and ``has_vertices`` [B]).
      Terms (unweighted, batch means, mm^2): ``stage{k}/joint``, ``stage{k}/joint_input``,
      ``stage{k}/chamfer``, ``stage{k}/chamfer_points`` (mean Q), ``stage{k}/mean_shape``,
      ``stage{k}/shape``, ``regression/joint``, ``stage_joint_weight`` and ``total``.
    """

    def __init__(self, mean_shape, config: LossConfig | None = None, **overrides):
        if config is None:
            config = LossConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        mean_shape = np.asarray(mean_shape, np.float32)
        if mean_shape.ndim != 2 or mean_shape.shape[1] != 3:
            raise ValueError(f"mean_shape: expected shape [V, 3], found {mean_shape.shape}")
        self.mean_shape = tf.constant(mean_shape)
        self._spec = None
        if config.correspondence not in (None, "identity"):
            from hsr_tf.data.datasets import get_spec
            self._spec = get_spec(config.correspondence)

    def paired_joints(self, model_joints, batch_joints):
        """(ours [B, K, 3], gt [B, K, 3]) through the configured correspondence."""
        if self._spec is None:
            if model_joints.shape[1] != batch_joints.shape[1]:
                raise ValueError(f"batch['joints']: expected {model_joints.shape[1]} joints for the identity "
                                 f"correspondence, found {batch_joints.shape[1]} (set LossConfig.correspondence)")
            return model_joints, batch_joints
        return self._spec.paired(model_joints, batch_joints)

    def regression_target(self, batch_joints):
        idx = self.config.regression_joint_indices
        if idx is None:
            return batch_joints
        return tf.gather(batch_joints, list(idx), axis=1)

    def __call__(self, outputs, batch, epoch=0):
        cfg = self.config
        points = tf.convert_to_tensor(batch["points"], tf.float32)
        gt_joints = tf.convert_to_tensor(batch["joints"], tf.float32)
        scale = _scale_vector(batch["scale"], points)
        gt_vertices = batch.get("vertices") if hasattr(batch, "get") else None
        use_shape = cfg.use_shape and gt_vertices is not None
        shape_mask = None
        if use_shape:
            gt_vertices = tf.convert_to_tensor(gt_vertices, tf.float32)
            if "has_vertices" in batch:
                shape_mask = tf.cast(tf.reshape(batch["has_vertices"], [-1]), tf.float32)
        num_stages = 0
        while f"stage{num_stages + 1}_vertices" in outputs:
            num_stages += 1
        if num_stages == 0:
            raise ValueError("outputs: expected 'stage1_vertices' etc. from HandShapeNet, found keys "
                             f"{sorted(outputs)}")

        def batch_mean(per_frame, mask=None):
            if mask is None:
                return tf.reduce_mean(per_frame)
            return tf.reduce_sum(per_frame * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

        w_stage = stage_joint_weight(epoch, cfg.stage_joint_decay_epoch, cfg.stage_joint_decay_factor)
        terms = {"stage_joint_weight": tf.convert_to_tensor(w_stage, tf.float32)}
        total = tf.constant(0.0, tf.float32)
        for k in range(1, num_stages + 1):
            pre = f"stage{k}"
            if cfg.use_joint and cfg.use_stage_joint:
                ours, gt = self.paired_joints(outputs[f"{pre}_joints"], gt_joints)
                term = batch_mean(joint_loss(ours, gt, scale, cfg.reduction))
                terms[f"{pre}/joint"] = term
                total += cfg.joint_weight * w_stage * term
                if cfg.supervise_joints_input and f"{pre}_joints_input" in outputs:
                    ours, gt = self.paired_joints(outputs[f"{pre}_joints_input"], gt_joints)
                    term = batch_mean(joint_loss(ours, gt, scale, cfg.reduction))
                    terms[f"{pre}/joint_input"] = term
                    total += cfg.joint_weight * w_stage * term
            if cfg.use_chamfer:
                term, count = chamfer_loss(points, outputs[f"{pre}_vertices"], scale, cfg.chamfer_tau_mm,
                                           cfg.reduction, return_count=True)
                term = batch_mean(term)
                terms[f"{pre}/chamfer"] = term
                terms[f"{pre}/chamfer_points"] = tf.reduce_mean(count)
                total += cfg.chamfer_weight * term
            if cfg.use_mean_shape:
                term = batch_mean(mean_shape_loss(outputs[f"{pre}_rest_vertices"], self.mean_shape,
                                                  cfg.reduction))
                terms[f"{pre}/mean_shape"] = term
                total += cfg.mean_shape_weight * term
            if use_shape:
                term = batch_mean(shape_loss(outputs[f"{pre}_vertices"], gt_vertices, scale, cfg.reduction),
                                  shape_mask)
                terms[f"{pre}/shape"] = term
                total += cfg.shape_weight * term
        if cfg.use_joint and cfg.use_regression_joint and "regression_joints" in outputs:
            target = self.regression_target(gt_joints)
            term = batch_mean(joint_loss(outputs["regression_joints"], target, scale, cfg.reduction))
            terms["regression/joint"] = term
            total += cfg.joint_weight * term
        terms["total"] = total
        return total, terms
