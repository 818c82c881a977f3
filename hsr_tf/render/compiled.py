"""Loader and wrapper of the compiled ``HsrRasterizeDepth`` op (the ``compiled`` backend of hsr_tf.render).

:func:`load` builds the library if it is missing or stale (:func:`hsr_tf.ops.build.ensure_render_built`)
and registers it with ``tf.load_op_library`` (which also makes SavedModels containing the op loadable).
Legend: B batch, V vertices, F faces, H, W image height / width.
"""
from __future__ import annotations

import tensorflow as tf

from hsr_tf.ops import build as _build

_lib = None

tf.no_gradient("HsrRasterizeDepth")


def load():
    """Builds if needed and loads the library; returns the module. Raises on failure."""
    global _lib
    if _lib is None:
        _lib = tf.load_op_library(_build.ensure_render_built())
    return _lib


def available() -> bool:
    return _lib is not None


def rasterize_ids(vertices, faces, camera, height: int, width: int, near: float, search_radius: float):
    """float32 [B,V,3], int32 [F,3], float32 [B,4] -> (face_ids, near_ids) int32 [B,H,W]."""
    return _lib.hsr_rasterize_depth(vertices, faces, camera, height=height, width=width, near=float(near),
                                    search_radius=float(search_radius))
