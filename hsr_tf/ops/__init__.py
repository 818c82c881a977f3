"""PointNet++ ops: farthest point sampling, ball query, kNN and grouping.

Legend: B batch, N points per cloud, M centroids / queries, S = nsample or k neighbours, C channels.
Coordinates are float32 (other float dtypes are cast), in any unit (the ops are unit-agnostic).

=========================================  ==========================  ======================================
op                                         inputs                      output
=========================================  ==========================  ======================================
``farthest_point_sample(points, npoint)``  ``[B,N,3]``                 int32 ``[B,npoint]``
``ball_query(points, centroids, r, ns)``   ``[B,N,3]``, ``[B,M,3]``    int32 ``[B,M,ns]``
``knn(points, queries, k)``                ``[B,N,3]``, ``[B,M,3]``    (float32 ``[B,M,k]`` squared distances,
                                                                       int32 ``[B,M,k]`` indices)
``group_points(features, indices)``        ``[B,N,C]``, ``[B,M,S]``    ``[B,M,S,C]`` (differentiable)
=========================================  ==========================  ======================================

Semantics (identical on all backends):

* Distances are squared Euclidean, computed as ``(dx*dx + dy*dy) + dz*dz`` in float32.
* FPS starts at index 0 and repeatedly takes the point farthest (largest squared distance) from the
  selected set, the lowest index on ties: the same indices as a vanilla FPS (e.g. ``fpsample.fps_sampling``
  with ``start_idx=0``) and as the PointNet++ reference CUDA kernel, except that the reference never picks
  points with ``x²+y²+z² <= 1e-3`` (a quirk we do not reproduce). Duplicate clouds: once every point is at
  distance 0 from the selection, index 0 is repeated.
* ``ball_query``: the first ``nsample`` indices, in index order, of points with squared distance
  ``< radius²`` (strict); if fewer are found the rest is padded with the first one found. A ball that
  contains no point gets the index of the nearest point (lowest index on ties) in all ``nsample`` slots,
  so the output is always a valid index (the reference would leave zeros).
* ``knn`` returns **squared** distances, ascending, ties broken by the lower index. Distances carry no
  gradient.
* ``group_points`` gathers ``features[b, indices[b,m,s], :]``; its gradient scatter-adds into the
  features. Non-finite *features* are gathered as they are.
* Non-finite *coordinates* (NaN, ±Inf) in ``points``/``centroids``/``queries`` raise
  ``InvalidArgumentError`` (there is no meaningful nearest or farthest point).

Errors: invalid arguments raise inside the op with ``tf.errors.InvalidArgumentError`` and a message
(npoint not in [1, N], k not in [1, N], nsample < 1, radius <= 0 or not finite, wrong rank or last
dimension, batch mismatch, empty cloud, index out of range, non-finite coordinates). Whatever is known
when the op is called or traced raises :class:`OpArgumentError` (a subclass of both
``InvalidArgumentError`` and ``ValueError``) at once.

Backends: ``backend()`` returns ``"compiled"`` (C++ CPU kernels parallel over the batch with TensorFlow's
thread pool; CUDA kernels when built with them) or ``"fallback"`` (pure TensorFlow, works under XLA).
The GPU kernels (built when nvcc, a CUDA build of TensorFlow and a GPU are present, see
:mod:`hsr_tf.ops.build`) validate shapes and scalar arguments like the CPU ones but not the data: on the
GPU, non-finite coordinates are not reported and an out-of-range ``group_points`` index yields zeros (and
no gradient) instead of an error. Under XLA the fallback's data checks are compiled away likewise.
At import the compiled library is loaded, and built first if it is missing or stale (see
:mod:`hsr_tf.ops.build`). ``HSR_TF_OPS=fallback`` forces the fallback; a build or load failure emits
one ``RuntimeWarning`` and uses the fallback. :func:`use_backend` switches temporarily (functions already
traced keep the backend they were traced with).

Saving: a SavedModel traced with the fallback contains only standard ops and loads with TensorFlow
alone. One traced with the compiled backend contains the ``Hsr*`` ops: ``import hsr_tf.ops`` (which
registers them) before ``tf.saved_model.load``. ``.keras`` files store layer configs only and work with
either backend.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import tensorflow as tf

from hsr_tf.ops import _checks
from hsr_tf.ops import fallback as _fallback
from hsr_tf.ops._checks import OpArgumentError

__all__ = ["farthest_point_sample", "ball_query", "knn", "group_points", "backend", "use_backend",
           "compiled_available", "fallback_reason", "OpArgumentError"]

_state = {"backend": "fallback", "reason": None}


def _init() -> None:
    mode = os.environ.get("HSR_TF_OPS", "auto").strip().lower()
    if mode == "fallback":
        _state["reason"] = "HSR_TF_OPS=fallback"
        return
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["hsr_tf.ops.build"]:
        _state["reason"] = "running `python -m hsr_tf.ops.build` (it builds and loads the library itself)"
        return
    try:
        from hsr_tf.ops import compiled  # noqa: PLC0415
        compiled.load()
        _state["backend"] = "compiled"
    except Exception as e:  # noqa: BLE001 (any build/load failure must fall back, never fail the import)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _state["reason"] = f"{type(e).__name__}: {first}"
        warnings.warn(
            "hsr_tf.ops: the compiled PointNet++ ops are unavailable (" + _state["reason"] + "); using the "
            "pure-TensorFlow fallback (same results, slower). Run `python -m hsr_tf.ops.build` for the full "
            "build log.", RuntimeWarning, stacklevel=3)


def backend() -> str:
    """``"compiled"`` or ``"fallback"``: the implementation the ops dispatch to now."""
    return _state["backend"]


def compiled_available() -> bool:
    """True when the compiled library is loaded (whatever the current backend)."""
    try:
        from hsr_tf.ops import compiled  # noqa: PLC0415
    except Exception:  # noqa: BLE001
        return False
    return compiled.available()


def fallback_reason():
    """Why the fallback is in use after import (None when the compiled library loaded)."""
    return _state["reason"]


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager selecting ``"compiled"`` or ``"fallback"`` for ops called (traced) inside it."""
    if name not in ("compiled", "fallback"):
        raise ValueError(f"use_backend: name must be 'compiled' or 'fallback', found {name!r}")
    if name == "compiled" and not compiled_available():
        raise RuntimeError(f"use_backend('compiled'): the compiled ops are not available ({_state['reason']})")
    old = _state["backend"]
    _state["backend"] = name
    try:
        yield
    finally:
        _state["backend"] = old


