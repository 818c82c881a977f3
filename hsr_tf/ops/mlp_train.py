"""Fused training-mode BatchNorm + ReLU (+ max over groups) of the shared MLPs, with gradients.

Legend: R rows, C channels, G groups of S consecutive rows (R = G*S).

``batch_norm_relu(z, gamma, beta, epsilon, group_size=None)`` computes, with the batch's moments
(mean mu and biased variance var over the R rows, per channel),

    h = max((z - mu) / sqrt(var + epsilon) * gamma + beta, 0)                 [R, C], or
    pooled[g] = max over s of h[g*S + s]                                      [G, C] with group_size = S,

and returns ``(h or pooled, mu, var)``; the moments carry no gradient (they feed the moving averages).
``z`` is float32 or bfloat16 (the result has its dtype), ``gamma``/``beta`` float32 ``[C]``.

Two implementations compute the same function:

* the compiled kernels (``HsrBatchNormRelu``, ``HsrBatchNormReluMax`` and their gradients, CPU only,
  ``hsr_tf/ops/src/mlp_train_ops.cc``): two passes over ``z`` forward and two over ``(dh, z)`` backward;
  with ``group_size`` the [R, C] activation is never written: the forward pass keeps each group's maximum
  and the row it came from, and the backward pass starts from that sparse gradient (no ``MaxPoolGrad`` or
  ``ReluGrad`` passes). Ties inside a group send the gradient to the first maximal row (``MaxPool`` picks
  one row as well; ``reduce_max`` would split it). Used when :func:`kernels_available`.
* the reference: ``FusedBatchNormV3`` in training mode, ``relu`` and a ``MaxPool`` with an [S, 1] window
  (``max_pool=False``: ``reduce_max``). Used on GPUs, with the pure-TensorFlow ops backend, or on request.
"""
from __future__ import annotations

import tensorflow as tf

from hsr_tf.ops import _checks

__all__ = ["amx_available", "batch_norm_relu", "bf16_products_available", "bf16_products_backend",
           "gather_rows_minus_centre", "kernels_available", "linear_relu",
           "matmul_batch_norm_relu", "product_gradients", "row_moments"]


@tf.RegisterGradient("HsrBatchNormRelu")
def _batch_norm_relu_grad(op, dh, dmean, dvariance):
    del dmean, dvariance  # the moments are returned under stop_gradient
    z, gamma, beta, weights = op.inputs
    _, mean, variance = op.outputs
    from hsr_tf.ops import compiled  # noqa: PLC0415 (registered before the library loads)
    dz, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_grad(dh, z, weights, gamma, beta, mean, variance,
                                                                 epsilon=op.get_attr("epsilon"))
    return dz, dgamma, dbeta, None


@tf.RegisterGradient("HsrBatchNormReluMax")
def _batch_norm_relu_max_grad(op, dpooled, dargmax, dmean, dvariance):
    del dargmax, dmean, dvariance
    z, gamma, beta, weights, row_splits = op.inputs
    _, argmax, mean, variance = op.outputs
    from hsr_tf.ops import compiled  # noqa: PLC0415
    dz, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_max_grad(
        dpooled, argmax, z, weights, row_splits, gamma, beta, mean, variance, epsilon=op.get_attr("epsilon"))
    return dz, dgamma, dbeta, None, None


@tf.RegisterGradient("HsrGatherRowsMinusCentre")
def _gather_rows_minus_centre_grad(op, grad):
    params, index, _, row_splits = op.inputs
    from hsr_tf.ops import compiled  # noqa: PLC0415
    dparams, dcentres = compiled.load().hsr_gather_rows_minus_centre_grad(
        grad, index, row_splits, tf.shape(params, out_type=tf.int32)[0])
    return dparams, None, dcentres, None


@tf.RegisterGradient("HsrRowMoments")
def _row_moments_grad(op, dmean, dcov):
    # mean = sum w u / W, cov = sum w d d^T / W with d = u - mean; the d's weighted sum is 0, so
    # du_r = w_r / W (dmean + (dcov + dcov^T) d_r).
    u, weights = op.inputs
    mean = op.outputs[0]
    w = tf.cond(tf.size(weights) > 0, lambda: weights, lambda: tf.ones(tf.shape(u)[:1]))[:, None]
    total = tf.maximum(tf.reduce_sum(w), 1e-12)
    sym = dcov + tf.transpose(dcov)
    du = w / total * (dmean[None, :] + tf.matmul(u - mean, sym))
    return du, None


