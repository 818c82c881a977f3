"""Reader glue for training: per-epoch data is a deterministic function of (seed, epoch); evaluation
metrics match an independent NumPy computation; the report files; TensorBoard mesh/image summaries."""
import csv
import json

import numpy as np
import pytest
import tensorflow as tf
import keras

from hsr_tf.data import shards as shards_lib
from hsr_tf.train import evaluation, pipeline, summaries

P, J, V = 32, 21, 12


def write_tiny_shards(d, n_train=40, n_test=10, seed=0, test_subjects=None):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        extra = {"subject": np.asarray(test_subjects, np.int32)} if split == "test" and test_subjects is not None else {}
        cam_pts = rng.normal(size=(n, P, 3)) * [30, 40, 15] + [0, 0, 450] + rng.normal(size=(n, 1, 3)) * 20
        center = cam_pts.mean(axis=1)
        pts = (cam_pts - center[:, None]) / 150.0
        joints = cam_pts[:, :J] + 1.0
        verts = cam_pts[:, :V] - 1.0
        shards_lib.write_shard(str(d / f"{split}-00000.h5"), {
            "points": pts, "joints": joints, "vertices": verts, "center": center, "scale": np.full(n, 150.0),
            "frame_id": np.arange(n) + (0 if split == "train" else 1000), **extra},
            {"dataset": "synth", "split": split, "camera": {"fx": 588.03, "fy": 587.07, "cx": 320, "cy": 240,
                                                            "width": 640, "height": 480},
             "joint_names": [f"j{i}" for i in range(J)], "normalization": "center=mean;scale=fixed:150.0;obb=False"})
    return d


def test_epoch_dataset_is_deterministic_per_epoch(tmp_path):
    d = write_tiny_shards(tmp_path)
    fn = pipeline.epoch_dataset_fn(str(d), batch_size=8, seed=5, augment=True)
    assert pipeline.steps_per_epoch(str(d), 8) == 5

    def collect(epoch):
        return [(b["frame_id"].numpy(), b["points"].numpy(), b["joints"].numpy()) for b in fn(epoch)]

    a, b = collect(2), collect(2)
    assert len(a) == 5
    for (ia, pa, ja), (ib, pb, jb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(pa, pb)  # augmentation included
        np.testing.assert_array_equal(ja, jb)
    c = collect(3)
    assert [x[0].tolist() for x in a] != [x[0].tolist() for x in c], "epochs 2 and 3 have the same order"
    # Every frame once per epoch (drop_remainder: 40 / 8 = 5 full batches).
    assert sorted(np.concatenate([x[0] for x in a]).tolist()) == list(range(40))
    # A different seed gives a different order.
    other = pipeline.epoch_dataset_fn(str(d), batch_size=8, seed=6, augment=True)
    assert [x["frame_id"].numpy().tolist() for x in other(2)] != [x[0].tolist() for x in a]


def test_epoch_seeds_distinct():
    seeds = {pipeline.epoch_seed(s, e) + k for s in range(3) for e in range(200) for k in range(3)}
    assert len(seeds) == 3 * 200 * 3


def test_parse_normalization_and_data_info(tmp_path):
    assert pipeline.parse_normalization("center=bbox;scale=max_dist;obb=True") == {
        "center_mode": "bbox", "scale_mode": "max_dist", "fixed_scale": 150.0, "obb": True}
    assert pipeline.parse_normalization("center=mean;scale=fixed:120.5;obb=False")["fixed_scale"] == 120.5
    with pytest.raises(ValueError, match="normalization attribute"):
        pipeline.parse_normalization("mean/fixed")
    info = pipeline.read_data_info(str(write_tiny_shards(tmp_path)))
    assert info["num_joints"] == J and info["num_points"] == P and info["has_vertices"]
    assert info["normalization"]["center_mode"] == "mean"
    with pytest.raises(ValueError, match="empty"):
        pipeline.read_data_info(str(tmp_path / "empty"))  # missing directory: the reader's ShardError
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="train-"):
        pipeline.read_data_info(str(tmp_path / "none"))


