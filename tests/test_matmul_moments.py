"""A layer's compiled bfloat16 product (AMX tiles or AVX512-BF16 dot products) with its BatchNorm statistics in the
same pass (``mlp_train.matmul_batch_norm_relu``).

Compared with the two-step path it replaces (``tf.matmul`` in bfloat16, then the fused BatchNorm + ReLU (+ max)
kernels): outputs, moments, gradients of h, kernel, gamma and beta; ragged weighted groups, negative and zero
gammas (the max is taken at the group's smallest z, or the first row), row counts that are not multiples of the
32-row tile strips, channel counts with and without the AVX-512 extremes loop; and the set-abstraction levels
with the switch on and off.
"""
import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.layers import training_path
from hsr_tf.ops import mlp_train

pytestmark = pytest.mark.skipif(not mlp_train.bf16_products_available(),
                                reason="needs the compiled ops and a CPU with AMX-BF16 or AVX512-BF16")


def _same_instructions_as_tensorflow():
    """Whether our products run on the instructions TensorFlow's (oneDNN's) bfloat16 matmul uses here, so that
    both give the same bits: yes, unless HSR_TF_OPS_AMX=0 forces the dot products on a CPU with AMX, which oneDNN
    still uses (tests/test_bf16_products.py reruns this file that way): then the float32 sums of the same exact
    products may be added in another order."""
    if os.environ.get("HSR_TF_OPS_AMX") != "0":
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            return "amx_bf16" not in fh.read()
    except OSError:
        return False


def _inputs(rng, rows, cin, c, groups=None):
    h = tf.cast(np.maximum(rng.normal(size=(rows, cin)), 0).astype(np.float32), tf.bfloat16)
    kernel = tf.constant((rng.normal(size=(cin, c)) * 0.2).astype(np.float32))
    gamma = (rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)).astype(np.float32)
    gamma[0] = 0.0  # every y of channel 0 equal: the max is the group's first row
    beta = (rng.normal(size=c) * 0.3).astype(np.float32)
    weights = tf.constant(rng.integers(1, 4, size=rows).astype(np.float32))
    splits = None
    if groups:
        cuts = np.sort(rng.choice(np.arange(1, rows), size=groups - 1, replace=False))
        splits = tf.constant(np.concatenate([[0], cuts, [rows]]).astype(np.int32))
    return h, kernel, tf.constant(gamma), tf.constant(beta), weights, splits


def _assert_close(g, r, name, same_bits):
    """Within bfloat16 roundings (rtol 8e-3). With other float32 sums of the products (not same_bits) a rare z
    is one bfloat16 step off, which moves a small y = z * scale + shift by |scale| times that step: few such
    elements, each within 2^-7 of the largest."""
    tol = dict(rtol=8e-3, atol=1e-6 * np.abs(r).max())
    if not same_bits:
        assert np.mean(~np.isclose(g, r, **tol)) < 1e-3, name
        tol["atol"] = 2.0 ** -7 * np.abs(r).max()
    np.testing.assert_allclose(g, r, **tol, err_msg=name)


def _run(fused, h, kernel, gamma, beta, weights, splits, upstream, slabs=0, product_grad=False):
    """[out, mean, variance, dh, dkernel, dgamma, dbeta] (and, for the two-step path, dz)."""
    z = None
    with tf.GradientTape() as tape:
        tape.watch([h, kernel, gamma, beta])
        if fused:
            out, mean, var = mlp_train.matmul_batch_norm_relu(h, kernel, gamma, beta, 1e-3, weights=weights,
                                                              row_splits=splits, slabs=slabs,
                                                              product_grad=product_grad)
        else:
            z = tf.matmul(h, tf.cast(kernel, tf.bfloat16))
            tape.watch(z)
            out, mean, var = mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, row_splits=splits, weights=weights,
                                                       compiled=True)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grads = tape.gradient(loss, [h, kernel, gamma, beta] + ([z] if z is not None else []))
    return [tf.cast(t, tf.float32).numpy() for t in [out, mean, var] + grads]


@pytest.mark.parametrize("rows,cin,c,groups", [(1000, 64, 128, 40), (77, 32, 96, 5), (1000, 64, 64, None),
                                               (531, 128, 32, None), (600, 32, 64, 600),
                                               # kernels of >= 256 KB: strips of h staged in tile order
                                               (300, 256, 512, 12), (299, 512, 256, None)])
