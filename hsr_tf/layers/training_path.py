"""Fast training path of the PointNet++ shared MLPs, and the switches that select today's reference path.

Legend: R rows (B*M*S neighbours of every centroid, or B*N points of the global level), C channels,
G groups (B*M neighbourhoods), S rows per group.

Training a set-abstraction level spends almost all its time streaming ``[R, C]`` activations (R = 1M rows
for the paper-size first level at B = 32) through memory. The reference path (Keras ``Conv2D`` +
``BatchNormalization`` + ReLU, then ``reduce_max``) makes about seven passes per layer in the forward pass
and more in the backward pass: Keras' BatchNorm computes the moments with separate reductions, upcasts
16-bit inputs to float32 and back, and ``reduce_max``'s gradient builds a tie mask, counts and divides.
The fast path computes the same function with fewer passes:

* ``fused_batch_norm``: each BatchNorm runs as one ``FusedBatchNormV3`` in training mode (batch moments and
  normalisation in one kernel, its gradient in one kernel, bfloat16 in and out with float32 statistics),
  followed by the ReLU (Grappler fuses the pair on CPU). The Keras layer's variables are used as they are
  (gamma, beta, moving mean and variance), so checkpoints, inference and export do not change; the moving
  statistics are updated with Keras' rule and its biased batch variance.
* ``max_pool``: the max over S is a ``MaxPool`` with an [S, 1] window (its gradient, ``MaxPoolGrad``, is one
  kernel and routes each group's gradient to one maximal row; ``reduce_max`` splits it between tied rows. Tied
  rows are the ball query's padding duplicates, identical rows whose summed gradient is the same either way).
* ``project_then_group``: in a level with input features, the first layer is linear, so it is applied to
  the N points before grouping instead of to the B*M*S grouped rows:
  ``[x_j - c, f_j] W = (x_j W_x + f_j W_f) - c W_x``, computed in float32 (the subtraction of two nearby
  projections would lose precision in bfloat16) and gathered with ``hsr_tf.ops.group_points``. For the
  paper-size second level this removes a [262144, 131] x [131, 128] product per stage and batch of 32 from
  the forward pass and two from the backward pass.

* ``fused_kernels`` (CPU, float32 / bfloat16, compiled ops; on GPUs and with the pure-TF ops the two
  switches above stand in): BatchNorm + ReLU run as the compiled ``HsrBatchNormRelu`` kernels
  (:mod:`hsr_tf.ops.mlp_train`: two passes over the activations forward, two backward, ReLU gradient
  included), and the last layer's BatchNorm + ReLU + max over the group as one kernel that never writes the
  [R, C] activation and whose gradient starts from the sparse max gradient (no ``MaxPoolGrad`` / ``ReluGrad``).
* ``drop_duplicates`` (with ``fused_kernels``, ball grouping): ``ball_query`` pads a group whose ball holds
  fewer than S points with copies of its first neighbour (a third of the first level's slots on hand clouds).
  The copies are dropped (:func:`unique_ball_rows`) and the kept row counts once per copy in the BatchNorm
  moments and gradients; the max over a group does not change. The rows relative to their centroid (and the
  projected first layer) are gathered by one compiled op in the compute dtype.
* ``slab_weight_grad``: the gradient of a layer's kernel, ``h^T dz`` over R rows, as the sum of
  :data:`WEIGHT_GRAD_SLABS` batched products over slabs of rows (and one for the remainder), added in float32:
  oneDNN runs the [Cin, R] x [R, C] product with a long reduction 1.2-1.5x slower than the batch of shorter
  ones (``benchmarks.training``, variant ``fast_bfloat16_no_slabs``), and the float32 sum rounds once less.
* ``folded_first_layer``: a first layer whose rows have at most :data:`FOLDED_MAX_CHANNELS` channels (the
  first level's coordinates relative to their centroid, K = 3) never materialises its pre-activation: z = u W
  is linear in u, so BatchNorm's batch moments are ``mean = m W`` and ``var_c = W_c^T Cov W_c`` from the
  K-vector mean m and K x K covariance of the (weighted) rows, and the layer is ``relu(u (W * scale) + shift)``
  with the folded scale and shift: one compiled pass that writes only h (:func:`hsr_tf.ops.mlp_train.linear_relu`,
  whose gradient makes one pass over (dh, u) and writes no [R, C] gradient). Autodiff through the moments gives
  BatchNorm's full gradient. Computed in float32 from float32 rows (the other path rounds the rows and z to
  bfloat16 under a bfloat16 policy).
* ``fused_products`` (bfloat16, compiled ops, a CPU with AMX or AVX512-BF16; channel counts multiples of 32, at
  most ``fused_max_channels`` outputs, 256: the first two levels): a layer's
  product ``h W`` runs on AMX tiles (or AVX512-BF16 dot products, ``mlp_train.bf16_products_backend``) block
  by block and, while a block is in cache, its BatchNorm moments and (last
  layer) every group's largest and smallest value per channel are taken (:func:`matmul_batch_norm_relu_train`):
  the moments pass of the BatchNorm kernel and both passes of the max kernel over the [R, C] product go away
  (the group's largest y = z * scale + shift is at its largest or smallest z, by the sign of scale). Same values
  as the two-step path (tests/test_matmul_moments.py). ``fused_product_grads``: the backward pass of such a
  layer forms the BatchNorm + ReLU (+ max) gradient dz block by block and multiplies it on AMX tiles at once
  (dh = dz W^T, dW += h^T dz summed in float32): dz is never written and the products need no pass of their
  own; otherwise the gradient kernels, then TensorFlow's products.
* ``fused_pairs`` (with ``fused_product_grads``): a hidden fused layer followed by the fused max layer train as one
  pair (:func:`matmul_batch_norm_relu_max_pair_train`): the hidden layer's activation is never written (the max
  layer's product and its backward pass form it block by block from the hidden layer's product), and the hidden
  layer's backward sums are taken while the max layer's backward pass has each block of their gradient in cache
  (one pass over the [R, C] gradient and product instead of two). Same forward values, bit for bit. After a
  ``folded_first_layer`` the folded layer joins them (:func:`folded_pair_train`): its activation and gradient are
  formed block by block inside the next layer's product and backward pass, never written.
* ``nearest_vertex_scan`` (compiled ops): the chamfer loss's nearest vertex of every input point by the
  compiled k = 1 scan instead of a [B, N, V] distance matrix and ``argmin`` (``hsr_tf.losses``).

The switches are read when a layer is called (traced), not stored in the layer configuration: they change
the speed, not the function (tests/test_training_path.py compares both paths' outputs, moving statistics
and gradients). :func:`use` selects them for the code traced inside it, e.g. ``use(REFERENCE)`` for the
path as it was before this module (``benchmarks.training`` measures both in one run).
"""
from __future__ import annotations

