"""The last layers of a PointNet++ shared MLP trained as one unit, so that the layers between them are never written.

Legend: R rows, G groups (row_splits int32 [G+1]), K input channels of a linear first layer (<= 16), C0, C1, C2
channels (multiples of 32); weights float32 [R] row multiplicities or None; bfloat16 activations, float32
parameters. ``mlp_train.matmul_batch_norm_relu`` fuses a layer's product with its BatchNorm statistics; chained,
two such layers still write the hidden activation h1 [R, C1] (read by the next product and by both backward
passes) and make two passes over (dh1, z1) backward. Here:

* :func:`matmul_batch_norm_relu_max_pair` (a hidden layer, then the max layer): the max layer's product forms
  each block of h1 = relu(BatchNorm(z1)) from the hidden product z1 as its prologue (``HsrBnReluMatMulMomentsExtremes``:
  the same values, bit for bit, as the BatchNorm op writes), and its backward pass
  (``HsrBatchNormReluMaxGradProductPair``) forms h1 the same way and takes the hidden layer's backward sums while
  each block of dh1 is in cache; the hidden layer's backward pass (``HsrBatchNormReluGradProductFromSums``) then
  makes one pass over (dh1, z1) instead of two.
* :func:`linear_relu_pair_max`: the same pair after a linear + ReLU first layer on a few channels (the first
  level's folded first layer, ``mlp_train.linear_relu``): its rows h0 = max(u kernel0 + bias0, 0) are formed per
  block in the hidden product's prologue (``HsrLinearReluMatMulMoments``) and in the hidden layer's backward pass
  (``HsrBatchNormReluGradProductLinear``), which also takes the first layer's gradient (kernel0, bias0) from each
  block of dh0 in cache: neither h0 nor dh0 is ever written. The gradient of u comes from a second call of that op
  (``input_grad``), which a graph prunes where u is data, as the training path's coordinates are.

Forward values equal the separate layers' bit for bit; gradients equal them up to the order in which the moved
sums are added (tests/test_mlp_pair.py). CPU with AMX or AVX512-BF16 only
(``mlp_train.bf16_products_available``).
"""
from __future__ import annotations

import tensorflow as tf

from hsr_tf.ops import _checks

__all__ = ["linear_relu_pair_max", "matmul_batch_norm_relu_max_pair"]


def _floats(name, kernels, *others):
    """The kernels and the other parameters as float32 tensors; each kernel [a, b] must take the b outputs of the
    one before it."""
    kernels = [tf.convert_to_tensor(k, tf.float32) for k in kernels]
    for before, k in zip(kernels[:-1], kernels[1:]):
        if k.shape.rank != 2 or before.shape.rank != 2 or k.shape[0] != before.shape[1]:
            raise _checks.OpArgumentError(f"{name}: a kernel must have shape [{before.shape[-1]}, C] (the outputs "
                                          f"of the kernel {before.shape} before it), found {k.shape}")
    return kernels, [tf.convert_to_tensor(t, tf.float32) for t in others]


def _max_layer(ops, z1, mean1, var1, gamma1, beta1, eps1, kernel2, gamma2, beta2, eps2, weights, row_splits):
    """The max layer on relu(BatchNorm(z1)): (pooled, mean2, var2, backward), backward(dpooled) giving
    (dh1, dkernel2, dgamma2, dbeta2, dbeta1_sum, dgamma1_sum)."""
    outs = ops.hsr_bn_relu_mat_mul_moments_extremes(z1, kernel2, weights, row_splits, gamma1, beta1, mean1, var1,
                                                    prev_epsilon=eps1)
    z2, mean2, var2 = outs[:3]  # z2 has no rows: the backward pass does not read it
    # z1 stands in for the layer's input rows (their count, for the weights); the gradient is backward() below.
    pooled, argmax, zsel = ops.hsr_batch_norm_relu_max_from_extremes(
        z2, gamma2, beta2, weights, row_splits, mean2, var2, *outs[3:], z1, kernel2, epsilon=eps2, product_grad=True)

    def backward(dpooled):
        return ops.hsr_batch_norm_relu_max_grad_product_pair(
            dpooled, argmax, zsel, weights, row_splits, gamma2, beta2, mean2, var2, z1, kernel2, gamma1, beta1, mean1,
            var1, epsilon=eps2, prev_epsilon=eps1)

    return pooled, mean2, var2, backward


def _common(weights, row_splits):
    from hsr_tf.ops import compiled as lib  # noqa: PLC0415
    weights = tf.zeros([0], tf.float32) if weights is None else tf.convert_to_tensor(weights, tf.float32)
    return lib.load(), weights, tf.convert_to_tensor(row_splits, tf.int32)


