"""NYU reader on raw-format fixtures: joints recovered exactly, points on the rendered surface, errors."""
import os
import shutil

import numpy as np
import pytest
from scipy.spatial import cKDTree

import fixtures_raw
from _real_checks import camera_points, load_split, pixel_points, surface_distance
from data_prep import _raw_common as rc
from data_prep import nyu
from hsr_tf.data import datasets, shards


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu_raw"))
    truth = fixtures_raw.write_nyu(root, {"train": 5, "test": 3}, seed=1)
    return root, truth


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    root, truth = raw
    out = str(tmp_path_factory.mktemp("nyu_out"))
    result = nyu.convert(root, out, shard_size=2, num_workers=1, progress=False)
    return out, result


def test_joints_exact_and_points_on_surface(raw, converted):
    root, truth = raw
    out, result = converted
    assert result["train"]["frames"] == 5 and result["test"]["frames"] == 3
    assert not result["train"]["skipped"]
    for split in ("train", "test"):
        data = load_split(out, split)
        np.testing.assert_array_equal(data["frame_id"], np.arange(len(truth[split]["joints"])))
        # all 36 joints in mm, kinect 1 (other kinects are shifted copies in the fixture)
        np.testing.assert_allclose(data["joints"], truth[split]["joints"], atol=1e-3)
        # the 14 evaluation joints and the 21 paired joints sit where our fixture put them
        np.testing.assert_allclose(data["joints"][:, datasets.NYU.dataset_joint_indices],
                                   truth[split]["joints21"], atol=1e-3)
        assert data["points"].shape[1:] == (1024, 3)
        pts = camera_points(data)
        for f in range(len(pts)):
            frame = truth[split]["frames"][f]
            dist = surface_distance(pts[f], frame["vertices"], frame["faces"])
            # depth is stored in whole mm: a point is at most ~0.5 mm (along its ray) off the surface
            assert dist.max() < 0.7, (split, f, dist.max())
            # and every point is one of the frame's pixels back-projected with y up
            cam = fixtures_raw.Camera.preset("nyu")
            ref = pixel_points(truth[split]["depth_mm"][f], cam.fx, cam.fy, cam.cx, cam.cy)
            d, _ = cKDTree(ref).query(pts[f])
            assert d.max() < 1e-3
        attrs = shards.read_attrs(shards.list_shards(out, split)[0])
        assert attrs["dataset"] == "nyu" and attrs["joint_names"] == list(datasets.NYU.joint_names)


def test_uvd_from_file_matches_projection(converted):
    out, _ = converted
    data = load_split(out, "train")
    cam = fixtures_raw.Camera.preset("nyu")
    j = data["joints"].astype(np.float64)
    u = cam.cx + cam.fx * j[..., 0] / j[..., 2]
    v = cam.cy - cam.fy * j[..., 1] / j[..., 2]  # v = 240 - fy y / z
    np.testing.assert_allclose(data["uvd"][..., 0], u, atol=1e-3)
    np.testing.assert_allclose(data["uvd"][..., 1], v, atol=1e-3)


def test_resume_and_parallel_identical(raw, converted, tmp_path):
    root, _ = raw
    out, _ = converted
    mtimes = {p: os.path.getmtime(p) for p in shards.list_shards(out, "train")}
    again = nyu.convert(root, out, splits=("train",), shard_size=2, num_workers=1, progress=False)
    assert len(again["train"]["reused"]) == 3 and again["train"]["frames"] == 0
    assert {p: os.path.getmtime(p) for p in shards.list_shards(out, "train")} == mtimes
    # a corrupt (truncated) shard and a stale .tmp are redone, not trusted
    par = str(tmp_path / "par")
    shutil.copytree(out, par)
    victim = shards.list_shards(par, "train")[1]
    with open(victim, "r+b") as f:
        f.truncate(100)
    res = nyu.convert(root, par, splits=("train",), shard_size=2, num_workers=2, progress=False)
    assert res["train"]["frames"] == 2 and len(res["train"]["reused"]) == 2
    a, b = load_split(out, "train"), load_split(par, "train")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # two workers from scratch give the same frames (per-frame seeds)
    fresh = str(tmp_path / "fresh")
    nyu.convert(root, fresh, splits=("train",), shard_size=2, num_workers=2, progress=False)
    c = load_split(fresh, "train")
    np.testing.assert_array_equal(a["points"], c["points"])


