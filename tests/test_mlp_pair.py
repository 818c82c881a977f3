"""A hidden layer and the max layer after it as one pair (``mlp_pair.matmul_batch_norm_relu_max_pair``), and the
pair after a linear first layer on a few channels (``mlp_pair.linear_relu_pair_max``).

Compared with the same layers as separate ``linear_relu`` / ``matmul_batch_norm_relu`` calls (the path they
replace): the forward outputs and the moments bit for bit (the joined layers form the activations they no longer
write exactly as the separate ops write them); the gradients bit for bit where the max layer's backward pass
recomputes its product and the sums moved into other passes group the rows alike, otherwise within the order in
which those sums are added; ragged weighted groups, zero and negative gammas, row counts that are not multiples of
32, first layers on the AVX-512 and the generic loops; bad arguments.
"""
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.ops import mlp_pair, mlp_train

pytestmark = pytest.mark.skipif(not mlp_train.bf16_products_available(),
                                reason="needs the compiled ops and a CPU with AMX-BF16")


def _inputs(rng, rows, cin, c1, c2, groups):
    h = tf.cast(np.maximum(rng.normal(size=(rows, cin)), 0).astype(np.float32), tf.bfloat16)
    params = []
    for a, b in ((cin, c1), (c1, c2)):
        gamma = (rng.uniform(0.5, 1.5, b) * rng.choice([-1.0, 1.0], b)).astype(np.float32)
        gamma[0] = 0.0  # a constant channel: every row ties
        params += [tf.constant((rng.normal(size=(a, b)) * 0.25).astype(np.float32)), tf.constant(gamma),
                   tf.constant((rng.normal(size=b) * 0.3).astype(np.float32))]
    weights = tf.constant(rng.integers(1, 4, size=rows).astype(np.float32))
    cuts = np.sort(rng.choice(np.arange(1, rows), size=groups - 1, replace=False))
    splits = tf.constant(np.concatenate([[0], cuts, [rows]]).astype(np.int32))
    upstream = tf.constant(rng.normal(size=(groups, c2)).astype(np.float32))
    return h, params, weights, splits, upstream


def _run(paired, h, params, weights, splits, upstream):
    """[pooled, mean1, var1, mean2, var2] and the gradients of h, kernel1, gamma1, beta1, kernel2, gamma2, beta2."""
    k1, g1, b1, k2, g2, b2 = params
    with tf.GradientTape() as tape:
        tape.watch([h] + params)
        if paired:
            out, (m1, v1), (m2, v2) = mlp_pair.matmul_batch_norm_relu_max_pair(
                h, k1, g1, b1, 1e-3, k2, g2, b2, 2e-3, splits, weights=weights)
        else:
            h1, m1, v1 = mlp_train.matmul_batch_norm_relu(h, k1, g1, b1, 1e-3, weights=weights)
            out, m2, v2 = mlp_train.matmul_batch_norm_relu(h1, k2, g2, b2, 2e-3, weights=weights, row_splits=splits)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grads = tape.gradient(loss, [h] + params)
    return [tf.cast(t, tf.float32).numpy() for t in [out, m1, v1, m2, v2]], [g.numpy().astype(np.float32)
                                                                           for g in grads]


# (rows, Cin, C1, C2, groups): the Gram path needs >= 64 Cin rows by default; both paths are forced below.
@pytest.mark.parametrize("rows,cin,c1,c2,groups", [(4100, 64, 64, 128, 300), (777, 32, 64, 96, 40),
                                                   (2051, 128, 128, 256, 90)])
@pytest.mark.parametrize("max_grad", ["gram", "recompute"])
def test_pair_equals_two_fused_layers(rows, cin, c1, c2, groups, max_grad, rng, monkeypatch):
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", max_grad)
    inputs = _inputs(rng, rows, cin, c1, c2, groups)
    out_pair, grads_pair = _run(True, *inputs)
    out_two, grads_two = _run(False, *inputs)
    for name, a, b in zip(["pooled", "mean1", "variance1", "mean2", "variance2"], out_pair, out_two):
        np.testing.assert_array_equal(a, b, err_msg=name)
    names = ["dh", "dkernel1", "dgamma1", "dbeta1", "dkernel2", "dgamma2", "dbeta2"]
    for name, a, b in zip(names, grads_pair, grads_two):
        if max_grad == "recompute" or name in ("dkernel2", "dgamma2", "dbeta2"):
            # Recomputing: the hidden sums come from the same GradSums pass; the max layer's own gradients never
            # depend on them.
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            # The hidden sums added per strip of 32 rows instead of per block: float32 order, and the bfloat16
            # gradients of the rows may round the other way (dh: a rare element by one bfloat16 step, 2^-8 to
            # 2^-7 of its value; seen with the AVX512-BF16 products).
            close = np.isclose(a, b, rtol=0, atol=2e-4 * np.abs(b).max())
            one_step = np.abs(a - b) <= 2.0 ** -7 * np.abs(b)
            assert (close | one_step).all(), (name, np.abs(a - b).max())
            assert np.mean(~close) < 1e-4, (name, np.mean(~close))
        assert np.isfinite(a).all() and np.abs(a).max() > 0, name


