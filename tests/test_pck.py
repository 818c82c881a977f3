"""3D PCK / AUC / pose error of the section-5.1 protocol against values computed by hand."""
import csv

import numpy as np
import pytest

from hsr_tf import metrics, pose_metrics

THR = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])


def _example():
    """2 frames x 3 joints. Root-relative errors by construction: frame 0 [0, 3, 12], frame 1 [0, 25, 50]
    (3-4-5 triangles); the prediction's root is off by a constant that the protocol must remove."""
    gt = np.array([[[0.0, 0.0, 500.0], [10.0, 0.0, 500.0], [0.0, 10.0, 500.0]],
                   [[5.0, 5.0, 600.0], [20.0, 5.0, 600.0], [5.0, 30.0, 620.0]]])
    off = np.array([[[0, 0, 0], [3, 0, 0], [0, 0, 12]],
                    [[0, 0, 0], [0, 15, 20], [30, 0, 40]]], dtype=np.float64)
    pred = gt + off + np.array([[[5.0, -7.0, 40.0]], [[-11.0, 2.0, -30.0]]])
    return pred, gt


def test_root_relative_errors_by_hand():
    pred, gt = _example()
    err = pose_metrics.root_relative_errors(pred, gt)
    np.testing.assert_allclose(err, [[0, 3, 12], [0, 25, 50]], atol=1e-9)
    # scale-invariant root-relative predictions times the ground-truth scale give the same errors
    scale = np.array([30.0, 42.0])
    norm = (pred - pred[:, :1]) / scale[:, None, None]
    err2 = pose_metrics.root_relative_errors(norm, gt, bone_scale=scale, pred_normalised=True)
    np.testing.assert_allclose(err2, err, atol=1e-9)
    with pytest.raises(ValueError, match="bone_scale"):
        pose_metrics.root_relative_errors(norm, gt, pred_normalised=True)


def test_pck_and_auc_by_hand():
    pred, gt = _example()
    m = pose_metrics.PCKMetric(thresholds_mm=THR, auc_range_mm=(0.0, 50.0))
    m.update(pred[:1], gt[:1])
    m.update(pred[1:], gt[1:])
    r = m.result()
    # joint 0: [0, 0]; joint 1: [3, 25]; joint 2: [12, 50] -> per-joint PCK averaged over joints
    np.testing.assert_allclose(r["pck"], [1 / 3, 1 / 2, 2 / 3, 5 / 6, 5 / 6, 1.0], atol=1e-12)
    assert r["mean_error_mm"] == pytest.approx(15.0)
    np.testing.assert_allclose(r["per_joint_error_mm"], [0.0, 14.0, 31.0])
    assert r["auc"] == pytest.approx(0.7)           # 10 * (5 + 7 + 9 + 10 + 11) / 12 / 50
    stb = pose_metrics.PCKMetric(thresholds_mm=THR, auc_range_mm="stb")
    stb.update(pred, gt)
    assert stb.result()["auc"] == pytest.approx(25.0 / 30.0)   # 10 * (9 + 10 + 11) / 12 / 30
    no_root = pose_metrics.PCKMetric(thresholds_mm=THR, include_root=False)
    no_root.update(pred, gt)
    rr = no_root.result()
    assert rr["mean_error_mm"] == pytest.approx(22.5)
    np.testing.assert_allclose(rr["pck"], [0.0, 0.25, 0.5, 0.75, 0.75, 1.0])


def test_pck_visibility_and_fine_grid():
    pred, gt = _example()
    vis = np.ones((2, 3), dtype=bool)
    vis[1, 2] = False                                   # joint 2 of frame 1 (error 50) not evaluated
    m = pose_metrics.PCKMetric(thresholds_mm=THR)
    m.update(pred, gt, visible=vis)
    r = m.result()
    assert r["mean_error_mm"] == pytest.approx(8.0)     # (0 + 3 + 12 + 0 + 25) / 5
    np.testing.assert_allclose(r["pck"], [1 / 3, 1 / 2, 5 / 6, 1.0, 1.0, 1.0])
    # default 1-mm grid, one error of 7.5 mm: PCK 0 up to 7 mm, 1 from 8 mm; trapezoids: 0.5 + 42 -> 42.5 / 50
    curve = pose_metrics.pck_curve(np.array([[7.5]]))
    assert pose_metrics.auc(pose_metrics.DEFAULT_PCK_THRESHOLDS_MM, curve, 0.0, 50.0) == pytest.approx(0.85)


def test_auc_range_checked():
    with pytest.raises(ValueError, match="AUC range"):
        pose_metrics.auc(THR, np.zeros(6), 20.0, 60.0)
    with pytest.raises(ValueError, match="auc_range_mm"):
        pose_metrics.PCKMetric(auc_range_mm="nyu")
    with pytest.raises(ValueError, match="visible"):
        pose_metrics.pck_curve(np.zeros((2, 3)), THR, visible=np.zeros((2, 3), dtype=bool))


def test_csv_png_and_reexport(tmp_path):
    assert metrics.PCKMetric is pose_metrics.PCKMetric
    pred, gt = _example()
    m = metrics.PCKMetric(thresholds_mm=THR)
    m.update(pred, gt)
    r = m.result()
    path = tmp_path / "eval" / "pck.csv"
    metrics.write_pck_csv(str(path), r["thresholds_mm"], r["pck"])
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["threshold_mm", "pck"]
    np.testing.assert_allclose([float(x[1]) for x in rows[1:]], r["pck"], atol=1e-6)
    png = tmp_path / "eval" / "pck.png"
    metrics.plot_pck_curves(str(png), {"ours": (r["thresholds_mm"], r["pck"], r["auc"])})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