def test_too_few_points_reported_and_skipped(raw, tmp_path):
    from PIL import Image

    root, truth = raw
    copy = str(tmp_path / "raw")
    shutil.copytree(root, copy)
    Image.fromarray(np.zeros((480, 640, 3), np.uint8), mode="RGB").save(os.path.join(copy, "test",
                                                                                    "depth_1_0000002.png"))
    out = str(tmp_path / "out")
    res = nyu.convert(copy, out, splits=("test",), shard_size=2, num_workers=1, progress=False)
    assert res["test"]["frames"] == 2
    assert len(res["test"]["skipped"]) == 1 and "depth_1_0000002.png" in res["test"]["skipped"][0]
    assert "0 hand points" in res["test"]["skipped"][0]
    with open(os.path.join(out, "test_skipped.txt")) as f:
        assert "depth_1_0000002.png" in f.read()
    data = load_split(out, "test")
    np.testing.assert_array_equal(data["frame_id"], [0, 2])
    assert np.all(np.isfinite(data["points"]))
    # a rerun reuses the shards and still reports the skipped frame
    res2 = nyu.convert(copy, out, splits=("test",), shard_size=2, num_workers=1, progress=False)
    assert res2["test"]["frames"] == 0 and len(res2["test"]["skipped"]) == 1


def test_malformed_inputs_raise(raw, tmp_path):
    import scipy.io
    from PIL import Image

    root, _ = raw
    bad = str(tmp_path / "bad")
    shutil.copytree(root, bad)
    out = str(tmp_path / "out")
    # missing PNG
    os.remove(os.path.join(bad, "train", "depth_1_0000003.png"))
    with pytest.raises(rc.RawDataError, match=r"depth_1_0000003\.png"):
        nyu.convert(bad, out, splits=("train",), num_workers=1, progress=False)
    # wrong PNG mode
    Image.fromarray(np.zeros((480, 640), np.uint8), mode="L").save(os.path.join(bad, "train", "depth_1_0000003.png"))
    with pytest.raises(rc.RawDataError, match=r"depth_1_0000003\.png: expected an RGB PNG.*found mode 'L'"):
        nyu.convert(bad, out, splits=("train",), num_workers=1, progress=False)
    # wrong size
    Image.fromarray(np.zeros((240, 320, 3), np.uint8), mode="RGB").save(os.path.join(bad, "train",
                                                                                    "depth_1_0000003.png"))
    with pytest.raises(rc.RawDataError, match=r"expected 640x480 pixels, found 320x240"):
        nyu.decode_depth_png(os.path.join(bad, "train", "depth_1_0000003.png"))
    # .mat without joint_xyz / with a wrong shape / missing
    mat = os.path.join(bad, "test", "joint_data.mat")
    scipy.io.savemat(mat, {"joint_uvd": np.zeros((3, 3, 36, 3))})
    with pytest.raises(rc.RawDataError, match=r"joint_data\.mat: expected a 'joint_xyz' variable"):
        nyu.convert(bad, out, splits=("test",), num_workers=1, progress=False)
    scipy.io.savemat(mat, {"joint_xyz": np.ones((3, 3, 35, 3))})
    with pytest.raises(rc.RawDataError, match=r"'joint_xyz': expected shape \[kinects, frames, 36, 3\]"):
        nyu.read_joint_data(mat)
    os.remove(mat)
    with pytest.raises(rc.RawDataError, match=r"joint_data\.mat: expected NYU joint_data\.mat.*not found"):
        nyu.read_joint_data(mat)
    with pytest.raises(rc.RawDataError, match=r"nope: expected the NYU 'nope' directory"):
        nyu.list_frames(bad, "nope")


def test_capsule_fallback_hands(tmp_path):
    """The fixtures' built-in geometry (used when GEN's generator is absent) round-trips too."""
    root, out = str(tmp_path / "raw"), str(tmp_path / "out")
    truth = fixtures_raw.write_nyu(root, {"test": 2}, seed=5, source="capsule")
    assert truth["test"]["frames"][0]["source"] == "capsule"
    nyu.convert(root, out, splits=("test",), num_workers=1, progress=False)
    data = load_split(out, "test")
    np.testing.assert_allclose(data["joints"], truth["test"]["joints"], atol=1e-3)
    pts = camera_points(data)
    for f in range(2):
        fr = truth["test"]["frames"][f]
        assert surface_distance(pts[f], fr["vertices"], fr["faces"]).max() < 0.7
