"""Pure-TensorFlow implementations of the PointNet++ ops (the ``fallback`` backend).

Legend: B batch, N points, M centroids / queries, S = nsample or k, C channels. Coordinates float32.

They give the same results as the compiled kernels (``pointnet_cpu.h``): squared distances are computed
as ``(dx*dx + dy*dy) + dz*dz`` with separate element-wise ops in the same order, ties are broken by the
lower index, and the same special cases apply (see :mod:`hsr_tf.ops`). Arguments are expected to be
converted and statically checked by the public wrappers in ``hsr_tf.ops``; this module adds the checks
that need run-time values (dynamic N, non-finite coordinates, index ranges), which raise
``InvalidArgumentError`` inside the graph. Under XLA (``jit_compile=True``) TensorFlow compiles those
run-time assertions away, so there invalid data is not reported (static checks still are).

Only standard TensorFlow ops are used, so a SavedModel built with this backend loads without hsr_tf.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def _assert(cond, message: str):
    return tf.debugging.Assert(cond, [message])


def _check_finite(x: tf.Tensor, op: str, name: str):
    ok = tf.reduce_all(tf.math.is_finite(x))
    return _assert(ok, f"{op}: {name} contains a non-finite coordinate (NaN or Inf)")


def squared_distances(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a [B,M,3], b [B,N,3] -> [B,M,N] squared distances, (dx*dx + dy*dy) + dz*dz with d = b - a."""
    dx = b[:, None, :, 0] - a[:, :, None, 0]
    dy = b[:, None, :, 1] - a[:, :, None, 1]
    dz = b[:, None, :, 2] - a[:, :, None, 2]
    return (dx * dx + dy * dy) + dz * dz


def _lowest_index_where(mask: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """mask [..., N] -> lowest index where mask is true along the last axis (N if none)."""
    iota = tf.range(n, dtype=tf.int32)
    return tf.reduce_min(tf.where(mask, iota, n), axis=-1)


def farthest_point_sample(points: tf.Tensor, npoint: int) -> tf.Tensor:
    """points [B,N,3] -> int32 [B,npoint]; see hsr_tf.ops.farthest_point_sample."""
    op = "farthest_point_sample"
    n = tf.shape(points)[1]
    checks = [_assert(n >= npoint, f"{op}: npoint must be in [1, N], found {npoint} (N too small)"),
              _check_finite(points, op, "points")]
    with tf.control_dependencies(checks):
        points = tf.identity(points)
    b = tf.shape(points)[0]
    px, py, pz = points[..., 0], points[..., 1], points[..., 2]  # [B,N]
    first = tf.zeros([b], tf.int32)
    dist0 = tf.fill([b, n], tf.constant(np.inf, tf.float32))
    out0 = tf.TensorArray(tf.int32, size=npoint, element_shape=tf.TensorShape([points.shape[0]]))
    out0 = out0.write(0, first)

    def body(j, dist, last, out):
        sel = tf.gather(points, last, batch_dims=1)  # [B,3]
        dx = px - sel[:, 0:1]
        dy = py - sel[:, 1:2]
        dz = pz - sel[:, 2:3]
        d = (dx * dx + dy * dy) + dz * dz
        dist = tf.minimum(dist, d)
        best = tf.reduce_max(dist, axis=1, keepdims=True)
        nxt = _lowest_index_where(tf.equal(dist, best), n)
        return j + 1, dist, nxt, out.write(j, nxt)

    _, _, _, out = tf.while_loop(lambda j, *_: j < npoint, body, (tf.constant(1), dist0, first, out0),
                                 maximum_iterations=max(npoint - 1, 0))
    res = tf.transpose(out.stack(), [1, 0])
    return tf.ensure_shape(res, [points.shape[0], npoint])


def ball_query(points: tf.Tensor, centroids: tf.Tensor, radius: float, nsample: int) -> tf.Tensor:
    """points [B,N,3], centroids [B,M,3] -> int32 [B,M,nsample]; see hsr_tf.ops.ball_query."""
    op = "ball_query"
    checks = [_assert(tf.equal(tf.shape(points)[0], tf.shape(centroids)[0]),
                      f"{op}: batch size mismatch between points and centroids"),
              _assert(tf.shape(points)[1] >= 1, f"{op}: points is an empty cloud (N = 0)"),
              _check_finite(points, op, "points"), _check_finite(centroids, op, "centroids")]
    with tf.control_dependencies(checks):
        points = tf.identity(points)
    n = tf.shape(points)[1]
    d2 = squared_distances(centroids, points)  # [B,M,N]
    with np.errstate(over="ignore"):  # radius > ~1.8e19: r^2 is inf in float32 (every finite d2 inside), as compiled
        r2 = np.float32(radius) * np.float32(radius)
    iota = tf.range(n, dtype=tf.int32)
    cand = tf.where(d2 < r2, iota, n)  # index if inside, N otherwise
    pad = tf.fill(tf.concat([tf.shape(cand)[:2], [nsample]], 0), n)
    neg, _ = tf.math.top_k(-tf.concat([cand, pad], axis=-1), k=nsample, sorted=True)
    first = -neg  # ascending in-ball indices, N where fewer than nsample were found
    first_found = first[..., :1]
    filled = tf.where(tf.equal(first, n), first_found, first)
    nearest = _lowest_index_where(tf.equal(d2, tf.reduce_min(d2, axis=-1, keepdims=True)), n)
    res = tf.where(tf.equal(first_found, n), nearest[..., None], filled)
    return tf.ensure_shape(res, [centroids.shape[0], centroids.shape[1], nsample])


def knn(points: tf.Tensor, queries: tf.Tensor, k: int):
    """points [B,N,3], queries [B,M,3] -> (squared distances [B,M,k] ascending, int32 indices [B,M,k])."""
    op = "knn"
    checks = [_assert(tf.equal(tf.shape(points)[0], tf.shape(queries)[0]),
                      f"{op}: batch size mismatch between points and queries"),
              _assert(tf.shape(points)[1] >= k, f"{op}: k must be in [1, N], found {k} (N too small)"),
              _check_finite(points, op, "points"), _check_finite(queries, op, "queries")]
    with tf.control_dependencies(checks):
        points = tf.identity(points)
    d2 = tf.stop_gradient(squared_distances(queries, points))
    neg, idx = tf.math.top_k(-d2, k=k, sorted=True)  # equal values: lower index first
    shape = [queries.shape[0], queries.shape[1], k]
    return tf.ensure_shape(-neg, shape), tf.ensure_shape(tf.cast(idx, tf.int32), shape)


def group_points(features: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """features [B,N,C], indices int32 [B,M,S] -> [B,M,S,C]; gradient from tf.gather (scatter-add)."""
    op = "group_points"
    n = tf.shape(features)[1]
    checks = [_assert(tf.equal(tf.shape(features)[0], tf.shape(indices)[0]),
                      f"{op}: batch size mismatch between features and indices"),
              _assert(tf.reduce_all((indices >= 0) & (indices < n)),
                      f"{op}: an index is out of range [0, N)")]
    with tf.control_dependencies(checks):
        indices = tf.identity(indices)
    return tf.gather(features, indices, batch_dims=1)
