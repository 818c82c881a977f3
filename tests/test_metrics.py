"""Evaluation metrics against hand-computed values."""
import csv

import numpy as np
import pytest

from hsr_tf import metrics


def test_joint_error_hand_computed():
    # two frames, two joints; errors: frame 0 -> (3, 4) mm, frame 1 -> (0, 12) mm
    gt = np.zeros((2, 2, 3))
    pred = np.array([[[3.0, 0, 0], [0, 4.0, 0]], [[0, 0, 0], [0, 0, 12.0]]])
    m = metrics.JointErrorMetric(thresholds_mm=[0, 3, 4, 11.9, 12, 80])
    m.update(pred[:1], gt[:1])
    m.update(pred[1:], gt[1:])  # streaming over two batches
    r = m.result()
    assert r["mean_joint_error_mm"] == pytest.approx((3 + 4 + 0 + 12) / 4)
    np.testing.assert_allclose(r["per_joint_error_mm"], [1.5, 8.0])
    # max errors per frame: 4 and 12
    np.testing.assert_allclose(r["fraction_good_frames"], [0, 0, 0.5, 0.5, 1.0, 1.0])
    assert r["num_frames"] == 2
    m.reset()
    with pytest.raises(ValueError, match="at least one"):
        m.result()


def test_default_thresholds_cover_0_to_80():
    m = metrics.JointErrorMetric()
    assert m.thresholds[0] == 0 and m.thresholds[-1] == 80 and len(m.thresholds) == 81


def test_shape_and_point_cloud_error():
    s = metrics.ShapeErrorMetric()
    s.update(np.zeros((1, 3, 3)), np.array([[[1.0, 0, 0], [0, 2.0, 0], [0, 0, 6.0]]]))
    assert s.result()["shape_error_mm"] == pytest.approx(3.0)
    pc = metrics.PointCloudErrorMetric()
    verts = np.array([[[0.0, 0, 0], [10.0, 0, 0]]])
    pts = np.array([[[1.0, 0, 0], [9.0, 0, 0], [5.0, 3.0, 0], [10.0, 0, 4.0]]])
    per = pc.update(pts, verts)
    want = (1 + 1 + np.hypot(5, 3) + 4) / 4
    np.testing.assert_allclose(per, [want])
    assert pc.result()["point_cloud_error_mm"] == pytest.approx(want)
    pc.reset()
    pc.update(pts, verts, point_mask=np.array([[True, True, False, False]]))
    assert pc.result()["point_cloud_error_mm"] == pytest.approx(1.0)


def test_shape_mismatch_errors():
    with pytest.raises(ValueError, match="gt_joints"):
        metrics.JointErrorMetric().update(np.zeros((2, 14, 3)), np.zeros((2, 21, 3)))
    with pytest.raises(ValueError, match="finite"):
        metrics.ShapeErrorMetric().update(np.full((1, 2, 3), np.nan), np.zeros((1, 2, 3)))


def test_writers(tmp_path):
    thr = np.arange(0, 81.0)
    frac = np.clip(thr / 40.0, 0, 1)
    metrics.write_threshold_csv(tmp_path / "curve.csv", thr, frac)
    rows = list(csv.reader(open(tmp_path / "curve.csv")))
    assert rows[0] == ["threshold_mm", "fraction_good_frames"] and len(rows) == 82
    assert float(rows[21][1]) == pytest.approx(0.5)
    metrics.plot_threshold_curve(tmp_path / "curve.png", {"ours": (thr, frac)})
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics.write_per_joint_csv(tmp_path / "j.csv", [1.0, 2.5], ["wrist", "tip"])
    rows = list(csv.reader(open(tmp_path / "j.csv")))
    assert rows[2] == ["1", "tip", "2.5000"]


def _random_rotation(rng):
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_aligned_shape_error_removes_an_exact_similarity():
    rng = np.random.default_rng(0)
    pred = rng.normal(scale=40.0, size=(3, 50, 3))
    gt = np.stack([1.3 * pred[b] @ _random_rotation(rng).T + rng.normal(scale=100, size=3) for b in range(3)])
    raw = metrics.ShapeErrorMetric()
    raw.update(pred, gt)
    assert raw.result()["shape_error_mm"] > 50.0
    m = metrics.AlignedShapeErrorMetric()
    per = m.update(pred, gt)
    np.testing.assert_allclose(per, 0.0, atol=1e-9)
    assert m.result()["aligned_shape_error_mm"] < 1e-9


def test_aligned_shape_error_hand_computed_scale():
    # pred = {(+-1, 0, 0), (0, +-1, 0)}, gt = {(+-3, 0, 0), (0, +-1, 0)}: the optimum is the identity rotation
    # with scale (3 + 3 + 1 + 1) / (1 + 1 + 1 + 1) = 2, leaving residuals (+-1, 0, 0) and (0, -+1, 0): 1 mm each.
    pred = np.array([[[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]])
    gt = np.array([[[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]])
    aligned = metrics.similarity_align(pred, gt)
    np.testing.assert_allclose(aligned, 2.0 * pred, atol=1e-12)
    m = metrics.AlignedShapeErrorMetric()
    m.update(pred, gt)
    assert m.result()["aligned_shape_error_mm"] == pytest.approx(1.0)


def test_aligned_shape_error_agrees_with_the_tf_procrustes_and_never_reflects():
    from hsr_tf.geometry import procrustes
    rng = np.random.default_rng(1)
    pred = rng.normal(scale=30.0, size=(4, 40, 3))
    gt = np.stack([0.8 * pred[b] @ _random_rotation(rng).T + 5.0 for b in range(4)]) + rng.normal(size=(4, 40, 3))
    gt[0] = pred[0] * np.array([-1.0, 1.0, 1.0])  # a mirror image: the best proper rotation leaves an error
    s, r, t = procrustes.similarity_procrustes(pred.astype(np.float32), gt.astype(np.float32))
    want = procrustes.apply_similarity(pred.astype(np.float32), s, r, t).numpy()
    got = metrics.similarity_align(pred, gt)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.linalg.norm(got[0] - gt[0], axis=-1).mean() > 1.0


def test_paired_difference_interval():
    from hsr_tf.metrics import paired_difference

    a = np.linspace(1.0, 2.0, 50)
    d = paired_difference(a, a - 0.25)  # every frame 0.25 mm better: no spread, the interval is the value
    assert d["mean_difference"] == pytest.approx(-0.25) and d["ci_low"] == pytest.approx(-0.25)
    assert d["ci_high"] == pytest.approx(-0.25) and d["num_frames"] == 50
    rng = np.random.default_rng(1)
    n, sigma = 2000, 3.0
    a = rng.uniform(5, 15, n)
    b = a + 0.4 + rng.normal(0.0, sigma, n)
    d = paired_difference(a, b, n_resamples=4000)
    mean = (b - a).mean()
    assert d["mean_difference"] == pytest.approx(mean)
    # the normal-theory interval of a mean of n draws: +-1.96 sigma / sqrt(n)
    half = 1.96 * (b - a).std(ddof=1) / np.sqrt(n)
    assert d["ci_low"] == pytest.approx(mean - half, abs=0.2 * half)
    assert d["ci_high"] == pytest.approx(mean + half, abs=0.2 * half)
    with pytest.raises(ValueError, match="one length"):
        paired_difference(a, b[:-1])
