"""Non-differentiable part of the depth renderer: which face each pixel sees, and which face is nearest.

Legend: B batch, V vertices, F faces, H, W image height / width (pixels).

Projection (project-wide, see :mod:`hsr_tf.geometry.camera`): camera frame x right, y UP, z away (mm);
``u = cx + fx x / z``, ``v = cy - fy y / z``; pixel (row r, col c) samples the ray through its centre
``(u, v) = (c, r)``.

Backends: ``"compiled"`` (the ``HsrRasterizeDepth`` C++ op: tensorflow-graphics' CPU rasteriser for the
z-buffer, compiled from the source shipped in its wheel, plus our nearest-face pass; parallel over the
batch) or ``"fallback"`` (pure TensorFlow, :mod:`hsr_tf.render.fallback`). They agree except at pixel
centres lying exactly on an edge shared by two faces (edge ties). ``HSR_TF_RENDER=fallback`` forces the
fallback; a build or load failure warns once and falls back. :func:`backend` says which is in use.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import tensorflow as tf

from hsr_tf.render import fallback as _fallback

__all__ = ["rasterize_ids", "backend", "use_backend", "fallback_reason", "scale_camera"]

_state = {"backend": None, "reason": None}


def _init():
    if _state["backend"] is not None:
        return
    _state["backend"] = "fallback"
    if os.environ.get("HSR_TF_RENDER", "auto").strip().lower() == "fallback":
        _state["reason"] = "HSR_TF_RENDER=fallback"
        return
    try:
        from hsr_tf.render import compiled  # noqa: PLC0415
        compiled.load()
        _state["backend"] = "compiled"
    except Exception as e:  # noqa: BLE001 (any build/load failure falls back, never fails the caller)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _state["reason"] = f"{type(e).__name__}: {first}"
        warnings.warn("hsr_tf.render: the compiled rasteriser is unavailable (" + _state["reason"] + "); using "
                      "the pure-TensorFlow fallback (same depth maps, slower). Run `python -m hsr_tf.ops.build` "
                      "for the build log.", RuntimeWarning, stacklevel=3)


def backend() -> str:
    """``"compiled"`` or ``"fallback"``."""
    _init()
    return _state["backend"]


def fallback_reason():
    """Why the fallback is in use (None when the compiled op loaded)."""
    _init()
    return _state["reason"]


@contextlib.contextmanager
def use_backend(name: str):
    """Selects ``"compiled"`` or ``"fallback"`` for renders called (traced) inside the block."""
    if name not in ("compiled", "fallback"):
        raise ValueError(f"use_backend: name must be 'compiled' or 'fallback', found {name!r}")
    _init()
    if name == "compiled":
        from hsr_tf.render import compiled  # noqa: PLC0415
        if not compiled.available():
            raise RuntimeError(f"use_backend('compiled'): the compiled rasteriser is unavailable ({_state['reason']})")
    old = _state["backend"]
    _state["backend"] = name
    try:
        yield
    finally:
        _state["backend"] = old


def rasterize_ids(vertices, faces, camera, height: int, width: int, near: float = 1.0,
                  search_radius: float = 3.0):
    """Visible face and nearest face per pixel (no gradient).

    Args:
      vertices: float [B,V,3] camera mm. faces: int [F,3] vertex indices (any winding; no culling).
      camera: float [B,4] (fx, fy, cx, cy) pixels, of the H x W image.
      height, width: image size (pixels). near: mm; surfaces nearer than this are clipped.
      search_radius: pixels; the nearest-face search radius (0 disables it).
    Returns:
      face_ids int32 [B,H,W]: the face whose surface the ray through the pixel centre hits first
        (depth >= near), -1 where none does.
      near_ids int32 [B,H,W]: at pixels with face_ids == -1, the face whose projection is nearest to the
        pixel centre if within search_radius (faces with a vertex at depth <= near excluded), else -1;
        -1 at covered pixels.
    """
    vertices = tf.stop_gradient(tf.cast(vertices, tf.float32))
    camera = tf.stop_gradient(tf.cast(camera, tf.float32))
    faces = tf.cast(faces, tf.int32)
    check = tf.debugging.assert_all_finite(vertices, "render: vertices contain NaN or Inf")
    with tf.control_dependencies([check]):
        vertices = tf.identity(vertices)
    if backend() == "compiled":
        from hsr_tf.render import compiled  # noqa: PLC0415
        return compiled.rasterize_ids(vertices, faces, camera, height, width, near, search_radius)
    return _fallback.rasterize_ids(vertices, faces, camera, height, width, float(near), float(search_radius))


def scale_camera(camera, factor: float):
    """Intrinsics of an image resized by ``factor`` (e.g. 1/8 for 256 -> 32), pixel-centre convention.

    A pixel coordinate maps as u -> (u + 0.5) * factor - 0.5, so fx' = fx k, cx' = (cx + 0.5) k - 0.5.

    Args:
      camera: [..., 4] (fx, fy, cx, cy). Returns: [..., 4] of the same dtype.
    """
    camera = tf.convert_to_tensor(camera)
    k = tf.cast(factor, camera.dtype)
    return tf.concat([camera[..., :2] * k, (camera[..., 2:] + 0.5) * k - 0.5], axis=-1)