@tf.RegisterGradient("HsrLinearRelu")
def _linear_relu_grad(op, dh):
    u, kernel, bias = op.inputs
    from hsr_tf.ops import compiled  # noqa: PLC0415
    lib = compiled.load()
    dkernel, dbias = lib.hsr_linear_relu_grad(dh, u, kernel, bias)
    # A separate op: a graph in which u is data never runs it.
    du = lib.hsr_linear_relu_input_grad(dh, u, kernel, bias)
    return du, dkernel, dbias


@tf.RegisterGradient("HsrBatchNormReluFromMoments")
def _batch_norm_relu_from_moments_grad(op, dh):
    # The moments are functions of z: the BatchNorm gradient's dz already holds their share (they get none).
    z, gamma, beta, weights, mean, variance, h_prev, kernel = op.inputs
    from hsr_tf.ops import compiled  # noqa: PLC0415
    eps = op.get_attr("epsilon")
    if op.get_attr("product_grad"):
        dh_prev, dkernel, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_grad_product(
            dh, z, weights, gamma, beta, mean, variance, h_prev, kernel, epsilon=eps)
        return None, dgamma, dbeta, None, None, None, dh_prev, dkernel
    dz, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_grad(dh, z, weights, gamma, beta, mean, variance,
                                                                 epsilon=eps)
    return dz, dgamma, dbeta, None, None, None, None, None


@tf.RegisterGradient("HsrBatchNormReluMaxFromExtremes")
def _batch_norm_relu_max_from_extremes_grad(op, dpooled, dargmax, dzsel):
    del dargmax, dzsel
    z, gamma, beta, weights, row_splits, mean, variance = op.inputs[:7]
    h_prev, kernel = op.inputs[12:]
    from hsr_tf.ops import compiled  # noqa: PLC0415
    eps = op.get_attr("epsilon")
    if op.get_attr("product_grad"):
        dh_prev, dkernel, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_max_grad_product(
            dpooled, op.outputs[1], op.outputs[2], weights, row_splits, gamma, beta, mean, variance, h_prev, kernel,
            epsilon=eps)
        return (None, dgamma, dbeta) + (None,) * 9 + (dh_prev, dkernel)
    dz, dgamma, dbeta = compiled.load().hsr_batch_norm_relu_max_grad(
        dpooled, op.outputs[1], z, weights, row_splits, gamma, beta, mean, variance, epsilon=eps)
    return (dz, dgamma, dbeta) + (None,) * 11


tf.no_gradient("HsrMatMulMoments")  # differentiated through the BatchNorm op or a custom gradient
tf.no_gradient("HsrBatchNormReluGradProduct")
tf.no_gradient("HsrBatchNormReluMaxGradProduct")
tf.no_gradient("HsrMatMulMomentsExtremes")
# Differentiated by the custom gradients of hsr_tf.ops.mlp_pair:
tf.no_gradient("HsrBnReluMatMulMomentsExtremes")
tf.no_gradient("HsrLinearReluMatMulMoments")
tf.no_gradient("HsrBatchNormReluGradProductFromSums")
tf.no_gradient("HsrBatchNormReluGradProductLinear")
tf.no_gradient("HsrBatchNormReluMaxGradProductPair")
tf.no_gradient("HsrBf16ProductsBackend")
tf.no_gradient("HsrLinearReluGrad")
tf.no_gradient("HsrLinearReluInputGrad")
tf.no_gradient("HsrGatherRowsMinusCentreGrad")
tf.no_gradient("HsrBatchNormReluGrad")
tf.no_gradient("HsrBatchNormReluMaxGrad")


def kernels_available() -> bool:
    """Whether the compiled kernels can run here: the ops backend is ``compiled`` and no GPU is visible
    (the kernels are CPU-only; on a GPU machine TensorFlow would copy every activation to the host)."""
    from hsr_tf import ops  # noqa: PLC0415 (hsr_tf.ops imports this module's package)
    return ops.backend() == "compiled" and not tf.config.list_logical_devices("GPU")