def _impl():
    if _state["backend"] == "compiled":
        from hsr_tf.ops import compiled  # noqa: PLC0415
        return compiled
    return _fallback


def farthest_point_sample(points, npoint: int, name=None) -> tf.Tensor:
    """Farthest point sampling from index 0.

    Args:
      points: float [B,N,3] coordinates.
      npoint: int in [1, N], the number M of points to select.
    Returns:
      int32 [B,npoint] indices into N, the first one 0.
    """
    op = "farthest_point_sample"
    with tf.name_scope(name or op):
        points = _checks.as_cloud(points, op, "points")
        npoint = _checks.as_int(npoint, op, "npoint")
        _checks.in_range(npoint, 1, points.shape[1] if points.shape.rank else None, op, "npoint")
        return _impl().farthest_point_sample(points, npoint)


def ball_query(points, centroids, radius: float, nsample: int, name=None) -> tf.Tensor:
    """Indices of up to ``nsample`` points within ``radius`` (strict) of each centroid.

    Args:
      points: float [B,N,3].
      centroids: float [B,M,3], same units as points.
      radius: float > 0.
      nsample: int >= 1 (may exceed N; the padding rule fills the slots).
    Returns:
      int32 [B,M,nsample]: first in-ball indices in index order, padded with the first one found; the
      nearest point's index for an empty ball.
    """
    op = "ball_query"
    with tf.name_scope(name or op):
        points = _checks.as_cloud(points, op, "points")
        centroids = _checks.as_cloud(centroids, op, "centroids")
        _checks.same_batch(points, centroids, op, "points", "centroids")
        radius = _checks.as_radius(radius, op)
        nsample = _checks.as_int(nsample, op, "nsample")
        _checks.in_range(nsample, 1, None, op, "nsample")
        return _impl().ball_query(points, centroids, radius, nsample)


def knn(points, queries, k: int, name=None):
    """k nearest neighbours of each query among the points.

    Args:
      points: float [B,N,3].
      queries: float [B,M,3].
      k: int in [1, N].
    Returns:
      (sq_distances float32 [B,M,k] ascending (squared Euclidean, no gradient), indices int32 [B,M,k]);
      ties broken by the lower index.
    """
    op = "knn"
    with tf.name_scope(name or op):
        points = _checks.as_cloud(points, op, "points")
        queries = _checks.as_cloud(queries, op, "queries")
        _checks.same_batch(points, queries, op, "points", "queries")
        k = _checks.as_int(k, op, "k")
        _checks.in_range(k, 1, points.shape[1] if points.shape.rank else None, op, "k")
        return _impl().knn(points, queries, k)


def group_points(features, indices, name=None) -> tf.Tensor:
    """Gathers per-point features for groups of indices.

    Args:
      features: float [B,N,C].
      indices: int [B,M,S], each in [0, N).
    Returns:
      float32 [B,M,S,C] with out[b,m,s] = features[b, indices[b,m,s]]; differentiable w.r.t. features.
    """
    op = "group_points"
    with tf.name_scope(name or op):
        features = _checks.as_features(features, op)
        indices = _checks.as_indices(indices, op)
        _checks.same_batch(features, indices, op, "features", "indices")
        return _impl().group_points(features, indices)


_init()