class ShiftNet(keras.Model):
    """Predicts GT-like outputs displaced by a learnable (here fixed) offset: errors known in closed form."""

    def __init__(self, offset_norm, **kw):
        super().__init__(**kw)
        self.offset = tf.constant(offset_norm, tf.float32)

    def call(self, points, training=False):
        return {"vertices": points[:, :V] + self.offset, "joints": points[:, :J] + self.offset,
                "dataset_joints": points[:, :J] + 2 * self.offset}


def test_evaluate_against_numpy(tmp_path):
    d = write_tiny_shards(tmp_path)
    offset = np.array([3.0, 0.0, 4.0]) / 150.0  # 5 mm
    model = ShiftNet(offset)
    ds = pipeline.eval_dataset(str(d), batch_size=4)
    res = evaluation.evaluate(model, ds)
    # Independent: from the shard arrays in NumPy.
    data = shards_lib.load_shard(str(d / "test-00000.h5"))
    cam = data["points"] * 150.0 + data["center"][:, None]
    pred_dj = cam[:, :J] + 2 * offset * 150.0
    err = np.linalg.norm(pred_dj - data["joints"], axis=-1)
    assert res["num_frames"] == 10
    np.testing.assert_allclose(res["mean_joint_error_mm"], err.mean(), rtol=1e-4)
    np.testing.assert_allclose(res["per_joint_error_mm"], err.mean(0), rtol=1e-4)
    thr = res["thresholds_mm"]
    np.testing.assert_allclose(res["fraction_good_frames"], (err.max(1)[None] <= thr[:, None]).mean(1))
    pred_v = cam[:, :V] + offset * 150.0
    np.testing.assert_allclose(res["shape_error_mm"], np.linalg.norm(pred_v - data["vertices"], axis=-1).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(res["model_joint_error_mm"],
                               np.linalg.norm(cam[:, :J] + offset * 150 - data["joints"], axis=-1).mean(), rtol=1e-4)
    from scipy.spatial import cKDTree
    pc = np.mean([cKDTree(pred_v[f]).query(cam[f])[0].mean() for f in range(10)])
    np.testing.assert_allclose(res["point_cloud_error_mm"], pc, rtol=1e-4)
    # Per-frame errors, in the frames' order, with their ids.
    np.testing.assert_array_equal(res["per_frame"]["frame_id"], data["frame_id"])
    np.testing.assert_allclose(res["per_frame"]["joint_error_mm"], err.mean(axis=1), rtol=1e-4)
    np.testing.assert_allclose(res["per_frame"]["shape_error_mm"],
                               np.linalg.norm(pred_v - data["vertices"], axis=-1).mean(axis=1), rtol=1e-4)
    # Report files.
    paths = evaluation.write_report(res, str(tmp_path / "eval"), joint_names=[f"j{i}" for i in range(J)])
    table = evaluation.read_per_frame_csv(paths["per_frame"])
    np.testing.assert_array_equal(table["frame_id"], data["frame_id"])
    np.testing.assert_allclose(table["point_cloud_error_mm"], res["per_frame"]["point_cloud_error_mm"], atol=1e-4)
    doc = json.load(open(paths["metrics"]))
    np.testing.assert_allclose(doc["mean_joint_error_mm"], err.mean(), rtol=1e-4)
    rows = list(csv.reader(open(paths["per_joint"])))
    assert rows[0] == ["joint", "name", "mean_error_mm"] and len(rows) == J + 1
    curve = list(csv.reader(open(paths["curve_csv"])))
    assert len(curve) == len(thr) + 1
    from PIL import Image
    assert Image.open(paths["curve_png"]).size[0] > 100


def test_visual_fn_writes_mesh_and_image(tmp_path):
    d = write_tiny_shards(tmp_path)
    batch = pipeline.take_batch(pipeline.eval_dataset(str(d), 4))
    faces = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7]], np.int32)
    fn = pipeline.make_visual_fn(batch, faces, num_frames=1, tag="h")
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    fn(ShiftNet(np.zeros(3)), 7, writer)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert "h/frame0/render" in tags
    assert any(t.startswith("h/frame0/overlay") for t in tags), tags
    img = tf.image.decode_png(acc.Tensors("h/frame0/render")[0].tensor_proto.string_val[2])
    assert img.shape[0] > 100 and img.shape[-1] == 3
    # The overlay combines prediction (V), points (P) and ground truth (V) with shifted faces.
    verts, fcs, cols = summaries.mesh_overlay_arrays(np.zeros((P, 3)), np.ones((V, 3)), faces, np.ones((V, 3)))
    assert verts.shape == (2 * V + P, 3) and fcs.shape == (6, 3)
    np.testing.assert_array_equal(fcs[3:], faces + V + P)
    assert tuple(cols[0]) == summaries.PRED_COLOR and tuple(cols[-1]) == summaries.GT_COLOR