def _check(z, gamma, beta, group_size):
    if z.dtype not in (tf.float32, tf.bfloat16):
        raise _checks.OpArgumentError(f"batch_norm_relu: z must be float32 or bfloat16, found {z.dtype.name}")
    if z.shape.rank != 2:
        raise _checks.OpArgumentError(f"batch_norm_relu: z must have shape [R, C], found {z.shape}")
    c = z.shape[-1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v.shape.rank != 1 or (c is not None and v.shape[0] is not None and v.shape[0] != c):
            raise _checks.OpArgumentError(f"batch_norm_relu: {name} must have shape [{c}] (the channels of z), "
                                          f"found {v.shape}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise _checks.OpArgumentError(f"batch_norm_relu: group_size must be an int >= 1 or None, "
                                          f"found {group_size!r}")
        r = z.shape[0]
        if r is not None and r % group_size:
            raise _checks.OpArgumentError(f"batch_norm_relu: the rows of z ({r}) must be a multiple of "
                                          f"group_size ({group_size})")


def batch_norm_relu(z, gamma, beta, epsilon: float, group_size=None, compiled=None, max_pool: bool = True,
                    row_splits=None, weights=None):
    """relu(BatchNorm(z)) with the batch's moments, optionally max-pooled over groups (module docstring).

    Args:
      z: [R, C] float32 or bfloat16 pre-activations.
      gamma, beta: [C] float32 scale and offset.
      epsilon: added to the variance.
      group_size: None, or S: return the max over each group of S consecutive rows, [R / S, C].
      compiled: True / False to force an implementation, None for the compiled kernels when
        :func:`kernels_available`.
      max_pool: the reference's max over groups as ``MaxPool`` (True) or ``reduce_max`` (False).
      row_splits: compiled only, instead of ``group_size``: int32 [G+1], group g is rows
        ``[row_splits[g], row_splits[g+1])`` (0 = row_splits[0] < ... < row_splits[G] = R); returns [G, C].
      weights: compiled only: float32 [R] > 0, the number of identical rows each row stands for (moments and
        gradients are those of the batch with every copy present; the max is unchanged by copies).
    Returns:
      (``h [R, C]`` or ``pooled [R/S, C]`` in z's dtype, ``mean [C]``, ``variance [C]`` biased, float32,
      without gradient).
    """
    z = tf.convert_to_tensor(z)
    gamma = tf.convert_to_tensor(gamma, tf.float32)
    beta = tf.convert_to_tensor(beta, tf.float32)
    _check(z, gamma, beta, group_size)
    if compiled is None:
        compiled = kernels_available()
    if group_size is not None and row_splits is not None:
        raise _checks.OpArgumentError("batch_norm_relu: give group_size or row_splits, not both")
    if compiled:
        from hsr_tf.ops import compiled as lib  # noqa: PLC0415
        weights = tf.zeros([0], tf.float32) if weights is None else tf.convert_to_tensor(weights, tf.float32)
        if group_size is not None:
            row_splits = tf.range(0, tf.shape(z)[0] + 1, group_size, dtype=tf.int32)
        if row_splits is None:
            out, mean, variance = lib.load().hsr_batch_norm_relu(z, gamma, beta, weights, epsilon=float(epsilon))
        else:
            out, _, mean, variance = lib.load().hsr_batch_norm_relu_max(
                z, gamma, beta, weights, tf.convert_to_tensor(row_splits, tf.int32), epsilon=float(epsilon))
        return out, tf.stop_gradient(mean), tf.stop_gradient(variance)
    if weights is not None or row_splits is not None:
        raise _checks.OpArgumentError("batch_norm_relu: weights and row_splits need the compiled kernels")
    c = z.shape[-1]
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(z, [1, 1, -1, c]), scale=gamma, offset=beta, mean=tf.zeros([0], tf.float32),
        variance=tf.zeros([0], tf.float32), epsilon=float(epsilon), is_training=True, data_format="NHWC")
    # FusedBatchNormV3 returns the unbiased (n - 1) variance; the biased one is the batch's moment.
    n = tf.cast(tf.shape(z)[0], tf.float32)
    variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
    h = tf.reshape(tf.nn.relu(y), [-1, c])
    if group_size is not None:
        s = int(group_size)
        if max_pool:
            h = tf.reshape(tf.nn.max_pool2d(tf.reshape(h, [-1, s, 1, c]), ksize=[s, 1], strides=[s, 1],
                                            padding="VALID"), [-1, c])
        else:
            h = tf.reduce_max(tf.reshape(h, [-1, s, c]), axis=1)
    return h, tf.stop_gradient(mean), tf.stop_gradient(variance)


