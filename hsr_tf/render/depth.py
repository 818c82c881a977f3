"""Differentiable depth rendering of triangle meshes: exact z-buffer forward, surface and silhouette gradients.

Legend: B batch, V vertices, F faces, H, W image height / width (pixels).

Forward (exact): the rasteriser (:mod:`hsr_tf.render.raster`) picks the face each pixel-centre ray hits
first; the depth is recomputed differentiably as the intersection of that ray ``d = ((c - cx)/fx,
(cy - r)/fy, 1)`` with the face's plane, ``z = (n . P0) / (n . d)``, n = (P1 - P0) x (P2 - P0) -- the
same number as perspective-correct barycentric interpolation of the vertex depths (the barycentrics of
the hit point are the signed volumes d . (Pj x Pk) normalised to sum 1). 0 where no face is hit.

Backward: through the visible surface (the formula above; hidden vertices get exactly zero), and at
silhouettes through a straight-through coverage: ``mask = hard + (m - stop_gradient(m))`` whose forward
is the exact 0/1 coverage and whose gradient is that of a soft coverage ``m`` built from the 2D distance
``dist`` (pixels) between an uncovered pixel centre and the nearest projected face (within
``search_radius``; the union of projected faces is the silhouette region, so this is the distance to
the outline):

* an uncovered pixel: ``m = sigmoid(-dist / sigma)``, so its depth ``mask * z_near`` (z_near: mean
  depth of that face, no gradient) grows when the face moves toward it;
* a covered pixel with uncovered 4-neighbours q: ``m = prod_q sigmoid((1 - dist_q) / sigma)`` (1 - dist_q
  approximates its own distance to the outline between them), so its depth falls when the outline
  retreats past it.

This keeps the forward an exact z-buffer (the depth maps match a ray caster) while giving the
outline the gradients a neural-mesh-renderer / soft-rasteriser would, from only the faces near it.
"""
from __future__ import annotations

import tensorflow as tf

from hsr_tf.render import fallback as _geom
from hsr_tf.render import raster


def _check(vertices, faces, camera, height, width):
    if not isinstance(height, int) or not isinstance(width, int) or height < 1 or width < 1:
        raise ValueError(f"render_depth: height and width must be positive Python ints, found {height!r}, {width!r}")
    if vertices.shape.rank is not None and (vertices.shape.rank != 3 or vertices.shape[-1] not in (None, 3)):
        raise ValueError(f"render_depth: vertices must have shape [B,V,3], found {vertices.shape}")
    if faces.shape.rank is not None and (faces.shape.rank != 2 or faces.shape[-1] not in (None, 3)):
        raise ValueError(f"render_depth: faces must have shape [F,3], found {faces.shape}")
    if camera.shape.rank is not None and (camera.shape.rank != 2 or camera.shape[-1] not in (None, 4)):
        raise ValueError(f"render_depth: camera must have shape [B,4] (fx, fy, cx, cy), found {camera.shape}")
    if vertices.shape.rank and camera.shape.rank and None not in (vertices.shape[0], camera.shape[0]) \
            and vertices.shape[0] != camera.shape[0]:
        raise ValueError(f"render_depth: batch mismatch, vertices {vertices.shape[0]}, camera {camera.shape[0]}")


def _cross(a, b):
    return tf.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                     a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _neighbour(a, dr, dc, fill):
    """a [B,H,W] -> value at (r + dr, c + dc), ``fill`` outside the image."""
    if dr:
        a = tf.pad(a[:, 1:] if dr > 0 else a[:, :-1], [[0, 0], [0, 1] if dr > 0 else [1, 0], [0, 0]],
                   constant_values=fill)
    if dc:
        a = tf.pad(a[:, :, 1:] if dc > 0 else a[:, :, :-1], [[0, 0], [0, 0], [0, 1] if dc > 0 else [1, 0]],
                   constant_values=fill)
    return a


