"""Property-based tests of hsr_tf.ops: on random clouds (duplicates, collinear points, NaN/Inf, huge
coordinates, arguments at and past their bounds) the compiled and fallback backends return the same result or
both raise InvalidArgumentError naming the op; never a crash or a silently different answer.

The default suite tries few examples per property; ``-m slow`` runs the same properties with more.
"""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsr_tf import ops

pytestmark = pytest.mark.skipif(not ops.compiled_available(), reason="compiled ops not built")

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def clouds(draw, max_b=3, max_n=24):
    """[B, N, 3] float32 with a chosen pathology: integer grid (duplicates), a line (collinear), huge values,
    or one NaN/Inf coordinate."""
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["grid", "line", "normal", "huge", "nonfinite"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    if kind == "grid":        # few distinct values: many exact duplicates and ties
        x = rng.integers(-1, 2, (b, n, 3)).astype(np.float32)
    elif kind == "line":
        x = (rng.integers(-3, 4, (b, n, 1)) * np.array([1.0, 2.0, -0.5])).astype(np.float32)
    elif kind == "huge":      # squared distances overflow float32 to +inf
        x = (rng.normal(size=(b, n, 3)) * 1e25).astype(np.float32)
    else:
        x = rng.normal(size=(b, n, 3)).astype(np.float32)
    if kind == "nonfinite":
        x[rng.integers(b), rng.integers(n), rng.integers(3)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


def both(fn):
    """(result or exception type, message) of fn under each backend."""
    out = {}
    for name in ("compiled", "fallback"):
        with ops.use_backend(name):
            try:
                r = fn()
                out[name] = ("ok", [np.asarray(t) for t in (r if isinstance(r, tuple) else (r,))])
            except tf.errors.InvalidArgumentError as e:
                out[name] = ("raised", e.message)
    return out["compiled"], out["fallback"]


def agree(fn, op):
    (ka, a), (kb, b) = both(fn)
    assert ka == kb, f"{op}: compiled {ka} ({a if ka == 'raised' else ''}), fallback {kb} ({b if kb == 'raised' else ''})"
    if ka == "ok":
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    else:
        assert op in a and op in b, (a, b)
    return ka, a


def check_fps(x, npoint):
    kind, res = agree(lambda: ops.farthest_point_sample(tf.constant(x), npoint), "farthest_point_sample")
    n = x.shape[1]
    assert (kind == "ok") == (1 <= npoint <= n and bool(np.all(np.isfinite(x))))
    if kind == "ok":
        idx = res[0]
        assert idx.shape == (x.shape[0], npoint) and idx.min() >= 0 and idx.max() < n and np.all(idx[:, 0] == 0)


def check_ball(x, nsample, radius):
    kind, res = agree(lambda: ops.ball_query(tf.constant(x), tf.constant(x[:, :3]), radius, nsample), "ball_query")
    if kind == "ok":
        idx = res[0]
        assert idx.shape == (x.shape[0], min(3, x.shape[1]), nsample) and 0 <= idx.min() and idx.max() < x.shape[1]
    else:
        assert nsample < 1 or not np.all(np.isfinite(x))


def check_knn(x, k):
    kind, res = agree(lambda: ops.knn(tf.constant(x), tf.constant(x), k), "knn")
    n = x.shape[1]
    if kind == "ok":
        d, idx = res
        # ascending (huge coordinates overflow the squared distance to +inf: ties, still ordered)
        assert idx.shape == (x.shape[0], n, k) and np.all(d[..., 1:] >= d[..., :-1])
        # every point's nearest neighbour is at distance 0 (itself or an exact duplicate)
        assert np.all(d[..., 0] == 0)
    else:
        assert not 1 <= k <= n or not np.all(np.isfinite(x))


ARGS = st.integers(-1, 27)


@FAST
@given(clouds(), ARGS)
def test_fps_backends_agree(x, npoint):
    check_fps(x, npoint)


@FAST
@given(clouds(), ARGS, st.sampled_from([0.5, 1.0, 3.0, 1e30]))
def test_ball_query_backends_agree(x, nsample, radius):
    check_ball(x, nsample, radius)


@FAST
@given(clouds(), ARGS)
def test_knn_backends_agree(x, k):
    check_knn(x, k)


@pytest.mark.slow
@SLOW
@given(clouds(max_b=4, max_n=64), st.integers(-2, 70), st.integers(-2, 70))
def test_ops_backends_agree_many(x, a, b):
    check_fps(x, a)
    check_knn(x, b)
    check_ball(x, a, 1.0)


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((2, 0, 3), np.float32), "empty cloud"),
    (np.zeros((2, 5, 2), np.float32), "shape [B,N,3]"),
    (np.zeros((5, 3), np.float32), "shape [B,N,3]"),
    (np.zeros((1, 5, 3), np.int32), "float tensor"),
])
def test_bad_clouds_raise_naming_the_argument(bad, fragment):
    for name in ("compiled", "fallback"):
        with ops.use_backend(name), pytest.raises(ops.OpArgumentError, match=r"farthest_point_sample: points"):
            ops.farthest_point_sample(bad, 1)
        with ops.use_backend(name), pytest.raises(ops.OpArgumentError, match=fragment.replace("[", r"\[")):
            ops.knn(bad, np.zeros((bad.shape[0] if bad.ndim == 3 else 1, 1, 3), np.float32), 1)


def test_npoint_bounds_named():
    x = np.random.default_rng(0).normal(size=(1, 5, 3)).astype(np.float32)
    for name in ("compiled", "fallback"):
        with ops.use_backend(name):
            assert ops.farthest_point_sample(x, 5).shape == (1, 5)
            for bad in (0, 6, True, 2.0):
                with pytest.raises(ops.OpArgumentError, match="farthest_point_sample: npoint"):
                    ops.farthest_point_sample(x, bad)