def gather_rows_minus_centre(params, index, centres, row_splits, dtype=tf.float32):
    """Rows of ragged groups relative to their group's centre, gathered in one compiled pass.

    ``rows[r] = params[index[r]] - centres[g]`` for the rows ``r`` of group ``g``, i.e.
    ``row_splits[g] <= r < row_splits[g+1]``; differentiable in ``params`` and ``centres`` (the gradient is a
    scatter-add and a per-group sum, both multi-threaded and independent of the thread count).

    Args:
      params: float32 [P, C] (e.g. per-point projections of every cloud, flattened).
      index: int32 [R] rows of ``params``, in [0, P).
      centres: float32 [G, C].
      row_splits: int32 [G+1], 0 = row_splits[0] < ... < row_splits[G] = R.
      dtype: float32 or bfloat16 of the result (one rounding of the float32 difference).
    Returns:
      [R, C] in ``dtype``.
    """
    from hsr_tf.ops import compiled as lib  # noqa: PLC0415
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.bfloat16):
        raise _checks.OpArgumentError(f"gather_rows_minus_centre: dtype must be float32 or bfloat16, found "
                                      f"{dtype.name}")
    return lib.load().hsr_gather_rows_minus_centre(
        tf.convert_to_tensor(params, tf.float32), tf.convert_to_tensor(index, tf.int32),
        tf.convert_to_tensor(centres, tf.float32), tf.convert_to_tensor(row_splits, tf.int32), T=dtype)


def row_moments(u, weights=None, compiled=None):
    """The weighted mean and biased covariance of rows with few channels: ``(mean [K], cov [K, K])`` with
    ``mean = sum_r w_r u_r / W`` and ``cov = sum_r w_r (u_r - mean)(u_r - mean)^T / W`` (W the total weight; zeros
    without rows).

    The compiled op (``HsrRowMoments``, CPU) makes two passes over ``u`` with double sums reduced in block order;
    the reference is the same formula in TensorFlow ops (five passes over [R, K] in float32). Both are
    differentiable in ``u``.

    Args:
      u: float32 [R, K], 1 <= K <= 16.
      weights: None, or float32 [R] > 0 (how many identical rows each row stands for).
      compiled: True / False to force an implementation, None for the compiled op when :func:`kernels_available`.
    """
    u = tf.convert_to_tensor(u, tf.float32)
    if u.shape.rank != 2 or (u.shape[1] is not None and not 1 <= u.shape[1] <= 16):
        raise _checks.OpArgumentError(f"row_moments: u must have shape [R, K] with 1 <= K <= 16, found {u.shape}")
    if compiled is None:
        compiled = kernels_available()
    if compiled:
        from hsr_tf.ops import compiled as lib  # noqa: PLC0415
        w = tf.zeros([0]) if weights is None else tf.convert_to_tensor(weights, tf.float32)
        return tuple(lib.load().hsr_row_moments(u, w))
    w = tf.ones_like(u[:, :1]) if weights is None else tf.convert_to_tensor(weights, tf.float32)[:, None]
    total = tf.maximum(tf.reduce_sum(w), 1e-12)  # no rows: zero moments, as the compiled op
    mean = tf.reduce_sum(w * u, axis=0) / total
    d = u - mean  # centred before the second moments (no cancellation)
    return mean, tf.matmul(d * w, d, transpose_a=True) / total