def render_depth_parts(vertices, faces, camera, height: int, width: int, *, sigma: float = 1.0,
                       search_radius: float = 3.0, near: float = 1.0, silhouette_grad: bool = True):
    """Renders depth and returns its differentiable parts (see the module docstring).

    Args:
      vertices: float32 (or float64) [B,V,3] camera mm. faces: int [F,3]. camera: [B,4] (fx, fy, cx, cy).
      height, width: output size (pixels). sigma: soft-coverage scale (pixels). search_radius: how far
        (pixels) outside the outline uncovered pixels receive silhouette gradients. near: mm, clipping.
      silhouette_grad: False gives gradients through the visible surface only (for comparison).
    Returns:
      dict of [B,H,W] tensors (vertices' dtype unless noted):
        depth: mask * surface_depth; forward the exact z-buffer depth (mm, 0 = no face).
        mask: straight-through coverage (forward 0/1, gradient of the soft coverage).
        surface_depth: visible depth at covered pixels (surface gradient), the nearest face's mean depth
          (no gradient) at uncovered pixels near the outline, 0 elsewhere.
        coverage: hard 0/1 coverage (no gradient). face_ids, near_ids: int32 (see raster.rasterize_ids).
    """
    vertices = tf.convert_to_tensor(vertices)
    if not vertices.dtype.is_floating:
        raise ValueError(f"render_depth: vertices must be float, found {vertices.dtype.name}")
    dtype = vertices.dtype
    faces = tf.cast(tf.convert_to_tensor(faces), tf.int32)
    camera = tf.cast(tf.convert_to_tensor(camera), dtype)
    _check(vertices, faces, camera, height, width)
    if not sigma > 0 or search_radius < 0:
        raise ValueError(f"render_depth: need sigma > 0 and search_radius >= 0, found {sigma}, {search_radius}")
    face_ids, near_ids = raster.rasterize_ids(vertices, faces, camera, height, width, near,
                                              search_radius if silhouette_grad else 0.0)
    covered = face_ids >= 0
    has_near = near_ids >= 0
    k = camera[:, None, None, :]
    rows = tf.cast(tf.range(height), dtype)[None, :, None]
    cols = tf.cast(tf.range(width), dtype)[None, None, :]
    shape = [tf.shape(vertices)[0], height, width]
    rx = tf.broadcast_to((cols - k[..., 2]) / k[..., 0], shape)
    ray = tf.stack([rx, tf.broadcast_to((k[..., 3] - rows) / k[..., 1], shape), tf.ones_like(rx)], -1)  # [B,H,W,3]

    # visible surface: ray / plane intersection of the face hit
    p = tf.gather(vertices, tf.gather(faces, tf.maximum(face_ids, 0)), batch_dims=1)  # [B,H,W,3,3]
    n = _cross(p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :])
    den = tf.reduce_sum(n * ray, -1)
    ok = covered & (tf.abs(den) > 0)  # an edge-on face at a tie: no depth rather than inf / NaN
    z = tf.where(ok, tf.reduce_sum(n * p[..., 0, :], -1) / tf.where(ok, den, tf.ones_like(den)), tf.zeros_like(den))
    covered = ok
    cov = tf.cast(covered, dtype)

    if silhouette_grad:
        zv = vertices[..., 2]
        front = zv > near
        zs = tf.where(front, zv, tf.ones_like(zv))  # vertices behind `near` never reach the distance term
        uv = tf.stack([k[:, 0, 0, 2:3] + k[:, 0, 0, 0:1] * vertices[..., 0] / zs,
                       k[:, 0, 0, 3:4] - k[:, 0, 0, 1:2] * vertices[..., 1] / zs], -1)  # [B,V,2]
        tri = tf.gather(faces, tf.maximum(near_ids, 0))  # [B,H,W,3]
        quv = tf.gather(uv, tri, batch_dims=1)  # [B,H,W,3,2]
        q = tf.stack([tf.broadcast_to(cols, shape), tf.broadcast_to(rows, shape)], -1)  # [B,H,W,2] pixel centres
        dist = tf.sqrt(_geom.point_triangle_sq_distance(q, quv) + 1e-6)
        z_near = tf.stop_gradient(tf.reduce_mean(tf.gather(zv, tri, batch_dims=1), -1))
        s = tf.cast(sigma, dtype)
        one = tf.ones_like(dist)
        outside = tf.where(has_near, tf.sigmoid(-dist / s), tf.zeros_like(dist))
        a = tf.where(has_near, tf.sigmoid((1.0 - dist) / s), one)
        inside = (_neighbour(a, -1, 0, 1.0) * _neighbour(a, 1, 0, 1.0) * _neighbour(a, 0, -1, 1.0)
                  * _neighbour(a, 0, 1, 1.0))
        m = tf.where(covered, inside, outside)
        mask = cov + (m - tf.stop_gradient(m))
        surface = tf.where(covered, z, tf.where(has_near, z_near, tf.zeros_like(z)))
    else:
        mask = cov
        surface = z
    return {"depth": mask * surface, "mask": mask, "surface_depth": surface, "coverage": tf.stop_gradient(cov),
            "face_ids": face_ids, "near_ids": near_ids}


def render_depth(vertices, faces, camera, height: int, width: int, **kwargs):
    """Depth map [B,H,W] (mm, 0 where no face is hit) of meshes ``vertices`` [B,V,3] camera mm, ``faces``
    [F,3], seen by ``camera`` [B,4] (fx, fy, cx, cy); differentiable (keyword options: see
    :func:`render_depth_parts`)."""
    return render_depth_parts(vertices, faces, camera, height, width, **kwargs)["depth"]


def render_depth_and_mask(vertices, faces, camera, height: int, width: int, **kwargs):
    """(depth [B,H,W] mm, mask [B,H,W] coverage: forward exact 0/1, with silhouette gradients)."""
    out = render_depth_parts(vertices, faces, camera, height, width, **kwargs)
    return out["depth"], out["mask"]
