"""RGB evaluation (hsr_tf.train.rgb_evaluation) against hand-computed values on a tiny example, its report files,
and the run kind of a workdir."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.train import rgb_evaluation, run_kind
from hsr_tf.train.evaluation import read_per_frame_csv

B, J, V, S = 2, 21, 4, 16
FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])  # a tetrahedron


def _gt():
    rng = np.random.default_rng(0)
    joints = rng.integers(-60, 61, size=(B, J, 3)).astype(np.float64) + [0.0, 0.0, 500.0]  # exact in float32
    verts = np.array([[0, 0, 0], [40, 0, 0], [0, 30, 0], [0, 0, 20]], np.float64)[None] + joints[:, :1]
    return {"image": tf.fill([B, S, S, 3], 0.5), "camera": tf.constant([[100.0, 100.0, 8.0, 8.0]] * B),
            "root_depth": tf.constant(joints[:, 0, 2], tf.float32), "bone_scale": tf.constant([10.0, 20.0]),
            "joints": tf.constant(joints, tf.float32), "joints_uv": tf.constant(rng.uniform(0, S, (B, J, 2)),
                                                                                 tf.float32),
            "vertices": tf.constant(verts, tf.float32), "has_vertices": tf.constant([1.0, 1.0]),
            "frame_id": tf.constant([7, 9], tf.int64)}


def _prediction(batch):
    """Hand-made errors: joints moved as a whole by (5, -3, 2) (root-relative error 0) except joint 8 of frame 0,
    3 mm further in x; joints_uv off by (3, 4) px (5 px); frame 0's mesh shifted by (3, 4, 0) (5 mm, 0 after
    alignment), frame 1's mesh scaled x2 about vertex 0 (error = mean |v - v0| = (0 + 40 + 30 + 20) / 4 = 22.5,
    0 after alignment)."""
    joints = batch["joints"].numpy() + [5.0, -3.0, 2.0]
    joints[0, 8, 0] += 3.0
    gt_v = batch["vertices"].numpy()
    verts = np.stack([gt_v[0] + [3.0, 4.0, 0.0], gt_v[1][:1] + 2.0 * (gt_v[1] - gt_v[1][:1])])
    uvd = np.zeros((B, V, 3), np.float32)
    return {"joints": tf.constant(joints, tf.float32), "joints_uv": batch["joints_uv"] + [3.0, 4.0],
            "vertices": tf.constant(verts, tf.float32), "uvd": tf.constant(uvd)}


def test_metrics_against_hand_computed_values(tmp_path):
    batch = _gt()
    ds = tf.data.Dataset.from_tensors(batch)
    mean_rel = {"joints": np.zeros((J, 3)), "vertices": np.zeros((V, 3))}
    mean_rel["joints"][1] = [1.0, 0.0, 0.0]  # one joint at (1, 0, 0) x the hand scale from the root
    res = rgb_evaluation.evaluate(None, ds, predict_fn=_prediction, mean_pose=mean_rel, num_overlay_frames=2,
                                  faces=FACES)
    # pose error: one joint of 42 off by 3 mm
    assert res["pose_error_mm"] == pytest.approx(3.0 / (B * J))
    assert res["per_joint_error_mm"][8] == pytest.approx(1.5)
    # PCK: 41/42 keypoints at every threshold >= 0, the last one from 3 mm on; per-joint mean (joint 8: 1/2)
    pck = res["pck"]
    assert pck[0] == pytest.approx((20 + 0.5) / 21) and pck[3] == pytest.approx(1.0)
    # AUC 0-50 by trapezoids: 1 - (area missing below 3 mm) / 50, missing = (0.5/21) * (3 - 0.5) for thresholds 0..3
    assert res["auc_0_50"] == pytest.approx(1.0 - (0.5 / 21) * 2.5 / 50.0)
    assert res["auc_20_50"] == pytest.approx(1.0)
    assert res["joint_2d_error_px"] == pytest.approx(5.0, rel=1e-6)
    assert res["mesh_error_mm"] == pytest.approx((5.0 + 22.5) / 2, rel=1e-6)
    assert res["aligned_mesh_error_mm"] == pytest.approx(0.0, abs=1e-4)
    # mean baseline: every joint at the root except joint 1 at root + (s, 0, 0): error |gt - root| per joint
    gt = batch["joints"].numpy().astype(np.float64)
    rel = gt - gt[:, :1]
    rel[:, 1] -= np.array([[10.0, 0, 0], [20.0, 0, 0]])
    assert res["mean_baseline_pose_error_mm"] == pytest.approx(np.linalg.norm(rel, axis=-1).mean(), rel=1e-6)
    dv = batch["vertices"].numpy() - batch["joints"].numpy()[:, :1]
    assert res["mean_baseline_mesh_error_mm"] == pytest.approx(np.linalg.norm(dv, axis=-1).mean(), rel=1e-5)
    np.testing.assert_array_equal(res["per_frame"]["frame_id"], [7, 9])
    np.testing.assert_allclose(res["per_frame"]["shape_error_mm"], [5.0, 22.5], rtol=1e-5)
    # mesh quality: a shift keeps every edge (0 %), a x2 scaling doubles every edge (100 %); neither turns a face
    np.testing.assert_allclose(res["per_frame"]["edge_length_error_pct"], [0.0, 100.0], atol=1e-4)
    np.testing.assert_allclose(res["per_frame"]["normal_angle_error_deg"], [0.0, 0.0], atol=1e-3)
    assert res["edge_length_error_pct"] == pytest.approx(50.0, rel=1e-6)

    paths = rgb_evaluation.write_report(res, str(tmp_path / "eval"), faces=FACES, label="toy")
    doc = json.load(open(paths["metrics"]))
    assert doc["num_frames"] == 2 and doc["pose_error_mm"] == pytest.approx(res["pose_error_mm"])
    table = read_per_frame_csv(paths["per_frame"])  # what experiments.compare reads
    assert set(table) >= {"frame_id", "joint_error_mm", "shape_error_mm", "aligned_shape_error_mm",
                          "joint_2d_error_px", "edge_length_error_pct", "normal_angle_error_deg"}
    assert doc["edge_length_error_pct"] == pytest.approx(50.0, rel=1e-6)
    np.testing.assert_allclose(table["joint_error_mm"], [3.0 / J, 0.0], atol=1e-4)
    rows = open(paths["pck_csv"]).read().splitlines()
    assert rows[0] == "threshold_mm,pck" and len(rows) == 52
    assert sorted(os.listdir(paths["overlays"])) == ["frame_0000007.png", "frame_0000009.png"]


def test_mesh_quality_of_a_rotated_and_a_crumpled_tetrahedron():
    from hsr_tf import metrics

    gt = np.array([[0, 0, 0], [40, 0, 0], [0, 30, 0], [0, 0, 20]], np.float64)[None]
    rot = gt @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    # faces in z = 0 keep their normal; those in x = 0 and y = 0 turn by 90 deg; the slanted face's normal
    # n ~ (1/40, 1/30, 1/20) keeps only its z part: cos = n_z^2 / |n|^2
    n = np.array([1 / 40, 1 / 30, 1 / 20])
    want = (0.0 + 90.0 + 90.0 + np.degrees(np.arccos(n[2] ** 2 / (n @ n)))) / 4
    assert metrics.normal_angle_error(rot, gt, FACES)[0] == pytest.approx(want)
    assert metrics.edge_length_error(rot, gt, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])[0] == \
        pytest.approx(0.0, abs=1e-12)
    # vertex 3 pulled to z = 5: edges 0-3, 1-3, 2-3 shrink (20 -> 5, sqrt(1600+400) -> sqrt(1600+25), ...)
    flat = gt.copy()
    flat[0, 3, 2] = 5.0
    e = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
    lp = np.linalg.norm(flat[0, e[:, 0]] - flat[0, e[:, 1]], axis=-1)
    lg = np.linalg.norm(gt[0, e[:, 0]] - gt[0, e[:, 1]], axis=-1)
    assert metrics.edge_length_error(flat, gt, e)[0] == pytest.approx(np.mean(np.abs(lp - lg) / lg))
    with pytest.raises(ValueError, match=r"edges: expected an integer array \[E, 2\]"):
        metrics.edge_length_error(flat, gt, np.zeros((3, 3), np.int64))


def test_overlay_draws_the_mesh_where_it_projects():
    """The mesh is drawn in orange where its vertices project, and the image elsewhere is untouched."""
    img = np.zeros((S, S, 3), np.float32)
    rec = {"image": img, "vertices_uv": np.array([[2.0, 2.0], [13.0, 2.0], [2.0, 13.0], [13.0, 13.0]]),
           "vertex_depth": np.array([500.0, 500.0, 500.0, 501.0]), "joints_uv": np.full((J, 2), 8.0),
           "gt_joints_uv": np.full((J, 2), 8.0), "frame_id": 0}
    out = rgb_evaluation.overlay_image({**rec, "joints_uv": None, "gt_joints_uv": None}, FACES[:2])
    assert out.dtype == np.uint8 and out.ndim == 3
    r, g, b = (out[..., c].astype(int) for c in range(3))
    orange = (r > 80) & (r > b + 40)
    assert orange.any()
    ys, xs = np.nonzero(orange)
    # the orange square sits in the middle of the black image panel, away from its borders
    black = (r < 20) & (g < 20) & (b < 20)
    by, bx = np.nonzero(black)
    assert by.min() < ys.min() and ys.max() < by.max() and bx.min() < xs.min() and xs.max() < bx.max()


def test_mean_pose_requires_frames(tmp_path):
    with pytest.raises(ValueError, match="files"):
        rgb_evaluation.mean_pose_from_shards([])


def test_run_kind(tmp_path):
    wd = str(tmp_path / "w")
    os.makedirs(wd)
    assert run_kind.read_run_kind(wd) == "depth"
    run_kind.write_run_kind(wd, "rgb")
    assert run_kind.read_run_kind(wd) == "rgb"
    with pytest.raises(ValueError, match="kind"):
        run_kind.write_run_kind(wd, "stereo")
    with open(os.path.join(wd, run_kind.RUN_KIND_FILE), "w") as f:
        f.write("rgbd\n")
    with pytest.raises(ValueError, match="run_kind.txt"):
        run_kind.read_run_kind(wd)
    with pytest.raises(FileNotFoundError, match="run directory"):
        run_kind.read_run_kind(str(tmp_path / "missing"))