import contextlib
import dataclasses

import tensorflow as tf

from hsr_tf.ops import mlp_pair, mlp_train


@dataclasses.dataclass(frozen=True)
class TrainingPath:
    """Which optimisations of the training pass are on (see the module docstring)."""

    fused_batch_norm: bool = True
    max_pool: bool = True
    project_then_group: bool = True
    fused_kernels: bool = True
    drop_duplicates: bool = True
    nearest_vertex_scan: bool = True
    slab_weight_grad: bool = True
    folded_first_layer: bool = True
    fused_products: bool = True
    fused_product_grads: bool = True
    fused_pairs: bool = True
    # Widest layer output that takes the fused products. The wider layers are the global level's (B x 128 rows),
    # where TensorFlow's products and the BatchNorm kernels were faster in every run of ``python -m
    # benchmarks.amx_layers`` (fused 0.73-0.86x of the two-step path at 256 -> 512 and 512 -> 1024; the first two
    # levels' 1.1-1.8x at up to 256 channels).
    fused_max_channels: int = 256


FAST = TrainingPath()
REFERENCE = TrainingPath(fused_batch_norm=False, max_pool=False, project_then_group=False, fused_kernels=False,
                         drop_duplicates=False, nearest_vertex_scan=False, slab_weight_grad=False,
                         folded_first_layer=False, fused_products=False, fused_product_grads=False,
                         fused_pairs=False)
_state = {"path": FAST}


def current() -> TrainingPath:
    """The training path in force for layers traced now."""
    return _state["path"]


