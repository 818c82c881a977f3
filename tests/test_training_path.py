"""The fast training path of the shared MLPs computes what the reference (Keras layer-by-layer) path computes.

Outputs, gradients (weights and input features) and the BatchNorm moving statistics after a training call are
compared between ``training_path.use(REFERENCE)`` and the default fast path, on the same layers; the clouds
are sparse enough that the ball query pads groups with duplicate rows (ties in the max over S).
"""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.layers import training_path
from hsr_tf.layers.set_abstraction import GlobalSetAbstraction, SetAbstraction
from hsr_tf.ops import mlp_train


def _set_stats(layers, rng):
    """Non-trivial gamma/beta/moving statistics, returned so every run can start from them."""
    state = []
    for layer in layers:
        for bn in layer.shared_mlp.bns:
            c = bn.gamma.shape[0]
            bn.gamma.assign(rng.uniform(0.5, 1.5, size=c).astype(np.float32) * rng.choice([-1, 1], size=c))
            bn.beta.assign(rng.normal(size=c).astype(np.float32) * 0.3)
            bn.moving_mean.assign(rng.normal(size=c).astype(np.float32))
            bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=c).astype(np.float32))
    for layer in layers:
        state += [v.numpy() for v in layer.shared_mlp.variables]
    return state


def _restore(layers, state):
    vs = [v for layer in layers for v in layer.shared_mlp.variables]
    for v, value in zip(vs, state):
        v.assign(value)


FAST_WITHOUT_KERNELS = dataclasses.replace(training_path.FAST, fused_kernels=False)
FAST_WITH_DUPLICATES = dataclasses.replace(training_path.FAST, drop_duplicates=False)


@pytest.mark.parametrize("grouping,use_xyz,normalize,fast", [
    ("ball", True, True, training_path.FAST), ("ball", True, False, training_path.FAST),
    ("knn", False, False, training_path.FAST), ("ball", True, True, FAST_WITHOUT_KERNELS),
    ("ball", True, False, FAST_WITH_DUPLICATES), ("ball", False, True, training_path.FAST)])
def test_fast_training_path_equals_reference(grouping, use_xyz, normalize, fast, rng):
    b, n = 3, 96
    xyz = tf.constant(rng.normal(size=(b, n, 3)).astype(np.float32))
    sa1 = SetAbstraction(24, 0.6, 12, [8, 16], grouping=grouping, normalize_by_radius=normalize)
    sa2 = SetAbstraction(8, 1.0, 10, [16, 12], grouping=grouping, use_xyz=use_xyz, normalize_by_radius=normalize)
    glob = GlobalSetAbstraction([16, 20])
    layers = [sa1, sa2, glob]
    p1, f1 = sa1(xyz, training=False)
    p2, f2 = sa2(p1, f1, training=False)
    glob(p2, f2, training=False)
    state = _set_stats(layers, rng)
    weights = [w for layer in layers for w in layer.trainable_variables]
    target = tf.constant(rng.normal(size=(b, 20)).astype(np.float32))

    def run(path):
        _restore(layers, state)
        with training_path.use(path):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    q1, g1 = sa1(xyz, training=True)
                    tape.watch(g1)
                    q2, g2 = sa2(q1, g1, training=True)
                    out = glob(q2, g2, training=True)
                    loss = tf.reduce_sum(tf.square(out - target))
                grads = tape.gradient(loss, weights + [g1])
                return out, grads
            out, grads = step()
        stats = [v.numpy() for layer in layers for bn in layer.shared_mlp.bns
                 for v in (bn.moving_mean, bn.moving_variance)]
        return out.numpy(), [g.numpy() for g in grads], stats

    ref_out, ref_grads, ref_stats = run(training_path.REFERENCE)
    out, grads, stats = run(fast)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)
    for g, rg, w in zip(grads, ref_grads, weights + ["features"]):
        np.testing.assert_allclose(g, rg, rtol=2e-3, atol=2e-3 * np.abs(rg).max(), err_msg=str(w))
    for s, rs in zip(stats, ref_stats):
        np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-6)
    # The statistics really moved (a path that skipped the update would keep the restored values).
    assert not np.allclose(stats[0], state[2])
    # The fast path is not silently the reference: the training graph has the compiled fused kernels (where
    # they can run) or FusedBatchNorm and MaxPool ops.
    with training_path.use(fast):
        graph = tf.function(lambda: glob(p2, f2, training=True)).get_concrete_function().graph
    types = {op.type for op in graph.get_operations()}
    if fast.fused_kernels and mlp_train.kernels_available():
        assert {"HsrBatchNormRelu", "HsrBatchNormReluMax"} <= types and "FusedBatchNormV3" not in types, types
    else:
        assert "FusedBatchNormV3" in types and "MaxPool" in types, types


def test_reference_switch_and_bad_argument():
    assert training_path.current() == training_path.FAST
    with training_path.use(training_path.REFERENCE):
        assert training_path.current() == training_path.REFERENCE
    assert training_path.current() == training_path.FAST
    with pytest.raises(TypeError, match="TrainingPath"):
        with training_path.use("fast"):
            pass


