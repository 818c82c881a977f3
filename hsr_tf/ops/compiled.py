"""Loader and thin wrappers of the compiled PointNet++ ops (the ``compiled`` backend).

:func:`load` builds the library if it is missing or stale (see :mod:`hsr_tf.ops.build`) and registers
it with ``tf.load_op_library``; this also makes SavedModels containing the ops loadable. The ops are
``HsrFarthestPointSample``, ``HsrBallQuery``, ``HsrKnn``, ``HsrGroupPoints`` (gradient:
``HsrGroupPointsGrad``, a scatter-add) — CPU kernels always, GPU kernels when built with CUDA.
Arguments are expected to be converted and statically checked by the wrappers in ``hsr_tf.ops``.
"""
from __future__ import annotations

import tensorflow as tf

from hsr_tf.ops import build as _build

_lib = None
_path = None

tf.no_gradient("HsrFarthestPointSample")
tf.no_gradient("HsrBallQuery")
tf.no_gradient("HsrKnn")
tf.no_gradient("HsrGroupPointsGrad")


@tf.RegisterGradient("HsrGroupPoints")
def _group_points_grad(op, grad):
    features, indices = op.inputs
    n = tf.shape(features, out_type=tf.int32)[1]
    return [_lib.hsr_group_points_grad(grad, indices, n), None]


def load():
    """Builds if needed and loads the library; returns the loaded module. Raises on failure."""
    global _lib, _path
    if _lib is None:
        _path = _build.ensure_built()
        _lib = tf.load_op_library(_path)
    return _lib


def library_path():
    return _path


def available() -> bool:
    return _lib is not None


def farthest_point_sample(points, npoint: int):
    return _lib.hsr_farthest_point_sample(points, npoint=npoint)


def ball_query(points, centroids, radius: float, nsample: int):
    return _lib.hsr_ball_query(points, centroids, radius=radius, nsample=nsample)


def knn(points, queries, k: int):
    d, i = _lib.hsr_knn(points, queries, k=k)
    return d, i


def group_points(features, indices):
    return _lib.hsr_group_points(features, indices)
