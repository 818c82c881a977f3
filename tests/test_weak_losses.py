"""hsr_tf.losses_weak: reference resampling, pseudo-GT mesh loss and L_weakly against NumPy; the optimisation test
(a hand mesh shifted 10 mm sideways and 10 mm in depth is pulled back by gradient descent on L_D alone)."""
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import losses_rgb, losses_weak, render
from hsr_tf.hand_model import HandModel

RNG = np.random.default_rng(3)


def _np_smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def _np_reference(depth, mask, size):
    """Loop version: lower median of the valid central samples of each block, mask mean > 0.5."""
    b, s, _ = depth.shape
    k = s // size
    idx = sorted({(k - 1) // 2, k // 2})
    ref = np.zeros((b, size, size), np.float32)
    refm = np.zeros((b, size, size), np.float32)
    for n in range(b):
        for r in range(size):
            for c in range(size):
                ds = [depth[n, r * k + i, c * k + j] for i in idx for j in idx]
                ms = [mask[n, r * k + i, c * k + j] for i in idx for j in idx]
                refm[n, r, c] = float(np.mean(ms) > 0.5)
                good = sorted(d for d, m in zip(ds, ms) if d > 0 and m > 0.5)
                if good and refm[n, r, c]:
                    ref[n, r, c] = good[(len(good) - 1) // 2]
    return ref, refm


@pytest.mark.parametrize("s,size", [(64, 16), (24, 8), (8, 8)])
def test_reference_depth_matches_numpy(s, size):
    depth = RNG.uniform(400, 600, (2, s, s)).astype(np.float32)
    depth[RNG.random(depth.shape) < 0.2] = 0.0  # missing measurements
    mask = (RNG.random(depth.shape) < 0.7).astype(np.float32)
    ref, refm = losses_weak.reference_depth(depth, mask, size)
    want, wantm = _np_reference(depth, mask, size)
    np.testing.assert_array_equal(refm.numpy(), wantm)
    np.testing.assert_array_equal(ref.numpy(), want)


def test_reference_depth_ignores_background_depth_and_never_blends_a_step():
    depth = np.full((1, 8, 8), 900.0, np.float32)  # background scene, seen by the sensor
    mask = np.zeros((1, 8, 8), np.float32)
    depth[0, :, :4], mask[0, :, :4] = 500.0, 1.0   # hand on the left half
    depth[0, 1:3, 1:3] = [[500.0, 530.0], [530.0, 530.0]]  # a finger step inside one block's centre
    ref, refm = losses_weak.reference_depth(depth, mask, 2)
    np.testing.assert_array_equal(refm.numpy()[0], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(ref.numpy()[0], [[530.0, 0], [500.0, 0]])  # a measured value, not 522.5
    with pytest.raises(ValueError, match="multiple of 32"):
        losses_weak.reference_depth(np.zeros((1, 40, 40)), np.zeros((1, 40, 40)), 32)


def _np_laplacian_terms(pred, ref, faces, scale):
    v = pred.shape[1]
    adj = np.zeros((v, v))
    for f in faces:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            adj[a, b] = adj[b, a] = 1.0
    iu = np.argwhere(np.triu(adj) > 0)
    edge, lap = [], []
    for n in range(pred.shape[0]):
        p, r = pred[n] / scale[n], ref[n] / scale[n]
        e_p = ((p[iu[:, 0]] - p[iu[:, 1]]) ** 2).sum(-1)
        e_r = ((r[iu[:, 0]] - r[iu[:, 1]]) ** 2).sum(-1)
        edge.append(((e_r - e_p) ** 2).sum() / v)
        d = r - p
        avg = (adj @ d) / adj.sum(1, keepdims=True)
        lap.append(((d - avg) ** 2).sum() / v)
    return np.array(edge), np.array(lap)


def test_pseudo_gt_mesh_loss_matches_numpy_and_weights_frames():
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2], [1, 4, 2]], np.int32)
    ref = RNG.normal(size=(3, 5, 3)).astype(np.float32) * 20
    pred = ref + RNG.normal(size=ref.shape).astype(np.float32) * 4
    scale = np.array([10.0, 15.0, 30.0], np.float32)
    w = np.array([1.0, 0.0, 1.0], np.float32)
    total, terms = losses_weak.pseudo_gt_mesh_loss(pred, ref, faces, scale, w)
    e, lap = _np_laplacian_terms(pred, ref, faces, scale)
    want_e, want_l = (e[0] + e[2]) / 2, (lap[0] + lap[2]) / 2
    assert float(terms["pseudo_edge"]) == pytest.approx(want_e, rel=1e-4)
    assert float(terms["pseudo_laplacian"]) == pytest.approx(want_l, rel=1e-4)
    assert float(total) == pytest.approx(want_e + 50 * want_l, rel=1e-4)
    # a rigid translation of the prediction changes neither edge lengths nor the Laplacian of the offsets
    total2, _ = losses_weak.pseudo_gt_mesh_loss(ref + [30.0, -5.0, 12.0], ref, faces, scale)
    assert float(total2) < 1e-9


def test_weakly_supervised_loss_combines_eq8_terms():
    model = HandModel.load()
    faces = np.asarray(model.faces, np.int32)
    v = (model.mean_shape - model.mean_shape.mean(0) + [0, 0, 500.0]).astype(np.float32)
    b, s = 2, 64
    pred = np.stack([v, v + [4.0, -3.0, 8.0]]).astype(np.float32)
    pseudo = pred + RNG.normal(size=pred.shape).astype(np.float32)
    cam = np.tile([[150.0, 150.0, 31.5, 31.5]], [b, 1]).astype(np.float32)
    depth = render.render_depth(np.stack([v, v]), faces, cam, s, s).numpy()
    batch = {"heatmaps": RNG.random((b, 8, 8, 21)).astype(np.float32), "depth": depth,
             "mask": (depth > 0).astype(np.float32), "camera": cam, "bone_scale": np.array([30.0, 40.0], np.float32),
             "joints": RNG.normal(size=(b, 21, 3)).astype(np.float32) * 30 + 500, "pseudo_vertices": pseudo}
    out = {"heatmaps_all": RNG.random((b, 2, 8, 8, 21)).astype(np.float32), "vertices": pred,
           "joints": RNG.normal(size=(b, 21, 3)).astype(np.float32) * 30 + 500}
    cfg = losses_weak.WeakLossConfig(lambda_j=10.0, depth_size=32)
    total, terms = losses_weak.weakly_supervised_loss(batch, out, faces, cfg, s)
    # independent pieces: heat-map and pose from losses_rgb; depth by NumPy from the renderer's 32 x 32 output
    h = float(losses_rgb.heatmap_loss(out["heatmaps_all"], batch["heatmaps"]))
    j = float(losses_rgb.pose_loss(out["joints"], batch["joints"], batch["bone_scale"]))
    rend = render.render_depth(pred, faces, render.scale_camera(cam, 0.5), 32, 32).numpy()
    ref = depth.reshape(b, 32, 2, 32, 2)[:, :, 1, :, 1]  # centre pixels' lower median (k = 2: all 4 samples)
    blocks = np.sort(np.where(depth > 0, depth, np.inf).reshape(b, 32, 2, 32, 2).transpose(0, 1, 3, 2, 4)
                     .reshape(b, 32, 32, 4), -1)
    n = (depth > 0).reshape(b, 32, 2, 32, 2).sum((2, 4))
    refm = (depth > 0).reshape(b, 32, 2, 32, 2).mean((2, 4)) > 0.5
    ref = np.where(refm & (n > 0), np.take_along_axis(blocks, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0], 0)
    d = _np_smooth_l1((rend - ref) / batch["bone_scale"][:, None, None]).mean()
    e, lap = _np_laplacian_terms(pred, pseudo, faces, batch["bone_scale"])
    pm = e.mean() + 50 * lap.mean()
    assert float(terms["depth"]) == pytest.approx(d, rel=1e-4)
    assert float(terms["pseudo_mesh"]) == pytest.approx(pm, rel=1e-3)
    assert float(total) == pytest.approx(0.1 * h + 0.1 * d + pm + 10 * j, rel=1e-3)
    with pytest.raises(ValueError, match="pseudo_vertices"):
        losses_weak.weakly_supervised_loss({k: x for k, x in batch.items() if k != "pseudo_vertices"}, out, faces,
                                           cfg, s)


def _tilted_hand():
    model = HandModel.load()
    v = model.mean_shape - model.mean_shape.mean(0)
    a, b = np.deg2rad(35.0), np.deg2rad(25.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return (v @ rx.T @ ry.T + [0.0, 0.0, 500.0]).astype(np.float32), np.asarray(model.faces, np.int32)


def test_depth_loss_pulls_a_shifted_hand_back():
    """10 mm sideways + 10 mm deeper, reference from a 64 x 64 render resampled to 32 x 32 with its mask
    (background pixels included); Adam on the translation with L_D alone must end within 1.5 mm."""
    v, faces = _tilted_hand()
    cam32 = np.array([[70.0, 70.0, 15.5, 15.5]], np.float32)
    d64 = render.render_depth(v[None], faces, render.scale_camera(cam32, 2.0), 64, 64)
    ref, ref_mask = losses_weak.reference_depth(d64, tf.cast(d64 > 0, tf.float32), 32)
    assert 150 < float(tf.reduce_sum(ref_mask)) < 600  # the hand fills a good part of the map, not all of it
    t = tf.Variable([10.0, 0.0, 10.0])
    opt = tf.keras.optimizers.Adam(0.5)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            parts = render.render_depth_parts(v[None] + t, faces, cam32, 32, 32)
            loss = losses_weak.depth_loss(parts, ref, ref_mask, 10.0)
        opt.apply_gradients([(tape.gradient(loss, t), t)])
        return loss

    first = float(step())
    for _ in range(119):
        last = float(step())
    assert last < 0.25 * first  # the floor: pixels where the 64 -> 32 resampled mask differs from a 32 render
    assert np.linalg.norm(t.numpy()) < 1.5, t.numpy()
