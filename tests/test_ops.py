"""Tests of hsr_tf.ops: both backends against independent NumPy references and against each other,
gradients, special cases, and every invalid argument."""
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import ops
from hsr_tf.ops import fallback

try:
    from hsr_tf.ops import compiled
except Exception:  # noqa: BLE001
    compiled = None

HAVE_COMPILED = ops.compiled_available()
needs_compiled = pytest.mark.skipif(
    not HAVE_COMPILED, reason=f"compiled ops not available in this process: {ops.fallback_reason()}")
BACKENDS = [pytest.param("compiled", marks=needs_compiled), "fallback"]


# ----------------------------------------------------------------------------------------------------
# Independent NumPy references (float32 arithmetic in the stated order, so results are exact).

def np_sqdist(a, b):
    """a [M,3], b [N,3] -> [M,N] float32 squared distances."""
    d = b[None, :, :] - a[:, None, :]
    return (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2]


def np_fps(pts, m):
    n = pts.shape[0]
    sel = [0]
    mind = np.full(n, np.inf, np.float32)
    for _ in range(1, m):
        mind = np.minimum(mind, np_sqdist(pts[sel[-1]][None], pts)[0])
        sel.append(int(np.argmax(mind)))  # first maximum
    return np.array(sel, np.int32)


def np_ball_query(pts, cen, radius, ns):
    r2 = np.float32(radius) * np.float32(radius)
    d2 = np_sqdist(cen, pts)
    out = np.empty((cen.shape[0], ns), np.int32)
    for j in range(cen.shape[0]):
        inside = np.nonzero(d2[j] < r2)[0][:ns]
        if inside.size == 0:
            out[j] = int(np.argmin(d2[j]))
        else:
            out[j] = inside[0]
            out[j, :inside.size] = inside
    return out


def np_knn(pts, q, k):
    d2 = np_sqdist(q, pts)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, idx, 1), idx.astype(np.int32)


def run(backend, fn, *args, **kw):
    with ops.use_backend(backend):
        return fn(*args, **kw)


def cloud(rng, b, n, scale=1.0):
    return (rng.normal(size=(b, n, 3)) * scale).astype(np.float32)


SIZES = [(1, 1, 1), (2, 17, 5), (3, 256, 64), (2, 1024, 128)]  # (B, N, M)


# ----------------------------------------------------------------------------------------------------
# Correctness against NumPy and between backends.

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,n,m", SIZES)
def test_fps_matches_numpy(backend, b, n, m, rng):
    pts = cloud(rng, b, n)
    got = run(backend, ops.farthest_point_sample, pts, m).numpy()
    assert got.dtype == np.int32 and got.shape == (b, m)
    for i in range(b):
        np.testing.assert_array_equal(got[i], np_fps(pts[i], m))
    for i in range(b):  # FPS picks distinct points while any point has a positive distance
        assert len(set(got[i].tolist())) == m


