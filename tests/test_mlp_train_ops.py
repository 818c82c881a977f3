"""The compiled fused BatchNorm + ReLU (+ max) kernels against the FusedBatchNormV3 reference and by hand.

Forward outputs, batch moments and gradients (z, gamma, beta) of ``hsr_tf.ops.mlp_train.batch_norm_relu``
with ``compiled=True`` are compared with ``compiled=False`` (TensorFlow's FusedBatchNormV3 + relu + MaxPool),
with a NumPy float64 computation of the formulas, and with finite differences; ties, all-negative groups
and bad arguments are covered.
"""
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import ops
from hsr_tf.ops import mlp_train

pytestmark = pytest.mark.skipif(not mlp_train.kernels_available(),
                                reason="compiled ops unavailable or a GPU is visible")


def _run(z, gamma, beta, group_size, compiled, upstream, eps=1e-3):
    with tf.GradientTape() as tape:
        tape.watch([z, gamma, beta])
        out, mean, var = mlp_train.batch_norm_relu(z, gamma, beta, eps, group_size=group_size, compiled=compiled)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grads = tape.gradient(loss, [z, gamma, beta])
    return [tf.cast(t, tf.float32).numpy() for t in [out, mean, var] + grads]


def _inputs(rng, rows, c, dtype=tf.float32):
    z = tf.cast(tf.constant((rng.normal(size=(rows, c)) * 2 + 0.7).astype(np.float32)), dtype)
    gamma = tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32))
    beta = tf.constant((rng.normal(size=c) * 0.5).astype(np.float32))
    return z, gamma, beta


def _numpy_reference(z, gamma, beta, group_size, upstream, eps=1e-3):
    """The formulas in float64: forward, moments and the gradients (max routed to the first maximal row)."""
    z, gamma, beta, up = (np.asarray(t, np.float64) for t in (z, gamma, beta, upstream))
    r, c = z.shape
    mean, var = z.mean(0), z.var(0)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (z - mean) * inv
    y = xhat * gamma + beta
    h = np.maximum(y, 0)
    if group_size is None:
        out, dh = h, up
    else:
        yg = y.reshape(-1, group_size, c)
        arg = yg.argmax(1)  # first maximal row
        out = np.maximum(yg.max(1), 0)
        dh = np.zeros_like(yg)
        np.put_along_axis(dh, arg[:, None, :], up[:, None, :], axis=1)
        dh = dh.reshape(r, c)
    dy = dh * (y > 0)
    dbeta, dgamma = dy.sum(0), (dy * xhat).sum(0)
    dz = gamma * inv * (dy - dbeta / r - xhat * dgamma / r)
    return [out, mean, var, dz, dgamma, dbeta]


