"""Each loss term against an independent NumPy/scipy computation; weights, ablation switches, schedule."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial import cKDTree

from hsr_tf import losses
from hsr_tf.data.datasets import NYU, add_palm_centre


def _tf(x):
    return tf.constant(np.asarray(x), tf.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_joint_and_shape_loss_vs_numpy(rng, reduction):
    pred = rng.normal(size=(3, 21, 3)) * 0.1
    gt = rng.normal(size=(3, 21, 3)) * 0.1
    scale = np.array([150.0, 100.0, 200.0])
    sq = (((pred - gt) * scale[:, None, None]) ** 2).sum(-1)
    want = sq.mean(1) if reduction == "mean" else sq.sum(1)
    np.testing.assert_allclose(losses.joint_loss(_tf(pred), _tf(gt), _tf(scale), reduction).numpy(), want,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.shape_loss(_tf(pred), _tf(gt), _tf(scale), reduction).numpy(), want,
                               rtol=1e-5)


def test_mean_shape_loss_vs_numpy(rng):
    rest = rng.normal(size=(2, 50, 3)) * 10
    mean = rng.normal(size=(50, 3)) * 10
    want = ((rest - mean) ** 2).sum(-1)
    np.testing.assert_allclose(losses.mean_shape_loss(_tf(rest), _tf(mean), "sum").numpy(), want.sum(1),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.mean_shape_loss(_tf(rest), _tf(mean), "mean").numpy(), want.mean(1),
                               rtol=1e-5)


def _chamfer_np(points, verts, scale, tau, reduction):
    out = []
    for b in range(points.shape[0]):
        d, _ = cKDTree(verts[b] * scale[b]).query(points[b] * scale[b])
        keep = d <= tau
        s = (d[keep] ** 2).sum()
        out.append(s / max(keep.sum(), 1) if reduction == "mean" else s)
    return np.array(out)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chamfer_vs_ckdtree_with_cutoff(rng, reduction):
    scale = np.array([150.0, 120.0])
    verts = rng.uniform(-0.5, 0.5, (2, 300, 3))
    # points near vertices (some within 5 mm, some beyond) and far outliers
    near = verts[:, rng.integers(0, 300, 200)] + rng.normal(size=(2, 200, 3)) * (4.0 / scale[:, None, None])
    far = rng.uniform(2.0, 3.0, (2, 40, 3))
    points = np.concatenate([near, far], axis=1)
    got, count = losses.chamfer_loss(_tf(points), _tf(verts), _tf(scale), 5.0, reduction, return_count=True)
    want = _chamfer_np(points, verts, scale, 5.0, reduction)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3)
    d0, _ = cKDTree(verts[0] * scale[0]).query(points[0] * scale[0])
    assert count.numpy()[0] == (d0 <= 5.0).sum()
    assert 0 < count.numpy()[0] < 240  # the cut-off is exercised on both sides


def test_chamfer_far_points_ignored_and_get_no_gradient(rng):
    scale = np.array([150.0])
    verts = rng.uniform(-0.5, 0.5, (1, 100, 3))
    near = verts[:, :50] + 0.01  # 1.5*sqrt(3) mm away
    far = near + 1.0  # 150 mm further: beyond tau
    base = losses.chamfer_loss(_tf(near), _tf(verts), _tf(scale), 5.0, "sum").numpy()
    pts = tf.Variable(_tf(np.concatenate([near, far], axis=1)))
    with tf.GradientTape() as tape:
        with_far = losses.chamfer_loss(pts, _tf(verts), _tf(scale), 5.0, "sum")
    np.testing.assert_allclose(with_far.numpy(), base, rtol=1e-5)
    np.testing.assert_allclose(base, 50 * 3 * (0.01 * 150.0) ** 2, rtol=1e-3)
    g = tape.gradient(with_far, pts).numpy()
    assert np.all(g[0, 50:] == 0.0) and np.all(np.abs(g[0, :50]) > 0)
    # Without the cut-off distances, the same points would have counted: tau larger -> bigger loss.
    bigger = losses.chamfer_loss(pts, _tf(verts), _tf(scale), 1000.0, "sum").numpy()
    assert bigger > 10 * base


def test_chamfer_gradient_moves_nearest_vertex(rng):
    verts = tf.Variable(_tf(np.array([[[0.0, 0, 0], [1.0, 0, 0]]])))
    pts = _tf(np.array([[[0.01, 0, 0]]]))
    with tf.GradientTape() as tape:
        loss = losses.chamfer_loss(pts, verts, _tf([100.0]), 5.0, "sum")
    g = tape.gradient(loss, verts).numpy()
    # d/dv ||(p - v) s||^2 = -2 s^2 (p - v)
    np.testing.assert_allclose(g[0, 0], [-2 * 100.0 ** 2 * 0.01, 0, 0], rtol=1e-4)
    np.testing.assert_allclose(g[0, 1], 0.0)


def test_stage_joint_weight_schedule():
    assert losses.stage_joint_weight(0) == 1.0
    assert losses.stage_joint_weight(19) == 1.0
    assert losses.stage_joint_weight(20) == pytest.approx(0.1)
    assert losses.stage_joint_weight(35) == pytest.approx(0.1)
    assert losses.stage_joint_weight(5, decay_epoch=5, factor=0.5) == 0.5
    got = [float(losses.stage_joint_weight(tf.constant(e))) for e in (0, 19, 20, 21)]
    np.testing.assert_allclose(got, [1.0, 1.0, 0.1, 0.1])


def _fake(rng, b=2, v=40, stages=2, regression=True):
    out = {}
    for k in range(1, stages + 1):
        out[f"stage{k}_vertices"] = rng.normal(size=(b, v, 3)) * 0.3
        out[f"stage{k}_joints"] = rng.normal(size=(b, 21, 3)) * 0.3
        out[f"stage{k}_joints_input"] = rng.normal(size=(b, 21, 3)) * 0.3
        out[f"stage{k}_rest_vertices"] = rng.normal(size=(b, v, 3)) * 5
    if regression:
        out["regression_joints"] = rng.normal(size=(b, 21, 3)) * 0.3
    batch = {"joints": rng.normal(size=(b, 21, 3)) * 0.3, "vertices": rng.normal(size=(b, v, 3)) * 0.3,
             "scale": np.array([150.0, 130.0][:b])}
    batch["points"] = out[f"stage{stages}_vertices"][:, rng.integers(0, v, 64)] + rng.normal(size=(b, 64, 3)) * 0.01
    return out, batch


def _sq(a, b, s):
    return ((((a - b) * s[:, None, None]) ** 2).sum(-1)).mean(1).mean()


@pytest.mark.parametrize("epoch", [0, 25])
def test_total_is_eq4_with_paper_weights(rng, epoch):
    out, batch = _fake(rng)
    mean_shape = rng.normal(size=(40, 3)) * 5
    fn = losses.HandShapeLoss(mean_shape)
    total, terms = fn({k: _tf(v) for k, v in out.items()}, {k: _tf(v) for k, v in batch.items()}, epoch=epoch)
    s = batch["scale"]
    w = 1.0 if epoch < 20 else 0.1
    want = 0.0
    for k in (1, 2):
        lj = _sq(out[f"stage{k}_joints"], batch["joints"], s)
        lji = _sq(out[f"stage{k}_joints_input"], batch["joints"], s)
        lc = _chamfer_np(batch["points"], out[f"stage{k}_vertices"], s, 5.0, "mean").mean()
        lb = ((out[f"stage{k}_rest_vertices"] - mean_shape) ** 2).sum(-1).mean(1).mean()
        ls = _sq(out[f"stage{k}_vertices"], batch["vertices"], s)
        np.testing.assert_allclose(terms[f"stage{k}/joint"].numpy(), lj, rtol=1e-4)
        np.testing.assert_allclose(terms[f"stage{k}/chamfer"].numpy(), lc, rtol=1e-3)
        np.testing.assert_allclose(terms[f"stage{k}/mean_shape"].numpy(), lb, rtol=1e-4)
        np.testing.assert_allclose(terms[f"stage{k}/shape"].numpy(), ls, rtol=1e-4)
        want += 2 * w * (lj + lji) + 1 * lc + 1 * lb + 1 * ls
    lr = _sq(out["regression_joints"], batch["joints"], s)
    want += 2 * lr
    np.testing.assert_allclose(terms["regression/joint"].numpy(), lr, rtol=1e-4)
    np.testing.assert_allclose(total.numpy(), want, rtol=1e-4)
    np.testing.assert_allclose(terms["total"].numpy(), want, rtol=1e-4)


def test_ablation_switches_and_shape_indicator(rng):
    out, batch = _fake(rng, stages=1, regression=False)
    mean_shape = rng.normal(size=(40, 3))
    o = {k: _tf(v) for k, v in out.items()}
    bt = {k: _tf(v) for k, v in batch.items()}
    _, terms = losses.HandShapeLoss(mean_shape)(o, bt)
    assert set(terms) == {"stage_joint_weight", "stage1/joint", "stage1/joint_input", "stage1/chamfer",
                          "stage1/chamfer_points", "stage1/mean_shape", "stage1/shape", "total"}
    # no ground-truth mesh -> no shape term (indicator of Eq. 4)
    no_mesh = {k: v for k, v in bt.items() if k != "vertices"}
    total, terms = losses.HandShapeLoss(mean_shape, use_chamfer=False, use_mean_shape=False,
                                        supervise_joints_input=False)(o, no_mesh)
    assert set(terms) == {"stage_joint_weight", "stage1/joint", "total"}
    np.testing.assert_allclose(total.numpy(), 2 * terms["stage1/joint"].numpy(), rtol=1e-6)
    # custom weights
    total, terms = losses.HandShapeLoss(mean_shape, joint_weight=0.0, chamfer_weight=3.0, mean_shape_weight=0.5,
                                        shape_weight=0.0, supervise_joints_input=False)(o, bt)
    np.testing.assert_allclose(total.numpy(), 3 * terms["stage1/chamfer"].numpy()
                               + 0.5 * terms["stage1/mean_shape"].numpy(), rtol=1e-5)
    # per-frame shape mask
    bt2 = dict(bt, has_vertices=_tf([1.0, 0.0]))
    _, t2 = losses.HandShapeLoss(mean_shape)(o, bt2)
    s = batch["scale"]
    only0 = (((out["stage1_vertices"][0] - batch["vertices"][0]) * s[0]) ** 2).sum(-1).mean()
    np.testing.assert_allclose(t2["stage1/shape"].numpy(), only0, rtol=1e-4)


def test_correspondences_nyu_and_icvl(rng):
    ours = rng.normal(size=(2, 21, 3)) * 0.3
    # NYU: a 36-joint annotation that contains our joints at the paper's indices -> zero stage joint loss
    nyu = rng.normal(size=(2, 36, 3))
    paper = [31, 29, 27, 26, 25, 24, 22, 20, 19, 18, 16, 14, 13, 12, 10, 8, 7, 6, 4, 2, 1]
    nyu[:, np.array(paper) - 1] = ours
    out = {"stage1_vertices": _tf(rng.normal(size=(2, 30, 3))), "stage1_joints": _tf(ours),
           "stage1_rest_vertices": _tf(np.zeros((2, 30, 3))),
           "regression_joints": _tf(nyu[:, list(NYU.eval_joint_indices)])}
    batch = {"points": _tf(rng.normal(size=(2, 10, 3))), "joints": _tf(nyu), "scale": _tf([150.0, 150.0])}
    fn = losses.HandShapeLoss(np.zeros((30, 3)), correspondence="nyu",
                              regression_joint_indices=NYU.eval_joint_indices, use_chamfer=False)
    _, terms = fn(out, batch)
    assert terms["stage1/joint"].numpy() < 1e-6 and terms["regression/joint"].numpy() < 1e-6
    nyu[:, 30] += 0.1  # move the annotated wrist (PALM_1 <-> our wrist) by 0.1 = 15 mm
    _, terms = fn(out, dict(batch, joints=_tf(nyu)))
    np.testing.assert_allclose(terms["stage1/joint"].numpy(), 3 * 15.0 ** 2 / 21, rtol=1e-4)
    # ICVL: the 16 annotated joints; joint 0 is the palm centre (midpoint of our 0 and 9)
    icvl = add_palm_centre(ours)[:, [i - 1 for i in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21)]]
    fn = losses.HandShapeLoss(np.zeros((30, 3)), correspondence="icvl", use_chamfer=False,
                              use_regression_joint=False)
    _, terms = fn(out, dict(batch, joints=_tf(icvl)))
    assert terms["stage1/joint"].numpy() < 1e-6
    with pytest.raises(ValueError, match="correspondence"):
        losses.HandShapeLoss(np.zeros((30, 3)))(out, dict(batch, joints=_tf(icvl)))
    with pytest.raises(ValueError, match="reduction"):
        losses.LossConfig(reduction="median")


def test_nearest_vertex_same_on_both_ops_backends_and_finite_under_nan(rng):
    """The compiled nearest-point scan and the distance-matrix fallback pick the same vertices (checked against a
    KD-tree); non-finite predicted vertices do not raise (the loss is non-finite instead)."""
    from hsr_tf import ops

    pts = rng.normal(size=(3, 200, 3)).astype(np.float32)
    verts = rng.normal(size=(3, 150, 3)).astype(np.float32)
    want = np.stack([cKDTree(verts[i]).query(pts[i])[1] for i in range(3)])
    for backend in (["compiled"] if ops.compiled_available() else []) + ["fallback"]:
        with ops.use_backend(backend):
            np.testing.assert_array_equal(losses.nearest_vertex(pts, verts).numpy(), want, err_msg=backend)
    verts[0, 5] = np.nan
    loss = losses.chamfer_loss(pts, verts, np.full([3], 100.0, np.float32), tau_mm=1e9)
    assert np.isfinite(loss.numpy()[1:]).all()
