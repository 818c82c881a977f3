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
    shape = tf.cast(tf.stack([tf.shape(vertices)[0], height, width]), tf.int64)
    num_v = tf.shape(vertices)[1]
    flat_v = tf.reshape(vertices, [-1, 3])  # [B*V,3]

    def rays(idx):
        """Pixel-centre rays [N,3] (and the camera rows [N,4]) of pixels idx [N,3] = (b, r, c)."""
        k = tf.gather(camera, idx[:, 0])
        r, c = tf.cast(idx[:, 1], dtype), tf.cast(idx[:, 2], dtype)
        return tf.stack([(c - k[:, 2]) / k[:, 0], (k[:, 3] - r) / k[:, 1], tf.ones_like(c)], -1), k

    def corners(idx, ids):
        """Vertex indices [N,3] into flat_v of the faces ids [N] seen at pixels idx [N,3]."""
        return tf.gather(faces, ids) + tf.cast(idx[:, :1], tf.int32) * num_v

    # Only the pixels that need them are computed (covered pixels; uncovered pixels near the outline), then
    # scattered back: at 256 x 256 the dense [B,H,W,3,3] version spent most of its time on empty pixels.
    # visible surface: ray / plane intersection of the face hit
    cov_idx = tf.where(face_ids >= 0)  # [N,3] int64
    ray, _ = rays(cov_idx)
    p = tf.gather(flat_v, corners(cov_idx, tf.gather_nd(face_ids, cov_idx)))  # [N,3,3]
    n = _cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    den = tf.reduce_sum(n * ray, -1)
    ok = tf.abs(den) > 0  # an edge-on face at a tie: no depth rather than inf / NaN
    z_hit = tf.where(ok, tf.reduce_sum(n * p[:, 0], -1) / tf.where(ok, den, tf.ones_like(den)), tf.zeros_like(den))
    z = tf.scatter_nd(cov_idx, z_hit, shape)
    cov = tf.scatter_nd(cov_idx, tf.cast(ok, dtype), shape)
    covered = cov > 0

    if silhouette_grad:
        zv = vertices[..., 2]
        k = camera[:, None, :]
        front = zv > near
        zs = tf.where(front, zv, tf.ones_like(zv))  # vertices behind `near` never reach the distance term
        uv = tf.reshape(tf.stack([k[..., 2] + k[..., 0] * vertices[..., 0] / zs,
                                  k[..., 3] - k[..., 1] * vertices[..., 1] / zs], -1), [-1, 2])  # [B*V,2]
        near_idx = tf.where(near_ids >= 0)  # [M,3] uncovered pixels within search_radius of a face
        tri = corners(near_idx, tf.gather_nd(near_ids, near_idx))  # [M,3]
        q = tf.stack([tf.cast(near_idx[:, 2], dtype), tf.cast(near_idx[:, 1], dtype)], -1)  # pixel centres (u, v)
        dist = tf.sqrt(_geom.point_triangle_sq_distance(q, tf.gather(uv, tri)) + 1e-6)
        z_near = tf.stop_gradient(tf.reduce_mean(tf.gather(tf.reshape(zv, [-1]), tri), -1))
        s = tf.cast(sigma, dtype)
        outside = tf.scatter_nd(near_idx, tf.sigmoid(-dist / s), shape)  # 0 away from the outline
        a = 1.0 + tf.scatter_nd(near_idx, tf.sigmoid((1.0 - dist) / s) - 1.0, shape)  # 1 away from it
        inside = (_neighbour(a, -1, 0, 1.0) * _neighbour(a, 1, 0, 1.0) * _neighbour(a, 0, -1, 1.0)
                  * _neighbour(a, 0, 1, 1.0))
        m = tf.where(covered, inside, outside)
        mask = cov + (m - tf.stop_gradient(m))
        surface = z + tf.scatter_nd(near_idx, z_near, shape)  # disjoint supports
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