def linear_relu(u, kernel, bias, dtype=tf.float32, compiled=None):
    """``max(u @ kernel + bias, 0)`` for rows with few channels, computed in float32 and rounded once to ``dtype``.

    The compiled op (``HsrLinearRelu``, CPU) writes only the result; its gradient recomputes the ReLU mask from
    ``u`` and returns the kernel and bias gradients as sums over the rows (no [R, C] gradient is written), the
    input gradient from a separate op that runs only where ``u`` needs one. The reference is
    ``tf.nn.relu(tf.matmul(u, kernel) + bias)`` and a cast.

    Args:
      u: float32 [R, K], 1 <= K <= 16 (e.g. coordinates relative to a centroid).
      kernel: float32 [K, C].
      bias: float32 [C].
      dtype: float32 or bfloat16 of the result (the compiled op; the reference casts to any float dtype).
      compiled: True / False to force an implementation, None for the compiled op when
        :func:`kernels_available`.
    Returns:
      [R, C] in ``dtype``.
    """
    u = tf.convert_to_tensor(u, tf.float32)
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    bias = tf.convert_to_tensor(bias, tf.float32)
    dtype = tf.as_dtype(dtype)
    if u.shape.rank != 2 or (u.shape[1] is not None and not 1 <= u.shape[1] <= 16):
        raise _checks.OpArgumentError(f"linear_relu: u must have shape [R, K] with 1 <= K <= 16, found {u.shape}")
    if kernel.shape.rank != 2 or (u.shape[1] is not None and kernel.shape[0] not in (None, u.shape[1])):
        raise _checks.OpArgumentError(f"linear_relu: kernel must have shape [{u.shape[1]}, C] (K = the channels "
                                      f"of u), found {kernel.shape}")
    if bias.shape.rank != 1 or bias.shape[0] not in (None, kernel.shape[1]):
        raise _checks.OpArgumentError(f"linear_relu: bias must have shape [{kernel.shape[1]}] (the channels of "
                                      f"kernel), found {bias.shape}")
    if compiled is None:
        compiled = kernels_available()
    if compiled:
        if dtype not in (tf.float32, tf.bfloat16):
            raise _checks.OpArgumentError(f"linear_relu: the compiled op computes float32 or bfloat16, found "
                                          f"{dtype.name}")
        from hsr_tf.ops import compiled as lib  # noqa: PLC0415
        return lib.load().hsr_linear_relu(u, kernel, bias, T=dtype)
    return tf.cast(tf.nn.relu(tf.matmul(u, kernel) + bias), dtype)


_backend = {}
# HsrBf16ProductsBackend's codes.
_BACKENDS = {0: "", 1: "amx", 2: "avx512_bf16"}


def bf16_products_backend() -> str:
    """What runs the compiled bfloat16 block products here: ``"amx"`` (AMX-BF16 tiles that the OS grants),
    ``"avx512_bf16"`` (AVX512-BF16 dot-product instructions, on CPUs without AMX such as AMD Zen 4), or ``""``
    (neither, or no compiled kernels). Asked once per process (``HsrBf16ProductsBackend``); ``HSR_TF_OPS_AMX=0``
    skips AMX and ``HSR_TF_OPS_BF16_DOT=0`` the dot products, when set before the first call."""
    if not kernels_available():
        return ""
    if "name" not in _backend:
        from hsr_tf.ops import compiled as lib  # noqa: PLC0415
        with tf.init_scope():  # eager even while a function is traced
            _backend["name"] = _BACKENDS[int(lib.load().hsr_bf16_products_backend().numpy())]
    return _backend["name"]


def bf16_products_available() -> bool:
    """Whether :func:`matmul_batch_norm_relu` and the ops of :mod:`hsr_tf.ops.mlp_pair` can run here (on either
    backend of :func:`bf16_products_backend`)."""
    return bf16_products_backend() != ""


def amx_available() -> bool:
    """Whether the bfloat16 block products run on AMX tiles here (:func:`bf16_products_backend` is ``"amx"``)."""
    return bf16_products_backend() == "amx"


