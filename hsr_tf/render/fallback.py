"""Pure-TensorFlow rasteriser (the ``fallback`` backend of :mod:`hsr_tf.render`).

Legend: B batch, V vertices, F faces, H, W image height / width (pixels), N candidate (pixel, face) pairs.

Produces the two integer maps of :func:`hsr_tf.render.raster.rasterize_ids` without any custom op:

* ``face_ids`` int32 [B,H,W]: the face hit first by the ray through each pixel centre (-1: none);
* ``near_ids`` int32 [B,H,W]: for pixels no face covers, the face whose image-plane projection is nearest
  to the pixel centre, if within ``search_radius`` pixels (-1 otherwise, and at covered pixels).

Method: every face enumerates exactly the pixel centres inside its screen bounding box (ragged, with
``tf.repeat``: no padding to the largest face), the ray through each is intersected with the face's
plane (signed-volume inside test, edge pixels inclusive), and a z-buffer is a ``unsorted_segment_min``
over an int64 key ``(float bits of depth) << 32 | face`` (positive float32 bit patterns sort like the
numbers; equal depths go to the lower face id). The nearest-face search does the same over the box
dilated by the radius with the 2D point-to-triangle distance. Faces with a vertex nearer than ``near`` are
clipped there: their box comes from the clipped polygon and they take no part in the nearest-face search.
Cost grows with the summed box areas (small for meshes whose faces cover few pixels).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

_BIG = tf.int64.max


def edge_faces(faces_np):
    """Edge adjacency of a triangle list: int32 [E,2] (face, neighbour face or -1 at a boundary edge).

    An edge shared by k > 2 faces (non-manifold) pairs every face with -1, so all of them count as
    contour faces. faces_np: [F,3] ints.
    """
    f = np.asarray(faces_np, dtype=np.int64)
    e = np.sort(np.stack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], 1).reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(len(f)), 3)
    _, inv, cnt = np.unique(e, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    pairs = []
    start = 0
    for k in cnt:
        grp = owner[order[start:start + k]]
        start += k
        if k == 2:
            pairs.append((grp[0], grp[1]))
        else:
            pairs.extend((g, -1) for g in grp)
    return np.asarray(pairs, dtype=np.int32).reshape(-1, 2)


def _contour_faces(u, v, all_front, pairs):
    """bool [B,F]: faces with an edge whose neighbour has the other screen orientation (or none).

    Only such faces can hold the nearest point of the projected mesh to a pixel outside it (on a shared
    edge between two faces of the same orientation the projections lie on both sides: no outline there).
    """
    area = (u[..., 1] - u[..., 0]) * (v[..., 2] - v[..., 0]) - (u[..., 2] - u[..., 0]) * (v[..., 1] - v[..., 0])
    sign = tf.where(all_front, tf.sign(area), 2.0)  # faces crossing `near` never match a neighbour
    sign = tf.concat([sign, tf.fill([tf.shape(sign)[0], 1], 3.0)], 1)  # index -1 -> a sign nobody has
    a = tf.gather(sign, pairs[:, 0], axis=1)
    b = tf.gather(sign, tf.where(pairs[:, 1] >= 0, pairs[:, 1], tf.shape(sign)[1] - 1), axis=1)
    flag = tf.cast(tf.not_equal(a, b) | tf.equal(a, 0.0), tf.int32)  # [B,E]
    num = tf.shape(u)[1]
    ids = tf.concat([pairs[:, 0], tf.where(pairs[:, 1] >= 0, pairs[:, 1], num)], 0)
    per = tf.math.unsorted_segment_max(tf.transpose(tf.concat([flag, flag], 1)), ids, num + 1)[:num]
    return tf.transpose(per) > 0


def _enumerate(c0, c1, r0, r1):
    """Pixel centres of boxes [c0..c1] x [r0..r1] (inclusive ints, [BF] each; empty when c1 < c0).

    Returns (owner [N] int32 box index, r [N], c [N] int32).
    """
    nc = tf.maximum(c1 - c0 + 1, 0)
    nr = tf.maximum(r1 - r0 + 1, 0)
    counts = tf.cast(nc, tf.int64) * tf.cast(nr, tf.int64)
    owner = tf.repeat(tf.range(tf.size(counts, out_type=tf.int32)), counts)
    start = tf.cumsum(counts, exclusive=True)
    local = tf.range(tf.reduce_sum(counts), dtype=tf.int64) - tf.gather(start, owner)
    width = tf.cast(tf.gather(nc, owner), tf.int64)
    r = tf.gather(r0, owner) + tf.cast(local // width, tf.int32)
    c = tf.gather(c0, owner) + tf.cast(local % width, tf.int32)
    return owner, r, c


def _pixel_box(lo, hi, pad, size):
    """Inclusive pixel-centre range covering [lo - pad, hi + pad], clamped to [0, size - 1]."""
    eps = 1e-3  # float slack between the projection and the ray test; the test decides
    a = tf.math.ceil(tf.clip_by_value(lo - pad - eps, -1.0, float(size)))
    b = tf.math.floor(tf.clip_by_value(hi + pad + eps, -1.0, float(size)))
    return tf.cast(tf.maximum(a, 0.0), tf.int32), tf.cast(tf.minimum(b, size - 1.0), tf.int32)


def _cross(a, b):
    return tf.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                     a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _segment_argmin(value, face, pix, valid, num):
    """Per pixel, the face with the smallest non-negative float32 ``value`` (lower face on ties); -1 if none."""
    bits = tf.cast(tf.bitcast(value, tf.int32), tf.int64)
    key = tf.where(valid, tf.bitwise.left_shift(bits, 32) | tf.cast(face, tf.int64), _BIG)
    best = tf.math.unsorted_segment_min(key, pix, num)
    return tf.where(best == _BIG, -1, tf.cast(best & 0xFFFFFFFF, tf.int32))


def rasterize_ids(vertices, faces, camera, height: int, width: int, near: float, search_radius: float):
    """See module docstring. vertices float32 [B,V,3] mm, faces int32 [F,3], camera float32 [B,4].

    When ``faces`` is a constant (NumPy array or constant tensor) the nearest-face search visits only
    contour faces (:func:`_contour_faces`), which gives the same distances for a fraction of the work.
    """
    static_faces = tf.get_static_value(faces)
    b = tf.shape(vertices)[0]
    f = tf.shape(faces)[0]
    tri = tf.gather(vertices, faces, axis=1)  # [B,F,3 corners,3 xyz]
    cam = camera[:, None, None, :]
    fx, fy, cx, cy = cam[..., 0], cam[..., 1], cam[..., 2], cam[..., 3]
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]  # [B,F,3]
    front = z > near
    zs = tf.where(front, z, 1.0)
    u = cx + fx * x / zs
    v = cy - fy * y / zs
    # where an edge crosses the near plane, the clipped polygon gains the crossing point (projected at z=near)
    xj, yj, zj = (tf.roll(a, -1, axis=-1) for a in (x, y, z))
    crosses = tf.not_equal(front, tf.roll(front, -1, axis=-1))
    dz = tf.where(crosses, zj - z, 1.0)
    t = (near - z) / dz
    uc = cx + fx * (x + t * (xj - x)) / near
    vc = cy - fy * (y + t * (yj - y)) / near
    pts_u = tf.concat([u, uc], -1)
    pts_v = tf.concat([v, vc], -1)
    ok = tf.concat([front, crosses], -1)
    inf = float("inf")
    umin = tf.reduce_min(tf.where(ok, pts_u, inf), -1)
    umax = tf.reduce_max(tf.where(ok, pts_u, -inf), -1)
    vmin = tf.reduce_min(tf.where(ok, pts_v, inf), -1)
    vmax = tf.reduce_max(tf.where(ok, pts_v, -inf), -1)
    any_front = tf.reduce_any(front, -1)
    all_front = tf.reduce_all(front, -1)
    flat = lambda a: tf.reshape(a, [-1])  # noqa: E731  [B,F,...] -> [BF,...]
    num = b * height * width
    batch_of = lambda owner: owner // f  # noqa: E731

    # ---- z-buffer: ray / face-plane intersection at the pixel centres of each face's box
    c0, c1 = _pixel_box(flat(umin), flat(umax), 0.0, width)
    r0, r1 = _pixel_box(flat(vmin), flat(vmax), 0.0, height)
    c1 = tf.where(flat(any_front), c1, -1)
    owner, r, c = _enumerate(c0, c1, r0, r1)
    p = tf.reshape(tri, [-1, 3, 3])
    n = _cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])  # [BF,3] face normal (unnormalised)
    num_face = tf.reduce_sum(n * p[:, 0], -1)  # n . P0
    vol = tf.stack([_cross(p[:, 1], p[:, 2]), _cross(p[:, 2], p[:, 0]), _cross(p[:, 0], p[:, 1])], 1)  # [BF,3,3]
    bo = batch_of(owner)
    k = tf.gather(camera, bo)  # [N,4]
    cf = tf.cast(c, tf.float32)
    rf = tf.cast(r, tf.float32)
    ray = tf.stack([(cf - k[:, 2]) / k[:, 0], (k[:, 3] - rf) / k[:, 1], tf.ones_like(cf)], -1)  # [N,3]
    e = tf.reduce_sum(tf.gather(vol, owner) * ray[:, None, :], -1)  # [N,3] signed volumes
    inside = ((tf.reduce_min(e, -1) >= 0) | (tf.reduce_max(e, -1) <= 0)) & tf.reduce_any(e != 0, -1)
    den = tf.reduce_sum(tf.gather(n, owner) * ray, -1)
    depth = tf.gather(num_face, owner) / tf.where(den != 0, den, 1.0)
    hit = inside & (den != 0) & (depth >= near) & tf.math.is_finite(depth)
    pix = (bo * height + r) * width + c
    face_ids = _segment_argmin(tf.where(hit, depth, 0.0), owner % f, pix, hit, num)

    # ---- nearest face (2D distance, pixels) within the search radius, for faces wholly in front
    if search_radius > 0:
        c0, c1 = _pixel_box(flat(umin), flat(umax), search_radius, width)
        r0, r1 = _pixel_box(flat(vmin), flat(vmax), search_radius, height)
        search = all_front
        if static_faces is not None:
            search = search & _contour_faces(u, v, all_front, tf.constant(edge_faces(static_faces)))
        c1 = tf.where(flat(search), c1, -1)
        owner, r, c = _enumerate(c0, c1, r0, r1)
        uv = tf.stack([tf.reshape(u, [-1, 3]), tf.reshape(v, [-1, 3])], -1)  # [BF,3,2]
        q = tf.stack([tf.cast(c, tf.float32), tf.cast(r, tf.float32)], -1)  # [N,2]
        d2 = point_triangle_sq_distance(q, tf.gather(uv, owner))
        bo = batch_of(owner)
        pix = (bo * height + r) * width + c
        near_ids = _segment_argmin(d2, owner % f, pix, d2 <= search_radius ** 2, num)
    else:
        near_ids = tf.fill([num], -1)
    face_ids = tf.reshape(face_ids, [b, height, width])
    near_ids = tf.where(face_ids >= 0, -1, tf.reshape(near_ids, [b, height, width]))
    return face_ids, near_ids


def point_triangle_sq_distance(q, tri):
    """Squared 2D distance from points to triangles (0 inside).

    Args:
      q: [..., 2] points. tri: [..., 3, 2] triangle corners (any winding; degenerate allowed).
    Returns:
      [...] squared distance.
    """
    a = tri
    bb = tf.roll(tri, -1, axis=-2)
    ab = bb - a
    aq = q[..., None, :] - a
    len2 = tf.reduce_sum(ab * ab, -1)
    t = tf.clip_by_value(tf.reduce_sum(aq * ab, -1) / tf.where(len2 > 0, len2, 1.0), 0.0, 1.0)
    t = tf.where(len2 > 0, t, 0.0)
    diff = aq - t[..., None] * ab
    seg = tf.reduce_min(tf.reduce_sum(diff * diff, -1), -1)
    side = ab[..., 0] * aq[..., 1] - ab[..., 1] * aq[..., 0]  # [..., 3] 2D edge functions
    inside = (tf.reduce_min(side, -1) >= 0) | (tf.reduce_max(side, -1) <= 0)
    return tf.where(inside, tf.zeros_like(seg), seg)