def test_equals_the_two_step_path(rows, cin, c, groups, rng, monkeypatch):
    # The max layers' backward pass that recomputes z and dz (its default never forms them: the test below).
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", "recompute")
    h, kernel, gamma, beta, weights, splits = _inputs(rng, rows, cin, c, groups)
    upstream = tf.constant(rng.normal(size=(groups or rows, c)).astype(np.float32))
    got = _run(True, h, kernel, gamma, beta, weights, splits, upstream)
    ref = _run(False, h, kernel, gamma, beta, weights, splits, upstream)
    names = ["out", "mean", "variance", "dh", "dkernel", "dgamma", "dbeta"]
    # The products agree to the last bit (float32 sums of exact bfloat16 products, rounded once). Without groups
    # the moments are summed over the same blocks, so everything downstream agrees too; group-aligned blocks
    # add the moments in another order (the last float32 bit of a variance), which can move a bfloat16 result
    # by one rounding step.
    same_bits = _same_instructions_as_tensorflow()
    for name, g, r in zip(names, got, ref):
        if groups is None and same_bits:
            np.testing.assert_array_equal(g, r, err_msg=name)
        else:
            _assert_close(g, r, name, same_bits)
            if g.size > 1000:  # most bfloat16 results do not move
                assert np.mean(g == r) > 0.9, name
    assert np.abs(got[0]).max() > 0
    # The kernel gradient summed over slabs in float32: within one bfloat16 rounding of the one product.
    slabbed = _run(True, h, kernel, gamma, beta, weights, splits, upstream, slabs=4)
    np.testing.assert_allclose(slabbed[4], ref[4], rtol=0, atol=8e-3 * np.abs(ref[4]).max())
    # The fused backward pass: dh as the two-step path's (the same dz, rounded to bfloat16, times the same
    # kernel); dkernel summed in float32 over all rows, against h^T dz in float64 (tighter than the bfloat16
    # product of the two-step path).
    fused = _run(True, h, kernel, gamma, beta, weights, splits, upstream, product_grad=True)
    for name, g, r in zip(names, fused, ref):
        if name != "dkernel":
            _assert_close(g, r, name, same_bits)
    exact = tf.cast(h, tf.float32).numpy().astype(np.float64).T @ ref[7].astype(np.float64)
    np.testing.assert_allclose(fused[4], exact, rtol=0, atol=(2e-5 if same_bits else 2e-3) * np.abs(exact).max())


def _exact_max_grads(h, kernel, gamma, beta, weights, splits, upstream, mean, variance, eps=1e-3):
    """dh, dkernel in float64 for the bfloat16 forward pass (z = h kernel rounded to bfloat16, its moments, the
    first row of a group's largest y), the BatchNorm + ReLU + max gradient written out by hand."""
    hb = tf.cast(h, tf.float64).numpy()
    kb = tf.cast(tf.cast(kernel, tf.bfloat16), tf.float64).numpy()
    z = tf.cast(tf.matmul(h, tf.cast(kernel, tf.bfloat16)), tf.float64).numpy()
    g, w, up = (np.asarray(t, np.float64) for t in (gamma, weights, upstream))
    inv = 1.0 / np.sqrt(np.asarray(variance, np.float64) + eps)
    xhat = (z - mean) * inv
    y = xhat * g + np.asarray(beta, np.float64)
    dy = np.zeros_like(z)
    s = np.asarray(splits)
    for gi in range(len(s) - 1):
        am = y[s[gi]:s[gi + 1]].argmax(0)  # numpy's argmax is the first of equal values, as the kernels'
        for k in range(z.shape[1]):
            if y[s[gi] + am[k], k] > 0:
                dy[s[gi] + am[k], k] = up[gi, k]
    total = w.sum()
    a, b = dy.sum(0) / total, (dy * xhat).sum(0) / total
    dz = g * inv * (dy - w[:, None] * (a + xhat * b))
    return dz @ kb.T, hb.T @ dz


@pytest.mark.parametrize("rows,cin,c,groups", [(1000, 64, 128, 40), (77, 32, 96, 5), (600, 32, 64, 600),
                                               (300, 256, 512, 12), (3000, 128, 256, 50)])