@contextlib.contextmanager
def use(path: TrainingPath):
    """Select ``path`` for the layers called (traced) inside the context."""
    if not isinstance(path, TrainingPath):
        raise TypeError(f"use: expected a TrainingPath, found {type(path).__name__}")
    old = _state["path"]
    _state["path"] = path
    try:
        yield
    finally:
        _state["path"] = old


def kernels_on(dtype) -> bool:
    """Whether the compiled fused kernels run the training pass of an MLP computing in ``dtype``."""
    # They take float32 / bfloat16; float16 (GPU mixed precision) keeps the reference ops.
    return current().fused_kernels and dtype in (tf.float32, tf.bfloat16) and mlp_train.kernels_available()


def drop_duplicates_on(dtype) -> bool:
    """Whether ball-query groups are trained without their padding copies (needs the fused kernels)."""
    return current().drop_duplicates and kernels_on(dtype)


def batch_norm_relu_train(z, bn, group_size=None, row_splits=None, weights=None):
    """relu(BatchNorm(z)) with the batch's statistics (max-pooled over groups when ``group_size`` or
    ``row_splits`` is given), and Keras' update of ``bn``'s moving statistics.

    Args:
      z: [R, C] pre-activations in the compute dtype (float32 or bfloat16 / float16).
      bn: the ``keras.layers.BatchNormalization`` whose gamma, beta, epsilon, momentum and moving statistics
        are used (axis -1).
      group_size: None, or S: return the max over each group of S consecutive rows.
      row_splits, weights: ragged groups and row multiplicities (:func:`hsr_tf.ops.mlp_train.batch_norm_relu`;
        only with the fused kernels, see :func:`kernels_on`).
    Returns:
      [R, C] (or [R / S, C], or [G, C]) in the dtype of ``z``.
    """
    c = z.shape[-1]
    gamma = tf.cast(bn.gamma, tf.float32) if bn.scale else tf.ones([c], tf.float32)
    beta = tf.cast(bn.beta, tf.float32) if bn.center else tf.zeros([c], tf.float32)
    out, mean, var = mlp_train.batch_norm_relu(z, gamma, beta, float(bn.epsilon), group_size=group_size,
                                               compiled=kernels_on(z.dtype), max_pool=current().max_pool,
                                               row_splits=row_splits, weights=weights)
    m = float(bn.momentum)
    bn.moving_mean.assign(bn.moving_mean * m + mean * (1.0 - m))
    bn.moving_variance.assign(bn.moving_variance * m + var * (1.0 - m))
    return out


FOLDED_MAX_CHANNELS = 8


def folded_first_layer_on(in_channels) -> bool:
    """Whether a first layer on ``in_channels`` input channels trains through
    :func:`linear_batch_norm_relu_train` (the ``folded_first_layer`` switch)."""
    return current().folded_first_layer and in_channels is not None and in_channels <= FOLDED_MAX_CHANNELS


def linear_batch_norm_relu_train(u, kernel, bn, weights=None, dtype=tf.float32):
    """relu(BatchNorm(u @ kernel)) with the batch's statistics, for rows with few channels
    (``folded_first_layer`` in the module docstring), and Keras' update of ``bn``'s moving statistics.

    Args:
      u: [R, K] rows (cast to float32), K <= :data:`FOLDED_MAX_CHANNELS`.
      kernel: float32 [K, C] (a 1x1 convolution's kernel, without bias).
      bn: the ``keras.layers.BatchNormalization`` of the layer (axis -1).
      weights: None, or float32 [R] > 0: the number of identical rows each row stands for (moments and
        gradients of the batch with every copy present, as :func:`batch_norm_relu_train`).
      dtype: the result's dtype.
    Returns:
      [R, C] in ``dtype``.
    """
    u = tf.cast(u, tf.float32)
    folded_kernel, folded_bias = _folded_layer(u, kernel, bn, weights)
    return mlp_train.linear_relu(u, folded_kernel, folded_bias, dtype, compiled=kernels_on(tf.as_dtype(dtype)))