def test_bad_arguments(rng):
    h, (k1, g1, b1, k2, g2, b2), weights, splits, _ = _inputs(rng, 200, 32, 32, 64, 10)
    with pytest.raises(ValueError, match="h must be bfloat16"):
        mlp_pair.matmul_batch_norm_relu_max_pair(tf.cast(h, tf.float32), k1, g1, b1, 1e-3, k2, g2, b2, 1e-3, splits)
    with pytest.raises(ValueError, match=r"a kernel must have shape \[32, C\] \(the outputs of the kernel"):
        mlp_pair.matmul_batch_norm_relu_max_pair(h, k1, g1, b1, 1e-3, tf.zeros([64, 64]), g2, b2, 1e-3, splits)
    from hsr_tf.ops import compiled
    lib = compiled.load()
    z1, m1, v1 = lib.hsr_mat_mul_moments(h, k1, weights)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gamma must have shape \[32\]"):
        lib.hsr_bn_relu_mat_mul_moments_extremes(z1, k2, weights, splits, tf.zeros([31]), b1, m1, v1,
                                                 prev_epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dbeta_sum must have shape \[32\]"):
        lib.hsr_batch_norm_relu_grad_product_from_sums(tf.zeros_like(z1), z1, weights, g1, b1, m1, v1, h, k1,
                                                       tf.zeros([5], tf.float64), tf.zeros([32], tf.float64),
                                                       epsilon=1e-3)


def _run_linear(joined, u, kernel0, bias0, params, weights, splits, upstream):
    """As _run for linear_relu(u, kernel0, bias0) followed by the two layers: outputs, and the gradients of u,
    kernel0, bias0 and the two layers' parameters."""
    k1, g1, b1, k2, g2, b2 = params
    watched = [u, kernel0, bias0] + params
    with tf.GradientTape() as tape:
        tape.watch(watched)
        if joined:
            out, (m1, v1), (m2, v2) = mlp_pair.linear_relu_pair_max(u, kernel0, bias0, k1, g1, b1, 1e-3, k2, g2, b2,
                                                                    2e-3, splits, weights=weights)
        else:
            h0 = mlp_train.linear_relu(u, kernel0, bias0, tf.bfloat16)
            h1, m1, v1 = mlp_train.matmul_batch_norm_relu(h0, k1, g1, b1, 1e-3, weights=weights)
            out, m2, v2 = mlp_train.matmul_batch_norm_relu(h1, k2, g2, b2, 2e-3, weights=weights, row_splits=splits)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grads = tape.gradient(loss, watched)
    return [tf.cast(t, tf.float32).numpy() for t in [out, m1, v1, m2, v2]], [g.numpy() for g in grads]


# (rows, K, C0, C1, C2, groups): K = 3, C0 = 64 takes the first layer's AVX-512 loops, K = 5 or C0 = 32 the generic
# ones; 40 000 rows make more blocks than the backward pass has chunks (its first-layer sums group blocks).
@pytest.mark.parametrize("rows,k,c0,c1,c2,groups", [(4100, 3, 64, 64, 128, 300), (777, 5, 32, 64, 96, 40),
                                                    (40000, 3, 64, 64, 128, 1500)])
@pytest.mark.parametrize("max_grad", ["gram", "recompute"])
def test_linear_first_layer_joins_the_pair(rows, k, c0, c1, c2, groups, max_grad, rng, monkeypatch):
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", max_grad)
    _, params, weights, splits, upstream = _inputs(rng, rows, c0, c1, c2, groups)
    u = tf.constant(rng.normal(size=(rows, k)).astype(np.float32))
    kernel0 = tf.constant(rng.normal(size=(k, c0)).astype(np.float32))
    bias0 = tf.constant((rng.normal(size=c0) * 0.5).astype(np.float32))
    out_joined, grads_joined = _run_linear(True, u, kernel0, bias0, params, weights, splits, upstream)
    out_apart, grads_apart = _run_linear(False, u, kernel0, bias0, params, weights, splits, upstream)
    for name, a, b in zip(["pooled", "mean1", "variance1", "mean2", "variance2"], out_joined, out_apart):
        np.testing.assert_array_equal(a, b, err_msg=name)
    names = ["du", "dkernel0", "dbias0", "dkernel1", "dgamma1", "dbeta1", "dkernel2", "dgamma2", "dbeta2"]
    for name, a, b in zip(names, grads_joined, grads_apart):
        # The first layer's sums and (default path) the hidden layer's are added in another order; du is formed from
        # the same rounded dh0, row by row.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * np.abs(b).max(), err_msg=name)
        assert np.isfinite(a).all() and np.abs(a).max() > 0, name


def test_linear_bad_arguments(rng):
    _, (k1, g1, b1, k2, g2, b2), weights, splits, _ = _inputs(rng, 200, 32, 32, 64, 10)
    u = tf.zeros([200, 17])
    with pytest.raises(ValueError, match=r"u must have shape \[R, K\] with 1 <= K <= 16"):
        mlp_pair.linear_relu_pair_max(u, tf.zeros([17, 32]), tf.zeros([32]), k1, g1, b1, 1e-3, k2, g2, b2, 1e-3,
                                      splits)
    with pytest.raises(ValueError, match=r"a kernel must have shape \[48, C\]"):
        mlp_pair.linear_relu_pair_max(tf.zeros([200, 3]), tf.zeros([3, 48]), tf.zeros([48]), k1, g1, b1, 1e-3, k2,
                                      g2, b2, 1e-3, splits)
    from hsr_tf.ops import compiled
    lib = compiled.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernel0 must have shape \[3, Cin\]"):
        lib.hsr_linear_relu_mat_mul_moments(tf.zeros([200, 3]), k1, weights, tf.zeros([3, 40]), tf.zeros([40]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"u must have shape \[200, K\]"):
        lib.hsr_batch_norm_relu_grad_product_linear(
            tf.zeros([200, 32], tf.bfloat16), tf.zeros([200, 32], tf.bfloat16), weights, g1, b1, g1, g1 + 1.0,
            tf.zeros([100, 3]), k1, tf.zeros([32], tf.float64), tf.zeros([32], tf.float64), tf.zeros([3, 32]),
            tf.zeros([32]), epsilon=1e-3)