def test_fps_matches_fpsample_vanilla(rng):
    fpsample = pytest.importorskip("fpsample")
    pts = cloud(rng, 2, 500)
    got = ops.farthest_point_sample(pts, 100).numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i], fpsample.fps_sampling(pts[i], 100, start_idx=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_duplicate_points_repeat_index_zero(backend):
    pts = np.zeros((1, 4, 3), np.float32)
    pts[0, 2] = [1, 0, 0]
    got = run(backend, ops.farthest_point_sample, pts, 4).numpy()
    np.testing.assert_array_equal(got[0], [0, 2, 0, 0])  # after {0,2} every distance is 0 -> index 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,n,m", SIZES)
@pytest.mark.parametrize("radius,ns", [(0.3, 8), (1.0, 32), (5.0, 16)])
def test_ball_query_matches_numpy(backend, b, n, m, radius, ns, rng):
    pts = cloud(rng, b, n)
    cen = cloud(rng, b, m)
    got = run(backend, ops.ball_query, pts, cen, radius, ns).numpy()
    assert got.dtype == np.int32 and got.shape == (b, m, ns)
    for i in range(b):
        np.testing.assert_array_equal(got[i], np_ball_query(pts[i], cen[i], radius, ns))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ball_query_special_cases(backend):
    # integer grid on the x axis: distances are exact, so "strictly inside" is testable at the boundary
    pts = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [0.5, 0, 0]]], np.float32)
    cen = np.array([[[0, 0, 0], [10, 0, 0], [2.9, 0, 0]]], np.float32)
    got = run(backend, ops.ball_query, pts, cen, 1.0, 4).numpy()[0]
    np.testing.assert_array_equal(got[0], [0, 4, 0, 0])  # point 1 at distance exactly 1 is outside
    np.testing.assert_array_equal(got[1], [3, 3, 3, 3])  # empty ball -> nearest point (index 3)
    np.testing.assert_array_equal(got[2], [2, 3, 2, 2])
    many = run(backend, ops.ball_query, pts, cen[:, :1], 100.0, 8).numpy()[0, 0]  # nsample > N: padding
    np.testing.assert_array_equal(many, [0, 1, 2, 3, 4, 0, 0, 0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,n,m", SIZES)
def test_knn_matches_numpy(backend, b, n, m, rng):
    pts = cloud(rng, b, n)
    q = cloud(rng, b, m)
    k = min(n, 16)
    d, idx = run(backend, ops.knn, pts, q, k)
    assert idx.dtype == tf.int32 and d.shape == (b, m, k)
    for i in range(b):
        rd, ri = np_knn(pts[i], q[i], k)
        np.testing.assert_array_equal(idx[i], ri)
        np.testing.assert_array_equal(d[i], rd)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,n,m", SIZES)
def test_knn_nearest_only_matches_numpy(backend, b, n, m, rng):
    """k = 1 (the compiled kernel's vector scan, no sort): the nearest point, ties to the lower index."""
    pts = cloud(rng, b, n)
    pts[:, n // 2:] = pts[:, : n - n // 2]  # duplicated points: exact ties
    q = cloud(rng, b, m)
    d, idx = run(backend, ops.knn, pts, q, 1)
    for i in range(b):
        rd, ri = np_knn(pts[i], q[i], 1)
        np.testing.assert_array_equal(idx[i], ri)
        np.testing.assert_array_equal(d[i], rd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_ties_lower_index_first(backend):
    pts = np.array([[[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]], np.float32)
    d, idx = run(backend, ops.knn, pts, np.zeros((1, 1, 3), np.float32), 4)
    np.testing.assert_array_equal(idx[0, 0], [3, 0, 1, 2])
    np.testing.assert_array_equal(d[0, 0], [0, 1, 1, 1])
    d, idx = run(backend, ops.knn, pts[:, :3], np.zeros((1, 1, 3), np.float32), 1)
    np.testing.assert_array_equal(idx[0, 0], [0])


@needs_compiled
@pytest.mark.parametrize("b,n,m", SIZES + [(4, 2048, 512)])
def test_compiled_equals_fallback(b, n, m, rng):
    pts = cloud(rng, b, n, scale=50.0)  # mm-like magnitudes
    cen = pts[:, :m] + rng.normal(size=(b, m, 3)).astype(np.float32)
    for fn, args in [(ops.farthest_point_sample, (pts, m)), (ops.ball_query, (pts, cen, 20.0, 32)),
                     (ops.knn, (pts, cen, min(n, 32)))]:
        a = run("compiled", fn, *args)
        f = run("fallback", fn, *args)
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(f)):
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=fn.__name__)
    idx = rng.integers(0, n, size=(b, m, 8)).astype(np.int32)
    feat = rng.normal(size=(b, n, 5)).astype(np.float32)
    np.testing.assert_array_equal(run("compiled", ops.group_points, feat, idx),
                                  run("fallback", ops.group_points, feat, idx))


@needs_compiled
def test_compiled_equals_fallback_inside_tf_function(rng):
    pts = cloud(rng, 2, 300)

    def f(p):
        i = ops.farthest_point_sample(p, 32)
        c = tf.gather(p, i, batch_dims=1)
        return i, ops.ball_query(p, c, 0.5, 16), ops.knn(p, c, 8)[1]

    with ops.use_backend("compiled"):
        a = tf.function(f)(pts)
    with ops.use_backend("fallback"):
        b = tf.function(f)(pts)
        c = tf.function(f, jit_compile=True)(pts)  # the fallback also runs under XLA
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


# ----------------------------------------------------------------------------------------------------
# group_points and its gradient.

@pytest.mark.parametrize("backend", BACKENDS)
def test_group_points_gather_and_gradient(backend, rng):
    feat = rng.normal(size=(2, 6, 3)).astype(np.float32)
    idx = np.array([[[0, 0, 5], [2, 1, 0]], [[5, 5, 5], [3, 4, 3]]], np.int32)  # repeats -> scatter-add
    with ops.use_backend(backend):
        out = ops.group_points(feat, idx).numpy()
        np.testing.assert_array_equal(out, feat[np.arange(2)[:, None, None], idx])
        theo, num = tf.test.compute_gradient(lambda f: ops.group_points(f, idx), [tf.constant(feat)])
        np.testing.assert_allclose(theo[0], num[0], atol=1e-3)
        f = tf.constant(feat)
        w = tf.constant(rng.normal(size=(2, 2, 3, 3)).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(f)
            y = tf.reduce_sum(ops.group_points(f, idx) * w)
        g = tape.gradient(y, f).numpy()
    expect = np.zeros_like(feat)
    for b in range(2):
        for m in range(2):
            for s in range(3):
                expect[b, idx[b, m, s]] += w.numpy()[b, m, s]
    np.testing.assert_allclose(g, expect, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Invalid arguments: static ones raise OpArgumentError (an InvalidArgumentError and a ValueError).

P = np.zeros((2, 10, 3), np.float32)
Q = np.zeros((2, 4, 3), np.float32)
IDX = np.zeros((2, 4, 5), np.int32)
F = np.zeros((2, 10, 6), np.float32)
INVALID = [
    ("npoint", lambda: ops.farthest_point_sample(P, 11)),
    ("npoint", lambda: ops.farthest_point_sample(P, 0)),
    ("npoint", lambda: ops.farthest_point_sample(P, 2.5)),
    (r"shape \[B,N,3\]", lambda: ops.farthest_point_sample(P[0], 3)),
    (r"shape \[B,N,3\]", lambda: ops.farthest_point_sample(np.zeros((2, 10, 2), np.float32), 3)),
    ("empty cloud", lambda: ops.farthest_point_sample(np.zeros((2, 0, 3), np.float32), 1)),
    ("nsample", lambda: ops.ball_query(P, Q, 0.1, 0)),
    ("radius", lambda: ops.ball_query(P, Q, 0.0, 4)),
    ("radius", lambda: ops.ball_query(P, Q, -1.0, 4)),
    ("radius", lambda: ops.ball_query(P, Q, float("nan"), 4)),
    (r"shape \[B,N,3\]", lambda: ops.ball_query(P, Q[..., :2], 0.1, 4)),
    ("batch size mismatch", lambda: ops.ball_query(P, Q[:1], 0.1, 4)),
    ("k must be", lambda: ops.knn(P, Q, 11)),
    ("k must be", lambda: ops.knn(P, Q, 0)),
    (r"shape \[B,N,3\]", lambda: ops.knn(P[None], Q, 3)),
    ("batch size mismatch", lambda: ops.knn(P, Q[:1], 3)),
    (r"shape \[B,N,C\]", lambda: ops.group_points(F[0], IDX)),
    (r"shape \[B,M,S\]", lambda: ops.group_points(F, IDX[0])),
    ("integer", lambda: ops.group_points(F, IDX.astype(np.float32))),
    ("batch size mismatch", lambda: ops.group_points(F[:1], IDX)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(INVALID)))
def test_invalid_static_arguments(backend, case):
    match, fn = INVALID[case]
    with ops.use_backend(backend):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match) as info:
            fn()
    assert isinstance(info.value, ValueError)


NAN_P = P.copy()
NAN_P[1, 3, 2] = np.nan
INF_Q = Q.copy()
INF_Q[0, 0, 0] = np.inf
BAD_IDX = IDX.copy()
BAD_IDX[1, 2, 3] = 10
RUNTIME = [  # data-dependent: raised while running, by the op itself
    ("non-finite", lambda: ops.farthest_point_sample(NAN_P, 3)),
    ("non-finite", lambda: ops.ball_query(NAN_P, Q, 0.5, 4)),
    ("non-finite", lambda: ops.ball_query(P, INF_Q, 0.5, 4)),
    ("non-finite", lambda: ops.knn(P, INF_Q, 2)),
    ("out of range", lambda: ops.group_points(F, BAD_IDX)),
    ("out of range", lambda: ops.group_points(F, -IDX - 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(RUNTIME)))
@pytest.mark.parametrize("graph", [False, True])
def test_invalid_data_raises_inside_op(backend, case, graph):
    match, fn = RUNTIME[case]
    with ops.use_backend(backend):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            r = tf.function(fn)() if graph else fn()
            tf.nest.map_structure(lambda t: t.numpy(), r)


def _dynamic(fn, *args):
    """Runs fn inside a tf.function whose inputs have unknown shapes (checks happen at run time)."""
    sig = [tf.TensorSpec(None, tf.as_dtype(a.dtype)) for a in args]
    return tf.function(fn, input_signature=sig)(*args)


DYNAMIC = [  # static checks impossible (unknown shapes): the op itself must reject the values
    ("npoint", lambda: _dynamic(lambda p: ops.farthest_point_sample(tf.reshape(p, [2, -1, 3]), 11), P)),
    ("k must be", lambda: _dynamic(lambda p, q: ops.knn(tf.reshape(p, [2, -1, 3]), tf.reshape(q, [2, -1, 3]), 11),
                                   P, Q)),
    ("batch size mismatch", lambda: _dynamic(
        lambda p, q: ops.ball_query(tf.reshape(p, [-1, 10, 3]), tf.reshape(q, [-1, 4, 3]), 0.5, 2), P, Q[:1])),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(DYNAMIC)))
def test_invalid_dynamic_shapes_raise_inside_op(backend, case):
    match, fn = DYNAMIC[case]
    with ops.use_backend(backend):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            fn()


@needs_compiled
def test_raw_kernels_validate_arguments():
    """The C++ kernels check their arguments themselves (not only the Python wrappers)."""
    lib = compiled.load()
    cases = [
        ("npoint must be in", lambda: lib.hsr_farthest_point_sample(P, npoint=11)),
        ("npoint must be in", lambda: lib.hsr_farthest_point_sample(P, npoint=0)),
        (r"must have shape \[B,N,3\]", lambda: lib.hsr_farthest_point_sample(P[0], npoint=1)),
        ("empty cloud", lambda: lib.hsr_farthest_point_sample(np.zeros((1, 0, 3), np.float32), npoint=1)),
        ("nsample must be", lambda: lib.hsr_ball_query(P, Q, radius=0.1, nsample=0)),
        ("radius must be", lambda: lib.hsr_ball_query(P, Q, radius=-0.1, nsample=2)),
        ("batch size mismatch", lambda: lib.hsr_ball_query(P, Q[:1], radius=0.1, nsample=2)),
        ("k must be in", lambda: lib.hsr_knn(P, Q, k=11)),
        (r"must have shape \[B,N,3\]", lambda: lib.hsr_knn(P, Q[..., :2], k=1)),
        ("out of range", lambda: lib.hsr_group_points(F, BAD_IDX)),
        ("out of range", lambda: lib.hsr_group_points_grad(np.zeros((2, 4, 5, 6), np.float32), BAD_IDX, 10)),
        ("non-finite", lambda: lib.hsr_knn(NAN_P, Q, k=1)),
    ]
    for match, fn in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            fn()


def test_backend_reporting():
    assert ops.backend() in ("compiled", "fallback")
    with ops.use_backend("fallback"):
        assert ops.backend() == "fallback"
    with pytest.raises(ValueError, match="use_backend"):
        with ops.use_backend("gpu"):
            pass