def _folded_layer(u, kernel, bn, weights):
    """The folded first layer's kernel [K, C] and bias [C] (``relu(u @ kernel + bias)`` is the layer), from the
    moments of the float32 rows u [R, K]; updates ``bn``'s moving statistics."""
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    c = kernel.shape[-1]
    m, cov = mlp_train.row_moments(u, weights, compiled=kernels_on(tf.float32))  # [K], [K, K]
    mean = tf.linalg.matvec(kernel, m, transpose_a=True)  # [C]
    var = tf.maximum(tf.reduce_sum(kernel * tf.matmul(cov, kernel), axis=0), 0.0)  # [C], biased
    gamma = tf.cast(bn.gamma, tf.float32) if bn.scale else tf.ones([c], tf.float32)
    beta = tf.cast(bn.beta, tf.float32) if bn.center else tf.zeros([c], tf.float32)
    scale = gamma * tf.math.rsqrt(var + float(bn.epsilon))
    mom = float(bn.momentum)
    bn.moving_mean.assign(bn.moving_mean * mom + tf.stop_gradient(mean) * (1.0 - mom))
    bn.moving_variance.assign(bn.moving_variance * mom + tf.stop_gradient(var) * (1.0 - mom))
    return kernel * scale, beta - mean * scale


WEIGHT_GRAD_SLABS = 16


def rows_matmul(h, kernel):
    """``h @ kernel`` for [R, Cin] rows and a float32 [Cin, C] kernel (cast to h's dtype), whose kernel
    gradient is summed over :data:`WEIGHT_GRAD_SLABS` slabs of rows in float32 when ``slab_weight_grad`` is on
    (the module docstring); the plain product otherwise. Returns [R, C] in h's dtype."""
    if not current().slab_weight_grad:
        return tf.matmul(h, tf.cast(kernel, h.dtype))

    @tf.custom_gradient
    def product(h, kernel):
        kernel_c = tf.cast(kernel, h.dtype)
        return tf.matmul(h, kernel_c), lambda dz: mlp_train.product_gradients(h, kernel_c, dz, WEIGHT_GRAD_SLABS)

    return product(h, tf.convert_to_tensor(kernel, tf.float32))


def fused_product_on(dtype, in_channels, channels) -> bool:
    """Whether a layer [R, in_channels] -> [R, channels] computing in ``dtype`` trains through
    :func:`matmul_batch_norm_relu_train` (the ``fused_products`` switch; bfloat16, AMX or AVX512-BF16, multiples
    of 32, at most ``fused_max_channels`` outputs)."""
    return (current().fused_products and dtype == tf.bfloat16 and kernels_on(dtype) and in_channels % 32 == 0
            and channels % 32 == 0 and channels <= current().fused_max_channels
            and mlp_train.bf16_products_available())


def matmul_batch_norm_relu_train(h, kernel, bn, row_splits=None, weights=None):
    """relu(BatchNorm(h @ kernel)) with the batch's statistics (max-pooled over the groups of ``row_splits``), the
    product and the statistics in one pass on AMX tiles (``fused_products`` in the module docstring), and Keras'
    update of ``bn``'s moving statistics.

    Args:
      h: bfloat16 [R, Cin] rows (see :func:`fused_product_on`).
      kernel: float32 [Cin, C] (a 1x1 convolution's kernel, without bias).
      bn: the layer's ``keras.layers.BatchNormalization`` (axis -1).
      row_splits, weights: as :func:`batch_norm_relu_train`.
    Returns:
      bfloat16 [R, C], or [G, C] with ``row_splits``.
    """
    c = kernel.shape[-1]
    gamma = tf.cast(bn.gamma, tf.float32) if bn.scale else tf.ones([c], tf.float32)
    beta = tf.cast(bn.beta, tf.float32) if bn.center else tf.zeros([c], tf.float32)
    out, mean, var = mlp_train.matmul_batch_norm_relu(
        h, kernel, gamma, beta, float(bn.epsilon), weights=weights, row_splits=row_splits,
        slabs=WEIGHT_GRAD_SLABS if current().slab_weight_grad else 0, product_grad=current().fused_product_grads)
    m = float(bn.momentum)
    bn.moving_mean.assign(bn.moving_mean * m + mean * (1.0 - m))
    bn.moving_variance.assign(bn.moving_variance * m + var * (1.0 - m))
    return out