def test_max_layer_backward_without_the_product(rows, cin, c, groups, rng, monkeypatch):
    """The default backward pass of a max layer (dh and dkernel from h's Gram matrix and the argmax rows, never
    forming z or dz) against the float64 gradient of the same bfloat16 forward pass: at least as close as the
    path that recomputes z and rounds every dz (measured: dh 2.3-2.4e-3 vs 2.9e-3 relative, dkernel 1.6-1.8e-3
    vs 2.5-2.8e-3), and the same dgamma, dbeta (both paths sum the argmax rows only)."""
    h, kernel, gamma, beta, weights, splits = _inputs(rng, rows, cin, c, groups)
    upstream = tf.constant(rng.normal(size=(groups, c)).astype(np.float32))
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", "recompute")
    recompute = _run(True, h, kernel, gamma, beta, weights, splits, upstream, product_grad=True)
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", "gram")  # by default it runs from 64 Cin rows
    gram = _run(True, h, kernel, gamma, beta, weights, splits, upstream, product_grad=True)
    dh, dkernel = _exact_max_grads(h, kernel, gamma.numpy(), beta.numpy(), weights.numpy(), splits.numpy(),
                                   upstream.numpy(), recompute[1], recompute[2])

    def err(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    for name, i, exact in (("dh", 3, dh), ("dkernel", 4, dkernel)):
        assert err(gram[i], exact) < 4e-3, name
        assert err(gram[i], exact) <= 1.05 * err(recompute[i], exact), name
    for i in (0, 1, 2, 5, 6):  # forward outputs, dgamma, dbeta
        np.testing.assert_array_equal(gram[i], recompute[i])


def test_max_of_a_negative_scale_is_at_the_smallest_row():
    """With gamma < 0 the largest BatchNorm output of a group is at its smallest pre-activation (by hand)."""
    h = tf.cast([[1.0] * 32, [3.0] * 32, [2.0] * 32, [0.5] * 32], tf.bfloat16)  # z = h @ kernel: rows 1, 3, 2, .5
    kernel = tf.constant(np.full((32, 32), 1.0 / 32, np.float32))
    gamma = tf.constant(np.r_[-np.ones(16), np.ones(16)].astype(np.float32))
    beta = tf.zeros([32])
    splits = tf.constant([0, 3, 4], tf.int32)
    out, mean, var = mlp_train.matmul_batch_norm_relu(h, kernel, gamma, beta, 0.0, row_splits=splits)
    z = np.array([1.0, 3.0, 2.0, 0.5])
    np.testing.assert_allclose(mean, np.full(32, z.mean()), rtol=1e-6)
    np.testing.assert_allclose(var, np.full(32, z.var()), rtol=1e-5)
    xhat = (z - z.mean()) / np.sqrt(z.var())
    expected = np.stack([np.r_[np.full(16, max(-xhat[:3].min(), 0)), np.full(16, max(xhat[:3].max(), 0))],
                         np.r_[np.full(16, max(-xhat[3], 0)), np.full(16, max(xhat[3], 0))]])
    np.testing.assert_allclose(tf.cast(out, tf.float32), expected, rtol=1e-2, atol=1e-2)


def test_bad_arguments(rng):
    h, kernel, gamma, beta, _, _ = _inputs(rng, 40, 32, 32)
    with pytest.raises(ValueError, match="h must be bfloat16"):
        mlp_train.matmul_batch_norm_relu(tf.cast(h, tf.float32), kernel, gamma, beta, 1e-3)
    from hsr_tf.ops import compiled
    lib = compiled.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="Cin a positive multiple of 32"):
        lib.hsr_mat_mul_moments(tf.zeros([4, 20], tf.bfloat16), tf.zeros([20, 32]), tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernel must have shape \[32, C\]"):
        lib.hsr_mat_mul_moments(h, tf.zeros([32, 40]), tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="row_splits must start at 0"):
        lib.hsr_mat_mul_moments_extremes(h, kernel, tf.zeros([0]), tf.constant([0, 39], tf.int32))


def test_set_abstraction_levels_train_the_same_with_and_without_the_fused_products(rng, monkeypatch):
    """Under mixed_bfloat16 the levels use the fused products (layers of 32-multiple widths) and give the
    two-step path's outputs, gradients and moving statistics bit for bit."""
    from hsr_tf.layers.set_abstraction import GlobalSetAbstraction, SetAbstraction
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        xyz = tf.constant(rng.normal(size=(3, 200, 3)).astype(np.float32))
        sa1 = SetAbstraction(48, 0.5, 16, [32, 32, 64])
        sa2 = SetAbstraction(12, 1.0, 10, [32, 32, 64])
        glob = GlobalSetAbstraction([32, 64])
        p1, f1 = sa1(xyz, training=False)
        p2, f2 = sa2(p1, f1, training=False)
        glob(p2, f2, training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    layers = [sa1, sa2, glob]
    variables = [v for layer in layers for v in layer.variables]
    state = [v.numpy() for v in variables]
    weights = [w for layer in layers for w in layer.trainable_variables]

    def run(path):
        for v, s in zip(variables, state):
            v.assign(s)
        with training_path.use(path):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    q1, g1 = sa1(xyz, training=True)
                    q2, g2 = sa2(q1, g1, training=True)
                    out = glob(q2, g2, training=True)
                    loss = tf.reduce_sum(tf.square(out - 0.3))
                return out, tape.gradient(loss, weights)
            out, grads = step()
            types = {op.type for op in step.get_concrete_function().graph.get_operations()}
        return [out.numpy()] + [g.numpy() for g in grads] + [v.numpy() for v in variables], types

    fused, fused_types = run(dataclasses.replace(training_path.FAST, fused_product_grads=False))
    plain, plain_types = run(dataclasses.replace(training_path.FAST, fused_products=False))
    assert {"HsrMatMulMoments", "HsrMatMulMomentsExtremes"} <= fused_types
    assert "HsrMatMulMoments" not in plain_types
    for a, b in zip(fused, plain):
        if _same_instructions_as_tensorflow():
            np.testing.assert_array_equal(a, b)
        else:  # other float32 sums: a bfloat16 result may round the other way, and its effects flow on
            np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * max(1e-6, np.abs(b).max()))
    # With the fused backward pass too: the kernel gradients of the fused layers are float32 sums (within a
    # bfloat16 rounding of TensorFlow's bfloat16 products), and what flows on through dh stays within it.
    # (Max layers on both backward paths: without z and dz, the default, whose other roundings decorrelate it
    # from the two-step path by up to 1.8 % of a gradient's largest value over 12 seeds; and recomputing them,
    # which rounds dz as the two-step path does: up to 0.4 %.)
    # The last two layers as one pair (fused_pairs, the default) and as two fused layers: both checked.
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", "gram")  # these levels have fewer rows than its default needs
    unpaired = dataclasses.replace(training_path.FAST, fused_pairs=False)
    both, both_types = run(unpaired)
    assert {"HsrBatchNormReluGradProduct", "HsrBatchNormReluMaxGradProduct"} <= both_types, both_types
    paired, paired_types = run(training_path.FAST)
    # sa1 (folded 3 -> 32, then 32 -> 32 -> 64) trains as one unit, sa2's last two layers (32 -> 32 -> 64) as a pair.
    assert {"HsrLinearReluMatMulMoments", "HsrBatchNormReluGradProductLinear", "HsrBnReluMatMulMomentsExtremes",
            "HsrBatchNormReluMaxGradProductPair", "HsrBatchNormReluGradProductFromSums"} <= paired_types, paired_types
    assert not {"HsrBatchNormReluFromMoments", "HsrLinearRelu", "HsrLinearReluGrad"} & paired_types
    monkeypatch.setenv("HSR_TF_OPS_MAX_GRAD", "recompute")
    recomputed, _ = run(unpaired)
    for a, b, c, d in zip(both, plain, recomputed, paired):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * max(1e-6, np.abs(b).max()))
        np.testing.assert_allclose(c, b, rtol=2e-2, atol=5e-3 * max(1e-6, np.abs(b).max()))
        # The pairs differ from separate fused layers only in the order the moved sums are added.
        np.testing.assert_allclose(d, a, rtol=1e-3, atol=1e-3 * max(1e-6, np.abs(a).max()))