def test_rest_shape_error_against_each_subjects_neutral_mesh(tmp_path):
    """rest_shape_error_mm compares T(beta, theta0) with the neutral mesh of each frame's own subject."""
    rng = np.random.default_rng(3)
    subject = np.array([4, 7] * 5, np.int32)  # the test frames belong to two subjects
    d = write_tiny_shards(tmp_path, test_subjects=subject)
    rest = {4: rng.normal(size=(V, 3)) * 10, 7: rng.normal(size=(V, 3)) * 10}
    predicted_rest = rng.normal(size=(V, 3)) * 10  # the same neutral mesh predicted for every frame

    class RestNet(ShiftNet):
        def call(self, points, training=False):
            out = super().call(points, training)
            n = tf.shape(points)[0]
            out["rest_vertices"] = tf.broadcast_to(tf.constant(predicted_rest, tf.float32), [n, V, 3])
            out["scale"] = tf.fill([n], 1.1 / 150.0)  # hand frame -> input units: 1.1 mm per mm
            return out

    ds = pipeline.eval_dataset(str(d), batch_size=4)
    res = evaluation.evaluate(RestNet(np.zeros(3)), ds, rest_shapes=rest)
    want = np.mean([np.linalg.norm(1.1 * predicted_rest - rest[s], axis=-1).mean() for s in subject])
    np.testing.assert_allclose(res["rest_shape_error_mm"], want, rtol=1e-5)
    assert "rest_shape_error_mm" not in evaluation.evaluate(RestNet(np.zeros(3)), ds)
    with pytest.raises(ValueError, match=r"found none for \[7\]"):
        evaluation.evaluate(RestNet(np.zeros(3)), ds, rest_shapes={4: rest[4]})


def test_compare_program_pairs_frames_by_id(tmp_path):
    """experiments.compare: per-frame tables in different frame orders are paired by frame id."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ids = np.arange(100, 140)
    rng = np.random.default_rng(0)
    shape_a = rng.uniform(5, 10, ids.size)
    runs = {"a": (ids, shape_a), "b": (ids[::-1], (shape_a - 1.5)[::-1])}  # b: 1.5 mm better on every frame
    for name, (fid, shape) in runs.items():
        (tmp_path / name / "eval").mkdir(parents=True)
        evaluation.write_per_frame_csv(str(tmp_path / name / "eval" / "per_frame.csv"),
                                       {"frame_id": fid, "shape_error_mm": shape})
    out = tmp_path / "cmp.json"
    res = subprocess.run([sys.executable, "-m", "experiments.compare", f"--workdirs={tmp_path / 'a'},{tmp_path / 'b'}",
                          f"--json_out={out}"], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    rows = json.load(open(out))["metrics"]["shape_error_mm"]
    assert rows[1]["mean_difference"] == pytest.approx(-1.5, abs=1e-3)
    assert rows[1]["ci_low"] == pytest.approx(-1.5, abs=1e-3) and rows[1]["ci_high"] == pytest.approx(-1.5, abs=1e-3)
    assert "joint_error_mm" not in json.load(open(out))["metrics"]  # absent columns are skipped
    # runs over different frames are refused
    evaluation.write_per_frame_csv(str(tmp_path / "b" / "eval" / "per_frame.csv"),
                                   {"frame_id": ids[:-1], "shape_error_mm": shape_a[:-1]})
    res = subprocess.run([sys.executable, "-m", "experiments.compare", f"--workdirs={tmp_path / 'a'},{tmp_path / 'b'}"],
                         capture_output=True, text=True, cwd=root)
    assert res.returncode != 0 and "expected the same evaluated frames" in res.stderr