def _bn_params(kernel, bn):
    c = kernel.shape[-1]
    return [kernel, tf.cast(bn.gamma, tf.float32) if bn.scale else tf.ones([c], tf.float32),
            tf.cast(bn.beta, tf.float32) if bn.center else tf.zeros([c], tf.float32), float(bn.epsilon)]


def _update_moving(pairs):
    for bn, (mean, var) in pairs:
        m = float(bn.momentum)
        bn.moving_mean.assign(bn.moving_mean * m + mean * (1.0 - m))
        bn.moving_variance.assign(bn.moving_variance * m + var * (1.0 - m))


def matmul_batch_norm_relu_max_pair_train(h, kernel1, bn1, kernel2, bn2, row_splits, weights=None):
    """The last two layers of a shared MLP as one pair (``fused_pairs`` in the module docstring): relu(BatchNorm(
    h1 @ kernel2)) max-pooled over the groups of ``row_splits``, with h1 = relu(BatchNorm(h @ kernel1)), both with
    the batch's statistics, and Keras' update of both layers' moving statistics.

    Args:
      h: bfloat16 [R, Cin] rows; kernel1 float32 [Cin, C1], kernel2 float32 [C1, C2] (see :func:`fused_product_on`).
      bn1, bn2: the layers' ``keras.layers.BatchNormalization`` (axis -1).
      row_splits: int32 [G+1]; weights: None or float32 [R] row multiplicities.
    Returns:
      bfloat16 [G, C2].
    """
    out, moments1, moments2 = mlp_pair.matmul_batch_norm_relu_max_pair(
        h, *_bn_params(kernel1, bn1), *_bn_params(kernel2, bn2), row_splits=row_splits, weights=weights)
    _update_moving([(bn1, moments1), (bn2, moments2)])
    return out


def folded_pair_train(u, kernels, bns, row_splits, weights=None):
    """A three-layer shared MLP on rows with few channels as one unit (``fused_pairs`` after a
    ``folded_first_layer``): :func:`linear_batch_norm_relu_train`'s folded layer, then the pair of
    :func:`matmul_batch_norm_relu_max_pair_train`, with the folded layer's activation and its gradient never
    written (``hsr_tf.ops.mlp_pair.linear_relu_pair_max``). Same arguments; returns bfloat16 [G, C2]."""
    u = tf.cast(u, tf.float32)
    folded_kernel, folded_bias = _folded_layer(u, kernels[0], bns[0], weights)
    out, moments1, moments2 = mlp_pair.linear_relu_pair_max(
        u, folded_kernel, folded_bias, *_bn_params(kernels[1], bns[1]), *_bn_params(kernels[2], bns[2]),
        row_splits=row_splits, weights=weights)
    _update_moving([(bns[1], moments1), (bns[2], moments2)])
    return out


def pairs_on(dtype, channels) -> bool:
    """Whether the last two layers of a shared MLP whose layers output ``channels`` (the input's first) train as
    one pair (``fused_pairs``, with ``fused_product_grads`` and both products fused)."""
    return (current().fused_pairs and current().fused_product_grads and len(channels) >= 3
            and fused_product_on(dtype, channels[-3], channels[-2])
            and fused_product_on(dtype, channels[-2], channels[-1]))


