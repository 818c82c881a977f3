"""hsr_tf.render: forward depth against open3d ray casting, surface and silhouette gradients, edge cases."""
import numpy as np
import open3d as o3d
import pytest
import tensorflow as tf

from hsr_tf import render

H = W = 32
CAM = np.array([64.0, 60.0, 15.5, 14.0], np.float32)


def _sphere(center, radius=50.0, res=24):
    m = o3d.geometry.TriangleMesh.create_sphere(radius, res)
    return (np.asarray(m.vertices) + center).astype(np.float32), np.asarray(m.triangles).astype(np.int32)


def _o3d_depth(verts, faces, cam, h, w):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    r, c = np.indices((h, w)).astype(np.float64)
    d = np.stack([(c - cam[2]) / cam[0], (cam[3] - r) / cam[1], np.ones_like(c)], -1)
    t = scene.cast_rays(o3d.core.Tensor(np.concatenate([np.zeros_like(d), d], -1).astype(np.float32)))["t_hit"]
    t = t.numpy()
    return np.where(np.isfinite(t), t, 0.0)


def _backends():
    return ["fallback"] + (["compiled"] if render.backend() == "compiled" else [])


@pytest.mark.parametrize("name", _backends())
def test_forward_matches_open3d(name):
    v, f = _sphere([10.0, -5.0, 500.0])
    ref = _o3d_depth(v, f, CAM, H, W)
    with render.use_backend(name):
        d = render.render_depth(v[None], f, CAM[None], H, W).numpy()[0]
    assert np.sum((d > 0) != (ref > 0)) <= 2  # edge ties only
    both = (d > 0) & (ref > 0)
    assert both.sum() > 50 and np.abs(d - ref)[both].max() < 0.5


def _translation_grad(v, f, pixel):
    x = tf.constant(v[None])
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = render.render_depth(x, f, CAM[None], H, W)
        target = d[0, pixel[0], pixel[1]]
    g = tape.gradient(target, x)
    return np.zeros(3) if g is None else g.numpy()[0].sum(0)


def test_silhouette_gradient_moves_mesh_toward_outside_pixels():
    v, f = _sphere([0.0, 0.0, 500.0])
    d = render.render_depth(v[None], f, CAM[None], H, W).numpy()[0]
    rows, cols = np.nonzero(d > 0)
    mid_r, mid_c = 14, 15
    left = (mid_r, cols[rows == mid_r].min() - 1)
    right = (mid_r, cols[rows == mid_r].max() + 1)
    top = (rows[cols == mid_c].min() - 1, mid_c)
    bottom = (rows[cols == mid_c].max() + 1, mid_c)
    for pix in (left, right, top, bottom):
        assert d[pix] == 0
    assert _translation_grad(v, f, left)[0] < 0      # x right: pixel on the left wants the mesh to move left
    assert _translation_grad(v, f, right)[0] > 0
    assert _translation_grad(v, f, top)[1] > 0       # y up: the row above wants the mesh to move up
    assert _translation_grad(v, f, bottom)[1] < 0
    x = tf.constant(v[None])
    with tf.GradientTape() as tape:
        tape.watch(x)
        dd = render.render_depth(x, f, CAM[None], H, W, silhouette_grad=False)
        target = dd[0, left[0], left[1]]
    g = tape.gradient(target, x)
    assert g is None or np.all(g.numpy() == 0)       # surface-only gradients: exactly zero outside


def test_surface_gradient_matches_float64_finite_differences_and_hidden_vertices_get_none():
    front, f = _sphere([0.0, 0.0, 500.0], radius=40.0, res=10)
    back, fb = _sphere([0.0, 0.0, 700.0], radius=10.0, res=6)  # wholly hidden behind the front sphere
    v = np.concatenate([front, back]).astype(np.float64)
    faces = np.concatenate([f, fb + len(front)])
    pix = (14, 15)
    x = tf.constant(v[None])
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = render.render_depth(x, faces, CAM[None].astype(np.float64), H, W)[0, pix[0], pix[1]]
    g = tape.gradient(d, x).numpy()[0]
    assert np.all(g[len(front):] == 0)
    h = 1e-4
    fid = render.rasterize_ids(v[None], faces, CAM[None], H, W)[0].numpy()[0, pix[0], pix[1]]
    for vi in faces[fid]:
        for k in range(3):
            vp, vm = v.copy(), v.copy()
            vp[vi, k] += h
            vm[vi, k] -= h
            dp = render.render_depth(vp[None], faces, CAM[None].astype(np.float64), H, W).numpy()[0][pix]
            dm = render.render_depth(vm[None], faces, CAM[None].astype(np.float64), H, W).numpy()[0][pix]
            assert abs((dp - dm) / (2 * h) - g[vi, k]) < 1e-4 * max(1.0, abs(g[vi, k]))