# 37 channels: two 16-channel chunks of the register-resident sums and a scalar tail; 100: a 64-channel chunk, two
# 16-channel ones and a tail.
@pytest.mark.parametrize("group_size,channels", [(None, 37), (8, 37), (None, 100), (8, 100)])
def test_float32_matches_numpy_and_reference(group_size, channels, rng):
    z, gamma, beta = _inputs(rng, 64 * 8, channels)
    upstream = tf.constant(rng.normal(size=(z.shape[0] // (group_size or 1), channels)).astype(np.float32))
    got = _run(z, gamma, beta, group_size, True, upstream)
    ref = _run(z, gamma, beta, group_size, False, upstream)
    exact = _numpy_reference(z.numpy(), gamma.numpy(), beta.numpy(), group_size, upstream.numpy())
    for name, g, r, e in zip(["out", "mean", "var", "dz", "dgamma", "dbeta"], got, ref, exact):
        scale = np.abs(e).max()
        np.testing.assert_allclose(g, e, rtol=0, atol=2e-6 * scale, err_msg=name)
        np.testing.assert_allclose(g, r, rtol=0, atol=5e-6 * scale, err_msg=name)


@pytest.mark.parametrize("group_size", [None, 16])
def test_bfloat16_matches_reference_within_rounding(group_size, rng):
    z, gamma, beta = _inputs(rng, 32 * 16, 24, tf.bfloat16)
    upstream = tf.constant(rng.normal(size=(z.shape[0] // (group_size or 1), 24)).astype(np.float32))
    got = _run(z, gamma, beta, group_size, True, upstream)
    ref = _run(z, gamma, beta, group_size, False, upstream)
    exact = _numpy_reference(tf.cast(z, tf.float32).numpy(), gamma.numpy(), beta.numpy(), group_size,
                             tf.cast(tf.cast(upstream, tf.bfloat16), tf.float32).numpy())
    for name, g, r, e in zip(["out", "mean", "var", "dz", "dgamma", "dbeta"], got, ref, exact):
        scale = np.abs(e).max()
        # One bfloat16 rounding of the outputs (2^-8 relative); the moments and dgamma/dbeta are float32.
        np.testing.assert_allclose(g, e, rtol=0, atol=8e-3 * scale, err_msg=name)
        np.testing.assert_allclose(g, r, rtol=0, atol=8e-3 * scale, err_msg=name)


def test_gradient_matches_finite_differences(rng):
    z, gamma, beta = _inputs(rng, 6 * 4, 3)

    def f(z, gamma, beta):
        return mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, group_size=4, compiled=True)[0]

    theoretical, numerical = tf.test.compute_gradient(f, [z, gamma, beta], delta=1e-3)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=0, atol=2e-2 * np.abs(n).max())


def test_ties_and_all_negative_groups():
    """Identical rows (the ball query's padding): the gradient goes to the first one; a group whose every
    pre-activation is negative pools to 0 and passes no gradient."""
    c = 2
    group_a = np.array([[1.0, -5.0], [3.0, -6.0], [3.0, -7.0], [0.0, -5.5]], np.float32)  # tie on channel 0
    group_b = np.array([[2.0, 4.0], [-1.0, 5.0], [0.5, 6.0], [1.0, 7.0]], np.float32)
    z = tf.constant(np.concatenate([group_a, group_b]))
    gamma, beta = tf.ones([c]), tf.zeros([c])
    up = tf.constant([[1.0, 1.0], [1.0, 1.0]])
    out, _, _, dz, _, _ = _run(z, gamma, beta, 4, True, up)
    exact = _numpy_reference(z.numpy(), gamma.numpy(), beta.numpy(), 4, up.numpy())
    np.testing.assert_allclose(out, exact[0], atol=1e-6)
    np.testing.assert_allclose(dz, exact[3], atol=1e-6)
    yhat = (z.numpy() - z.numpy().mean(0)) / np.sqrt(z.numpy().var(0) + 1e-3)
    assert (yhat[:4, 1] < 0).all() and out[0, 1] == 0.0  # channel 1 of group a: all negative -> 0
    # Group a, channel 0: rows 1 and 2 tie; only row 1 (the first) receives the upstream gradient.
    k1 = 1.0 / np.sqrt(z.numpy()[:, 0].var() + 1e-3)
    # Identical rows share the dense part of dz, so their difference is the routed term gamma * inv * 1.
    assert dz[1, 0] - dz[2, 0] == pytest.approx(k1, rel=1e-5)


def test_bad_arguments(rng):
    z, gamma, beta = _inputs(rng, 12, 5)
    with pytest.raises(ops.OpArgumentError, match="multiple of group_size"):
        mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, group_size=5, compiled=True)
    with pytest.raises(ops.OpArgumentError, match=r"gamma must have shape \[5\]"):
        mlp_train.batch_norm_relu(z, gamma[:4], beta, 1e-3, compiled=True)
    with pytest.raises(ops.OpArgumentError, match="shape \\[R, C\\]"):
        mlp_train.batch_norm_relu(z[None], gamma, beta, 1e-3, compiled=True)
    with pytest.raises(ops.OpArgumentError, match="float32 or bfloat16"):
        mlp_train.batch_norm_relu(tf.cast(z, tf.float64), gamma, beta, 1e-3, compiled=True)
    from hsr_tf.ops import compiled
    lib = compiled.load()
    no_weights, splits = tf.zeros([0]), tf.constant([0, 4, 8, 12])
    with pytest.raises(tf.errors.InvalidArgumentError, match="argmax 7 .* out of range for its group of 4 rows"):
        lib.hsr_batch_norm_relu_max_grad(tf.zeros([3, 5]), tf.fill([3, 5], 7), z, no_weights, splits, gamma, beta,
                                         gamma, gamma, epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="incoming gradient must have shape"):
        lib.hsr_batch_norm_relu_grad(tf.zeros([11, 5]), z, no_weights, gamma, beta, gamma, gamma, epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="strictly increasing"):
        lib.hsr_batch_norm_relu_max(z, gamma, beta, no_weights, tf.constant([0, 6, 6, 12]), epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="end at the rows of z"):
        lib.hsr_batch_norm_relu_max(z, gamma, beta, no_weights, tf.constant([0, 6, 11]), epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="weights must be finite and > 0"):
        lib.hsr_batch_norm_relu(z, gamma, beta, tf.concat([tf.ones([11]), [0.0]], 0), epsilon=1e-3)
    for bad, row in ((float("nan"), 3), (float("inf"), 5), (-2.0, 7)):  # rows of the 8-wide checking loop
        weights = tf.tensor_scatter_nd_update(tf.ones([12]), [[row]], [bad])
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"finite and > 0, found .* at row {row}"):
            lib.hsr_batch_norm_relu(z, gamma, beta, weights, epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"weights must have shape \[12\]"):
        lib.hsr_batch_norm_relu(z, gamma, beta, tf.ones([5]), epsilon=1e-3)
    with pytest.raises(ops.OpArgumentError, match="need the compiled kernels"):
        mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, row_splits=splits, compiled=False)


def test_large_batch_uses_many_blocks(rng):
    """Rows spread over many blocks (and threads) give the same moments as one float64 pass."""
    z, gamma, beta = _inputs(rng, 5000, 7)
    _, mean, var = mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, compiled=True)
    np.testing.assert_allclose(mean, z.numpy().astype(np.float64).mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(var, z.numpy().astype(np.float64).var(0), rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_weighted_ragged_groups_equal_the_batch_with_copies(dtype, rng):
    """Ragged groups with row multiplicities (the ball query's padding removed) give the outputs, moments and
    gradients of the padded batch: the gradient of a kept row is the sum over its copies."""
    c, sizes = 6, [3, 1, 5, 2]
    counts = np.concatenate([rng.integers(1, 4, size=n) for n in sizes])  # copies per unique row
    z, gamma, beta = _inputs(rng, counts.size, c, dtype)
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    upstream = tf.constant(rng.normal(size=(len(sizes), c)).astype(np.float32))
    compact = _run_weighted(z, gamma, beta, splits, counts.astype(np.float32), upstream)
    # The same groups with every copy present (copies adjacent, after their row): uniform weights.
    expanded_z = tf.repeat(z, counts, axis=0)
    expanded_splits = np.concatenate([[0], np.cumsum([counts[a:b].sum() for a, b in zip(splits[:-1], splits[1:])])])
    full = _run_weighted(expanded_z, gamma, beta, expanded_splits.astype(np.int32), None, upstream)
    tol = 1e-5 if dtype == tf.float32 else 1e-2
    for name, a, b in zip(["out", "mean", "var", "dgamma", "dbeta"], compact[:3] + compact[4:], full[:3] + full[4:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max(), err_msg=name)
    summed = tf.math.segment_sum(full[3], np.repeat(np.arange(counts.size), counts)).numpy()
    np.testing.assert_allclose(compact[3], summed, rtol=0, atol=tol * np.abs(summed).max())
    # Without the max (a hidden layer): the same identities.
    h_up = tf.constant(rng.normal(size=(counts.size, c)).astype(np.float32))
    compact = _run_weighted(z, gamma, beta, None, counts.astype(np.float32), h_up)
    full = _run_weighted(expanded_z, gamma, beta, None, None, tf.repeat(h_up, counts, axis=0) / np.repeat(
        counts, counts)[:, None].astype(np.float32))
    summed = tf.math.segment_sum(full[3], np.repeat(np.arange(counts.size), counts)).numpy()
    np.testing.assert_allclose(compact[3], summed, rtol=0, atol=tol * np.abs(summed).max())
    np.testing.assert_allclose(compact[4], full[4], rtol=0, atol=tol * np.abs(full[4]).max())


def _run_weighted(z, gamma, beta, row_splits, weights, upstream):
    with tf.GradientTape() as tape:
        tape.watch([z, gamma, beta])
        out, mean, var = mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, row_splits=row_splits, weights=weights,
                                                   compiled=True)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grads = tape.gradient(loss, [z, gamma, beta])
    return [tf.cast(t, tf.float32).numpy() for t in [out, mean, var] + grads]


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_instruction_sets_give_the_same_results(isa, tmp_path):
    """The AVX2 and baseline builds of the block loops (what CPUs without AVX-512 run) agree with NumPy."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from tests import test_mlp_train_ops as t
        rng = np.random.default_rng(5)
        for dtype, c in ((tf.float32, 19), (tf.bfloat16, 19), (tf.float32, 100), (tf.bfloat16, 100)):
            z, gamma, beta = t._inputs(rng, 40 * 6, c, dtype)
            for group_size in (None, 6):
                up = tf.constant(rng.normal(size=(z.shape[0] // (group_size or 1), c)).astype(np.float32))
                got = t._run(z, gamma, beta, group_size, True, up)
                exact = t._numpy_reference(tf.cast(z, tf.float32).numpy(), gamma.numpy(), beta.numpy(), group_size,
                                           tf.cast(tf.cast(up, dtype), tf.float32).numpy())
                tol = 2e-6 if dtype == tf.float32 else 8e-3
                for g, e in zip(got, exact):
                    np.testing.assert_allclose(g, e, rtol=0, atol=tol * np.abs(e).max())
        print("checked")
    """)
    import os
    env = dict(os.environ, HSR_TF_OPS_MLP_ISA=isa, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "checked" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("points,rows,groups,channels", [(30, 11, 4, 20), (3000, 20000, 400, 128)])
def test_gather_rows_minus_centre_and_its_gradient(dtype, points, rows, groups, channels, rng):
    # The larger case spreads dparams over many row ranges (threads), every params row taking several rows.
    params = tf.constant(rng.normal(size=(points, channels)).astype(np.float32))
    if groups == 4:
        splits = np.array([0, 3, 4, 9, 11], np.int32)
    else:
        splits = np.r_[0, np.sort(rng.choice(np.arange(1, rows), groups - 1, replace=False)), rows].astype(np.int32)
    index = tf.constant(rng.integers(0, points, size=rows).astype(np.int32))
    centres = tf.constant(rng.normal(size=(groups, channels)).astype(np.float32))
    group = np.repeat(np.arange(groups), np.diff(splits))
    upstream = tf.constant(rng.normal(size=(rows, channels)).astype(np.float32))

    def run(fn):
        with tf.GradientTape() as tape:
            tape.watch([params, centres])
            rows = fn()
            loss = tf.reduce_sum(tf.cast(rows, tf.float32) * upstream)
        return [rows.numpy().astype(np.float32)] + [tf.convert_to_tensor(g).numpy()
                                                    for g in tape.gradient(loss, [params, centres])]

    got = run(lambda: mlp_train.gather_rows_minus_centre(params, index, centres, splits, dtype))
    ref = run(lambda: tf.cast(tf.gather(params, index) - tf.gather(centres, group), dtype))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * np.abs(r).max())
    from hsr_tf.ops import compiled
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"index {points} at position 0 is out of range"):
        compiled.load().hsr_gather_rows_minus_centre(params, tf.fill([rows], points), centres, splits, T=tf.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"centres must have shape \[{groups}, {channels}\]"):
        compiled.load().hsr_gather_rows_minus_centre(params, index, centres[:3], splits, T=tf.float32)