def matmul_batch_norm_relu_max_pair(h, kernel1, gamma1, beta1, epsilon1: float, kernel2, gamma2, beta2,
                                    epsilon2: float, row_splits, weights=None):
    """``batch_norm_relu(h1 @ kernel2, row_splits=...)`` with ``h1 = batch_norm_relu(h @ kernel1)``: two
    ``mlp_train.matmul_batch_norm_relu`` calls with h1 never written (module docstring).

    Args:
      h: bfloat16 [R, Cin]; kernel1 float32 [Cin, C1], kernel2 float32 [C1, C2].
      gamma1, beta1 [C1], gamma2, beta2 [C2]: float32 BatchNorm parameters; epsilon1, epsilon2 their epsilons.
      row_splits: int32 [G+1], the max layer's groups; weights: None or float32 [R].
    Returns:
      ``(pooled [G, C2] bfloat16, (mean1, variance1), (mean2, variance2))``, the moments float32 without gradient;
      differentiable in h, the kernels, gammas and betas.
    """
    h = tf.convert_to_tensor(h)
    if h.dtype != tf.bfloat16:
        raise _checks.OpArgumentError(f"matmul_batch_norm_relu_max_pair: h must be bfloat16, found {h.dtype.name}")
    (kernel1, kernel2), (gamma1, beta1, gamma2, beta2) = _floats("matmul_batch_norm_relu_max_pair",
                                                                 (kernel1, kernel2), gamma1, beta1, gamma2, beta2)
    ops, weights, row_splits = _common(weights, row_splits)
    eps1, eps2 = float(epsilon1), float(epsilon2)

    @tf.custom_gradient
    def pair(h, kernel1, gamma1, beta1, kernel2, gamma2, beta2):
        z1, mean1, var1 = ops.hsr_mat_mul_moments(h, kernel1, weights)
        pooled, mean2, var2, backward = _max_layer(ops, z1, mean1, var1, gamma1, beta1, eps1, kernel2, gamma2,
                                                   beta2, eps2, weights, row_splits)

        def grad(dpooled, *unused):  # the moments carry no gradient (the BatchNorm gradients hold their share)
            del unused
            dh1, dkernel2, dgamma2, dbeta2, dbeta1_sum, dgamma1_sum = backward(dpooled)
            dh, dkernel1, dgamma1, dbeta1 = ops.hsr_batch_norm_relu_grad_product_from_sums(
                dh1, z1, weights, gamma1, beta1, mean1, var1, h, kernel1, dbeta1_sum, dgamma1_sum, epsilon=eps1)
            return dh, dkernel1, dgamma1, dbeta1, dkernel2, dgamma2, dbeta2

        return (pooled, mean1, var1, mean2, var2), grad

    pooled, mean1, var1, mean2, var2 = pair(h, kernel1, gamma1, beta1, kernel2, gamma2, beta2)
    stop = tf.stop_gradient
    return pooled, (stop(mean1), stop(var1)), (stop(mean2), stop(var2))


def linear_relu_pair_max(u, kernel0, bias0, kernel1, gamma1, beta1, epsilon1: float, kernel2, gamma2, beta2,
                         epsilon2: float, row_splits, weights=None):
    """:func:`matmul_batch_norm_relu_max_pair` on ``h = mlp_train.linear_relu(u, kernel0, bias0, bfloat16)``, with
    neither h nor its gradient ever written (module docstring).

    Args:
      u: float32 [R, K], 1 <= K <= 16; kernel0 float32 [K, C0], bias0 float32 [C0] (C0 a multiple of 32).
      kernel1 [C0, C1], the rest: as :func:`matmul_batch_norm_relu_max_pair`.
    Returns:
      As :func:`matmul_batch_norm_relu_max_pair`; differentiable in u, kernel0, bias0 and the two layers' kernels,
      gammas and betas.
    """
    u = tf.convert_to_tensor(u, tf.float32)
    if u.shape.rank != 2 or (u.shape[1] is not None and not 1 <= u.shape[1] <= 16):
        raise _checks.OpArgumentError(f"linear_relu_pair_max: u must have shape [R, K] with 1 <= K <= 16, found "
                                      f"{u.shape}")
    (kernel0, kernel1, kernel2), (bias0, gamma1, beta1, gamma2, beta2) = _floats(
        "linear_relu_pair_max", (kernel0, kernel1, kernel2), bias0, gamma1, beta1, gamma2, beta2)
    ops, weights, row_splits = _common(weights, row_splits)
    eps1, eps2 = float(epsilon1), float(epsilon2)

    @tf.custom_gradient
    def triple(u, kernel0, bias0, kernel1, gamma1, beta1, kernel2, gamma2, beta2):
        z1, mean1, var1 = ops.hsr_linear_relu_mat_mul_moments(u, kernel1, weights, kernel0, bias0)
        pooled, mean2, var2, backward = _max_layer(ops, z1, mean1, var1, gamma1, beta1, eps1, kernel2, gamma2,
                                                   beta2, eps2, weights, row_splits)

        def grad(dpooled, *unused):
            del unused
            dh1, dkernel2, dgamma2, dbeta2, dbeta1_sum, dgamma1_sum = backward(dpooled)
            args = (dh1, z1, weights, gamma1, beta1, mean1, var1, u, kernel1, dbeta1_sum, dgamma1_sum, kernel0, bias0)
            _, dkernel1, dgamma1, dbeta1, dkernel0, dbias0 = ops.hsr_batch_norm_relu_grad_product_linear(
                *args, epsilon=eps1)
            # du from a second call, which graphs where u is data (nothing reads du) prune: it would cost a pass over
            # the rows per block that the training path does not need.
            du = ops.hsr_batch_norm_relu_grad_product_linear(*args, epsilon=eps1, input_grad=True)[0]
            return du, dkernel0, dbias0, dkernel1, dgamma1, dbeta1, dkernel2, dgamma2, dbeta2

        return (pooled, mean1, var1, mean2, var2), grad

    pooled, mean1, var1, mean2, var2 = triple(u, kernel0, bias0, kernel1, gamma1, beta1, kernel2, gamma2, beta2)
    stop = tf.stop_gradient
    return pooled, (stop(mean1), stop(var1)), (stop(mean2), stop(var2))