def test_layers_wider_than_fused_max_channels_keep_the_two_step_path(rng):
    """The fused products stop at ``fused_max_channels`` outputs: a 64 -> 288 layer of a shared MLP traces to
    TensorFlow's product and the BatchNorm kernel, its 32 -> 64 neighbour to the fused op; raising the limit
    fuses both."""
    from hsr_tf.layers.set_abstraction import GlobalSetAbstraction
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        glob = GlobalSetAbstraction([32, 64, 288])
        xyz = tf.constant(rng.normal(size=(2, 40, 3)).astype(np.float32))
        feats = tf.constant(rng.normal(size=(2, 40, 32)).astype(np.float32))
        glob(xyz, feats, training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    def fused_widths(path):
        with training_path.use(path):
            graph = tf.function(lambda: glob(xyz, feats, training=True)).get_concrete_function().graph
        return sorted(op.outputs[0].shape[-1] for op in graph.get_operations()
                      if op.type in ("HsrMatMulMoments", "HsrMatMulMomentsExtremes", "HsrBnReluMatMulMomentsExtremes"))

    assert training_path.FAST.fused_max_channels == 256
    assert fused_widths(dataclasses.replace(training_path.FAST, fused_max_channels=256)) == [64]
    assert fused_widths(dataclasses.replace(training_path.FAST, fused_max_channels=288)) == [64, 288]