@pytest.mark.parametrize("weighted", [False, True])
def test_row_moments_compiled_equals_the_formula(weighted, rng):
    """HsrRowMoments against the float64 formula (means and centred covariance, weighted by the copies each
    row stands for), and its gradient in u against the TensorFlow reference's."""
    u = tf.constant((rng.normal(size=(3001, 3)) * [1.0, 0.1, 3.0] + [5.0, -2.0, 0.5]).astype(np.float32))
    weights = tf.constant(rng.integers(1, 4, size=3001).astype(np.float32)) if weighted else None
    mean, cov = mlp_train.row_moments(u, weights, compiled=True)
    w = np.ones(3001) if weights is None else weights.numpy().astype(np.float64)
    u64 = u.numpy().astype(np.float64)
    m = (w[:, None] * u64).sum(0) / w.sum()
    c = ((u64 - m) * w[:, None]).T @ (u64 - m) / w.sum()
    np.testing.assert_allclose(mean, m, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cov, c, rtol=1e-6, atol=1e-7 * np.abs(c).max())
    upstream_m = tf.constant(rng.normal(size=3).astype(np.float32))
    upstream_c = tf.constant(rng.normal(size=(3, 3)).astype(np.float32))

    def grad(compiled):
        with tf.GradientTape() as tape:
            tape.watch(u)
            mm, cc = mlp_train.row_moments(u, weights, compiled=compiled)
            loss = tf.reduce_sum(mm * upstream_m) + tf.reduce_sum(cc * upstream_c)
        return tape.gradient(loss, u).numpy()

    ref = grad(False)
    np.testing.assert_allclose(grad(True), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    empty_mean, empty_cov = mlp_train.row_moments(tf.zeros([0, 3]), compiled=True)
    assert not np.any(empty_mean.numpy()) and not np.any(empty_cov.numpy())
    with pytest.raises(ops.OpArgumentError, match=r"u must have shape \[R, K\] with 1 <= K <= 16"):
        mlp_train.row_moments(tf.zeros([4, 17]))
    from hsr_tf.ops import compiled as lib
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"weights must have shape \[4\]"):
        lib.load().hsr_row_moments(tf.zeros([4, 3]), tf.ones([3]))