def shared_mlp_train(kernels, bns, dtype, rows=None, first=None, group_size=None, row_splits=None, weights=None):
    """The training pass of a shared MLP (1x1 convolutions, BatchNorm with batch statistics, ReLU) over rows, the
    last layer max-pooled over groups, through every switch of the fast path.

    Args:
      kernels: float32 [C_in, C_1], [C_1, C_2], ... (the convolutions' kernels, without bias).
      bns: the layers' ``keras.layers.BatchNormalization``.
      dtype: the compute dtype.
      rows: [R, C_in] input rows, or None when ``first`` is given.
      first: [R, C_1]: the first layer's product computed by the caller (e.g. projected before grouping), or None.
      group_size, row_splits: the groups of the max: S consecutive rows, or int32 [G+1] splits.
      weights: None, or float32 [R] row multiplicities (:func:`unique_ball_rows`; fused kernels only).
    Returns:
      [G, C_last] in ``dtype``.
    """
    h = None
    splits_of = (lambda r: row_splits if row_splits is not None
                 else tf.range(0, tf.shape(r)[0] + 1, group_size, dtype=tf.int32))
    for i, (kernel, bn) in enumerate(zip(kernels, bns)):
        last = i == len(kernels) - 1
        if i == 0 and first is None and not last and folded_first_layer_on(rows.shape[-1]):
            if len(kernels) == 3 and pairs_on(dtype, [rows.shape[-1]] + [k.shape[-1] for k in kernels]):
                return folded_pair_train(rows, kernels, bns, splits_of(rows), weights=weights)
            h = linear_batch_norm_relu_train(rows, kernel, bn, weights=weights, dtype=dtype)
            continue
        if i == 0 and first is not None:
            z = tf.cast(first, dtype)
        else:
            h_in = tf.cast(rows, dtype) if i == 0 else h
            if i == len(kernels) - 2 and pairs_on(dtype, [h_in.shape[-1]] + [k.shape[-1] for k in kernels[i:]]):
                return matmul_batch_norm_relu_max_pair_train(h_in, kernel, bn, kernels[-1], bns[-1],
                                                             splits_of(h_in), weights=weights)
            if fused_product_on(dtype, h_in.shape[-1], kernel.shape[-1]):
                splits = row_splits
                if last and splits is None:
                    splits = tf.range(0, tf.shape(h_in)[0] + 1, group_size, dtype=tf.int32)
                h = matmul_batch_norm_relu_train(h_in, kernel, bn, row_splits=splits if last else None,
                                                 weights=weights)
                continue
            z = rows_matmul(h_in, kernel)
        h = batch_norm_relu_train(z, bn, group_size=group_size if last and row_splits is None else None,
                                  row_splits=row_splits if last else None, weights=weights)
    return h


def unique_ball_rows(idx, num_points):
    """The rows of ball-query groups without the padding copies, and how many rows each one stands for.

    ``ball_query`` fills a group's slots with its distinct neighbours, then repeats the first one; the
    shared MLP gives copies identical rows, which change neither the max over the group nor, counted with
    their multiplicity, the BatchNorm statistics and gradients (:mod:`hsr_tf.ops.mlp_train`).

    Args:
      idx: int32 [B, M, S] ball-query indices into N.
      num_points: N (int or scalar tensor).
    Returns:
      ``(point [R] int32 row b*N + n of the batch's flattened points, weights [R] float32,
      row_splits [B*M + 1] int32)``, rows in group order (group b*M + m), each group's first slot first.
    """
    s = idx.shape[-1]
    first = idx[:, :, :1]
    keep = tf.concat([tf.ones_like(first, tf.bool), tf.not_equal(idx[:, :, 1:], first)], axis=2)  # [B,M,S]
    counts = tf.reshape(tf.reduce_sum(tf.cast(keep, tf.int32), axis=2), [-1])  # [B*M] distinct neighbours
    flat_point = idx + tf.range(tf.shape(idx)[0], dtype=tf.int32)[:, None, None] * tf.cast(num_points, tf.int32)
    point = tf.boolean_mask(flat_point, keep)
    row_splits = tf.concat([[0], tf.cumsum(counts)], axis=0)
    # Every kept row stands for itself, a group's first (slot 0) also for the S - count copies of it: written
    # at the groups' first rows (B*M values) rather than masked out of a [B, M, S] tensor of weights.
    weights = tf.tensor_scatter_nd_update(tf.ones_like(point, tf.float32), row_splits[:-1, None],
                                          tf.cast(s + 1 - counts, tf.float32))
    return point, weights, row_splits


__all__ = ["TrainingPath", "FAST", "REFERENCE", "current", "use", "kernels_on", "drop_duplicates_on",
           "batch_norm_relu_train", "rows_matmul", "unique_ball_rows", "WEIGHT_GRAD_SLABS", "FOLDED_MAX_CHANNELS",
           "folded_first_layer_on", "linear_batch_norm_relu_train", "fused_product_on",
           "matmul_batch_norm_relu_train", "matmul_batch_norm_relu_max_pair_train", "folded_pair_train", "pairs_on",
           "shared_mlp_train"]