def product_gradients(h, kernel, dz, slabs: int = 0):
    """Gradients of ``z = h @ kernel`` ([R, Cin] x [Cin, C], kernel already in h's dtype) for the upstream ``dz``:
    ``(dh = dz kernel^T, dkernel = h^T dz)``. With ``slabs`` > 0, dkernel is the float32 sum of ``slabs`` batched
    products over slabs of whole rows plus one for the remainder (oneDNN runs the one [Cin, R] x [R, C] product
    with a long reduction slower than the batch); otherwise one product. dkernel is float32."""
    dh = tf.matmul(dz, kernel, transpose_b=True)
    if not slabs:
        return dh, tf.cast(tf.matmul(h, dz, transpose_a=True), tf.float32)
    cut = tf.shape(h)[0] // slabs * slabs
    parts = tf.matmul(tf.reshape(h[:cut], [slabs, -1, h.shape[-1]]), tf.reshape(dz[:cut], [slabs, -1, dz.shape[-1]]),
                      transpose_a=True)
    rest = tf.matmul(h[cut:], dz[cut:], transpose_a=True)
    return dh, tf.reduce_sum(tf.cast(parts, tf.float32), axis=0) + tf.cast(rest, tf.float32)


def matmul_batch_norm_relu(h, kernel, gamma, beta, epsilon: float, weights=None, row_splits=None, slabs: int = 0,
                           product_grad: bool = True):
    """``batch_norm_relu(h @ kernel, ...)`` with the product and the batch moments (and, with ``row_splits``, every
    group's extremes of each channel) computed in one pass on AMX tiles (``HsrMatMulMoments[Extremes]``): the
    [R, C] product is written once and not read again by the forward pass. Needs :func:`bf16_products_available`.

    Args:
      h: bfloat16 [R, Cin] rows, Cin a multiple of 32.
      kernel: float32 [Cin, C], C a multiple of 32 (rounded to bfloat16 for the product).
      gamma, beta, epsilon, weights, row_splits: as :func:`batch_norm_relu` (compiled).
      slabs: the kernel gradient's slabs (:func:`product_gradients`) when ``product_grad`` is off.
      product_grad: the backward pass fused as well (``HsrBatchNormRelu[Max]GradProduct``: the gradient dz is
        formed block by block and multiplied on AMX tiles at once, never written; dkernel summed in float32);
        otherwise the BatchNorm gradient kernels, then the two products by TensorFlow.
    Returns:
      (``h' [R, C]`` or ``pooled [G, C]`` bfloat16, ``mean [C]``, ``variance [C]`` float32 without gradient);
      differentiable in h, kernel, gamma and beta, with the gradients of ``batch_norm_relu`` of the product.
    """
    from hsr_tf.ops import compiled as lib  # noqa: PLC0415
    h = tf.convert_to_tensor(h)
    if h.dtype != tf.bfloat16:
        raise _checks.OpArgumentError(f"matmul_batch_norm_relu: h must be bfloat16, found {h.dtype.name}")
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    gamma = tf.convert_to_tensor(gamma, tf.float32)
    beta = tf.convert_to_tensor(beta, tf.float32)
    weights = tf.zeros([0], tf.float32) if weights is None else tf.convert_to_tensor(weights, tf.float32)
    ops = lib.load()

    def product(h, kernel):
        if row_splits is None:
            return tuple(ops.hsr_mat_mul_moments(h, kernel, weights))
        # With the fused backward pass the max layer's product is recomputed there: not written here.
        return tuple(ops.hsr_mat_mul_moments_extremes(h, kernel, weights, row_splits, keep_product=not product_grad))

    if not product_grad:
        @tf.custom_gradient
        def differentiable_product(h, kernel):
            def grad(dz, *unused):  # the statistics carry no gradient (see the BatchNorm ops' gradients)
                del unused
                return product_gradients(h, tf.cast(kernel, tf.bfloat16), dz, slabs)

            return product(h, kernel), grad

        outs = differentiable_product(h, kernel)
    else:
        outs = product(h, kernel)  # differentiated by the BatchNorm op's fused gradient
    z, mean, variance = outs[:3]
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
    if row_splits is None:
        out = ops.hsr_batch_norm_relu_from_moments(z, gamma, beta, weights, mean, variance, h, kernel,
                                                   epsilon=float(epsilon), product_grad=product_grad)
    else:
        out, _, _ = ops.hsr_batch_norm_relu_max_from_extremes(z, gamma, beta, weights, row_splits, mean, variance,
                                                           *outs[3:], h, kernel, epsilon=float(epsilon),
                                                           product_grad=product_grad)
    return out, mean, variance