def test_behind_camera_off_image_and_degenerate_faces_give_no_nan():
    v, f = _sphere([0.0, 0.0, 500.0])
    extra = np.array([[0, 0, -100.0], [50, 0, 300.0], [0, 50, 300.0],     # crosses the camera plane
                      [5000, 0, 500], [5100, 0, 500], [5000, 100, 500],   # off image
                      [1, 1, 450], [1, 1, 450], [2, 2, 450]], np.float32)  # degenerate
    verts = np.concatenate([v, extra])
    n = len(v)
    faces = np.concatenate([f, np.arange(n, n + 9, dtype=np.int32).reshape(3, 3)])
    x = tf.constant(verts[None])
    for name in _backends():
        with render.use_backend(name):
            with tf.GradientTape() as tape:
                tape.watch(x)
                d = render.render_depth(x, faces, CAM[None], H, W)
                loss = tf.reduce_sum(d)
            g = tape.gradient(loss, x).numpy()
        assert np.all(np.isfinite(d.numpy())) and np.all(np.isfinite(g))
        assert np.all(d.numpy() >= 0)


@pytest.mark.skipif(render.backend() != "compiled", reason="compiled rasteriser unavailable")
def test_compiled_and_fallback_pick_the_same_faces_on_a_hand():
    """Both backends search only contour faces for near_ids; the nearest distance must agree (ids may differ
    only where two faces are equally near), and face_ids agree but for edge ties."""
    from hsr_tf.hand_model import HandModel
    from hsr_tf.render import fallback

    model = HandModel.load()
    f = np.asarray(model.faces, np.int32)
    v = (model.mean_shape - model.mean_shape.mean(0) + [5.0, -3.0, 450.0]).astype(np.float32)[None]
    cam = np.array([[80.0, 80.0, 15.5, 15.5]], np.float32)
    ids = {}
    for name in ("compiled", "fallback"):
        with render.use_backend(name):
            ids[name] = [x.numpy()[0] for x in render.rasterize_ids(v, f, cam, H, W)]
    (fc, nc), (ff, nf) = ids["compiled"], ids["fallback"]
    assert np.sum(fc != ff) <= 3 and np.sum(nc >= 0) > 40
    r, c = np.indices((H, W))
    u = cam[0, 2] + cam[0, 0] * v[0, :, 0] / v[0, :, 2]
    w = cam[0, 3] - cam[0, 1] * v[0, :, 1] / v[0, :, 2]
    uv = np.stack([u, w], -1)
    both = (nc >= 0) & (nf >= 0)
    assert np.sum((nc >= 0) != (nf >= 0)) <= 3
    q = np.stack([c[both], r[both]], -1).astype(np.float32)
    dc = fallback.point_triangle_sq_distance(q, uv[f[nc[both]]]).numpy()
    df = fallback.point_triangle_sq_distance(q, uv[f[nf[both]]]).numpy()
    np.testing.assert_allclose(dc, df, atol=1e-3)
    # brute force over ALL faces: the contour-face restriction loses no nearest face
    out = (fc < 0) & (ff < 0)
    qa = np.stack([c[out], r[out]], -1).astype(np.float32)
    d_all = fallback.point_triangle_sq_distance(qa[:, None], uv[f][None]).numpy().min(1)
    within = d_all <= 9.0  # search_radius 3 px
    np.testing.assert_array_equal(nc[out] >= 0, within)
    dq = fallback.point_triangle_sq_distance(qa[within], uv[f[nc[out][within]]]).numpy()
    np.testing.assert_allclose(dq, d_all[within], atol=1e-3)