def test_frozen_batch_norm_keeps_the_reference_path(rng):
    """A non-trainable BatchNorm uses its moving statistics in training mode (Keras): no fused batch statistics."""
    sa = SetAbstraction(8, 0.8, 6, [5, 7])
    xyz = tf.constant(rng.normal(size=(2, 40, 3)).astype(np.float32))
    sa(xyz, training=False)
    for bn in sa.shared_mlp.bns:
        bn.trainable = False
    before = [bn.moving_mean.numpy() for bn in sa.shared_mlp.bns]
    np.testing.assert_allclose(sa(xyz, training=True)[1], sa(xyz, training=False)[1], rtol=1e-5, atol=1e-6)
    for bn, m in zip(sa.shared_mlp.bns, before):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), m)


def test_bfloat16_fast_path_tracks_float32(rng):
    """Under mixed_bfloat16 the fast path's pooled features stay within bfloat16 rounding of float32's."""
    xyz = tf.constant(rng.normal(size=(2, 64, 3)).astype(np.float32))
    feats = tf.constant(rng.normal(size=(2, 64, 6)).astype(np.float32))
    outs = []
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(3)
            sa = SetAbstraction(16, 0.9, 8, [16, 24])
            sa(xyz, feats, training=False)
            assert sa.shared_mlp.compute_dtype == ("float32" if policy == "float32" else "bfloat16")
            outs.append(sa(xyz, feats, training=True)[1].numpy())
        finally:
            keras.mixed_precision.set_global_policy("float32")
    assert outs[1].dtype == np.float32
    err = np.abs(outs[1] - outs[0]).max()
    assert 0 < err < 0.05 * np.abs(outs[0]).max(), err


@pytest.mark.parametrize("rows", [5, 16, 37, 300])
def test_rows_matmul_slab_gradient_equals_matmul(rows, rng):
    """The kernel gradient summed over slabs of rows (and the remainder) is h^T dz; dh and the product too."""
    h = tf.constant(rng.normal(size=(rows, 7)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(7, 5)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(rows, 5)).astype(np.float32))

    def run(path):
        with training_path.use(path):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    tape.watch(h)
                    z = training_path.rows_matmul(h, kernel)
                dh, dk = tape.gradient(z, [h, kernel], output_gradients=upstream)
                return z, dh, dk
            types = {op.type for op in step.get_concrete_function().graph.get_operations()}
            return [t.numpy() for t in step()], types

    (z, dh, dk), types = run(training_path.FAST)
    (z_ref, dh_ref, dk_ref), ref_types = run(training_path.REFERENCE)
    h64, k64, u64 = (np.asarray(t, np.float64) for t in (h, kernel, upstream))
    np.testing.assert_allclose(z, h64 @ k64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dh, u64 @ k64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, h64.T @ u64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk_ref, h64.T @ u64, rtol=1e-5, atol=1e-5)
    # The fast path's gradient really runs as a batch of slab products; the reference's does not.
    assert any(t.startswith("BatchMatMul") for t in types), types
    assert not any(t.startswith("BatchMatMul") for t in ref_types), ref_types


def test_rows_matmul_bfloat16_kernel_gradient_is_float32(rng):
    """With bfloat16 rows the product is bfloat16 and the kernel gradient float32, within bfloat16 rounding."""
    h = tf.cast(tf.constant(rng.normal(size=(100, 8)).astype(np.float32)), tf.bfloat16)
    kernel = tf.Variable(rng.normal(size=(8, 6)).astype(np.float32))
    with tf.GradientTape() as tape:
        z = training_path.rows_matmul(h, kernel)
        loss = tf.reduce_sum(tf.cast(z, tf.float32))
    dk = tape.gradient(loss, kernel)
    assert z.dtype == tf.bfloat16 and dk.dtype == tf.float32
    expected = np.asarray(tf.cast(h, tf.float32)).sum(axis=0)[:, None] * np.ones((1, 6))
    # Each slab's bfloat16 product is rounded once (relative 2^-9) before the float32 sum.
    np.testing.assert_allclose(dk.numpy(), expected, rtol=0, atol=8e-3 * np.abs(expected).max())


def test_unique_ball_rows_by_hand():
    """Padding copies repeat a group's first slot: they are dropped and counted in the first row's weight."""
    idx = tf.constant([[[3, 1, 3, 3], [2, 2, 2, 2]], [[0, 1, 2, 3], [1, 0, 1, 1]]], tf.int32)  # [B=2, M=2, S=4]
    point, weights, row_splits = training_path.unique_ball_rows(idx, 4)
    np.testing.assert_array_equal(point, [3, 1, 2, 4, 5, 6, 7, 5, 4])  # b * N + n
    np.testing.assert_array_equal(weights, [3, 1, 4, 1, 1, 1, 1, 3, 1])
    np.testing.assert_array_equal(row_splits, [0, 2, 3, 7, 9])
