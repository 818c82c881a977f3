"""STB reader on a rendered raw-format tree (tests/fixtures_rgb_raw.py), and the depth warp it uses."""
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_rgb_raw as fx  # noqa: E402

from data_prep import _rgb_common as rg  # noqa: E402
from data_prep import stb  # noqa: E402
from data_prep._raw_common import RawDataError  # noqa: E402
from hsr_tf.data import rgb_shards  # noqa: E402
from hsr_tf.geometry import depth_warp  # noqa: E402
from hsr_tf.geometry.camera import Camera  # noqa: E402

SEQS = ["B1Counting", "B2Random"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("stb")
    raw, out = str(root / "raw"), str(root / "out")
    truth = fx.write_stb(raw, frames_per_sequence=2, seed=0)
    result = stb.convert(raw, out, sequences=SEQS, num_workers=1, progress=False)
    shards = {}
    for split in ("train", "test"):
        path = os.path.join(out, f"{split}-00000.h5")
        arrays, attrs = rgb_shards.read_rgb_shard(path)
        shards[split] = (arrays, attrs, rg.read_extra(path))
    return {"raw": raw, "out": out, "truth": truth, "result": result, "shards": shards}


def _frames(c):
    """(split arrays, attrs, extra, truth dict of its sequence) per split: B1 -> test, B2 -> train."""
    return [(c["shards"][split] + (c["truth"][seq],)) for split, seq in (("test", "B1Counting"), ("train", "B2Random"))]


def test_joints_wrist_and_palm_recovered(converted):
    for arrays, attrs, extra, truth in _frames(converted):
        assert attrs["dataset"] == "stb" and attrs["root_convention"] == "wrist"
        np.testing.assert_allclose(arrays["joints"], truth["joints"], atol=0.5)
        assert np.abs(arrays["joints"][:, 0] - truth["joints"][:, 0]).max() < 0.01   # wrist rule
        np.testing.assert_allclose(extra["palm"], truth["palm"], atol=0.01)
        np.testing.assert_array_equal(arrays["mirrored"], 1)
        np.testing.assert_allclose(arrays["bone_scale"], np.linalg.norm(truth["joints"][:, 9] - truth["joints"][:, 10],
                                                                        axis=-1), atol=0.01)
    test_arrays = converted["shards"]["test"][0]
    assert list(test_arrays["sequence"]) == ["B1Counting", "B1Counting"]
    np.testing.assert_array_equal(test_arrays["frame_index"], [0, 1])
    np.testing.assert_array_equal(converted["shards"]["train"][0]["frame_index"], [30000, 30001])


def test_palm_root_option(converted):
    tasks = stb.list_frames(converted["raw"], ["B1Counting"], root="palm")["test"]
    rec, _ = stb.load_frame(tasks[0].source, rg.CropConfig())
    truth = converted["truth"]["B1Counting"]
    np.testing.assert_allclose(rec["joints"][0], truth["palm"][0], atol=0.01)
    np.testing.assert_allclose(rec["joints"][1:], truth["joints"][0, 1:], atol=0.01)


def test_uv_maps_back_to_the_original_image(converted):
    colour, _ = stb.cameras()
    for arrays, attrs, extra, truth in _frames(converted):
        for i in range(len(arrays["joints"])):
            left = truth["joints"][i] * np.array([-1.0, 1.0, 1.0])          # the physical left hand
            want = colour.points_to_uvd(left)[:, :2]
            got = fx.uv_in_original(arrays["joints_uv"][i], extra["crop_box"][i], arrays["mirrored"][i], 256)
            assert np.abs(got - want).max() < 0.05


def test_image_shows_each_finger_where_its_joints_project(converted):
    checked = 0
    for arrays, attrs, extra, truth in _frames(converted):
        for i in range(len(arrays["joints"])):
            cast = fx.raycast_crop(truth["vertices"][i], truth["faces"], arrays["camera"][i], 256)
            for j in (2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18, 19, 20):
                u, v = np.rint(arrays["joints_uv"][i, j]).astype(int)
                if cast["mesh"][v, u] != 0:
                    continue
                seen = fx.nearest_joint(cast["points"][v, u][None], truth["joints"][i])[0]
                if fx.finger_of_joint(seen) != fx.finger_of_joint(j):
                    continue                       # another finger is in front of this joint
                assert fx.classify_colour(arrays["image"][i, v, u]) == fx.finger_of_joint(j), (i, j)
                checked += 1
    assert checked >= 20


def test_depth_warped_into_the_colour_crop(converted):
    for arrays, attrs, extra, truth in _frames(converted):
        for i in range(len(arrays["joints"])):
            cast = fx.raycast_crop(truth["vertices"][i], truth["faces"], arrays["camera"][i], 256)
            hand = cast["mesh"] == 0
            depth = arrays["depth"][i].astype(np.float64)
            assert (depth[hand] > 0).mean() > 0.97            # no holes: the 2x2 splat covers the magnification
            diff = np.abs(depth[hand] - cast["depth"][hand])
            assert np.median(diff) < 2.0 and np.percentile(diff, 90) < 6.0
            # the derived mask covers the hand and little else
            mask = arrays["mask"][i] > 0
            iou = (mask & hand).sum() / (mask | hand).sum()
            assert iou > 0.9, iou


def test_resume_and_sequence_selection(converted, tmp_path):
    again = stb.convert(converted["raw"], converted["out"], sequences=SEQS, num_workers=1, progress=False)
    assert sorted(again["train"]["reused"] + again["test"]["reused"]) == sorted(
        converted["result"]["train"]["shards"] + converted["result"]["test"]["shards"])
    only = stb.convert(converted["raw"], str(tmp_path / "only"), sequences=["B2Random"], num_workers=1,
                       progress=False)
    assert set(only) == {"train"} and only["train"]["frames"] == 2
    with pytest.raises(ValueError, match="sequences"):
        stb.list_frames(converted["raw"], ["B7Counting"])
    with pytest.raises(RawDataError, match="B3Counting_SK.mat"):
        stb.list_frames(converted["raw"], ["B3Counting"])


def _copy(raw, tmp_path):
    dst = str(tmp_path / "raw")
    shutil.copytree(raw, dst)
    return dst


def test_malformed_inputs_raise_naming_the_file(converted, tmp_path):
    import scipy.io
    from PIL import Image

    raw = _copy(converted["raw"], tmp_path)
    mat = os.path.join(raw, "labels", "B2Random_SK.mat")
    para = scipy.io.loadmat(mat)["handPara"]
    scipy.io.savemat(mat, {"handPara": para[:, :20]})
    with pytest.raises(RawDataError, match=r"B2Random_SK.mat.*\[3, 21, N\]"):
        stb.list_frames(raw, ["B2Random"])
    bad = para.copy()
    bad[0, 3, 1] = np.nan
    scipy.io.savemat(mat, {"handPara": bad})
    with pytest.raises(RawDataError, match=r"B2Random_SK.mat.*NaN.*\[1\]"):
        stb.list_frames(raw, ["B2Random"])
    scipy.io.savemat(mat, {"joints": para})
    with pytest.raises(RawDataError, match="handPara"):
        stb.list_frames(raw, ["B2Random"])
    os.remove(os.path.join(raw, "images", "B1Counting", "SK_depth_1.png"))
    with pytest.raises(RawDataError, match="SK_depth_1.png"):
        stb.list_frames(raw, ["B1Counting"])
    colour = os.path.join(raw, "images", "B1Counting", "SK_color_0.png")
    Image.new("RGB", (320, 240)).save(colour)
    with pytest.raises(RawDataError, match=r"SK_color_0.png.*640x480.*320x240"):
        stb.read_colour(colour)
    depth = os.path.join(raw, "images", "B1Counting", "SK_depth_0.png")
    Image.new("I;16", (640, 480)).save(depth)
    with pytest.raises(RawDataError, match=r"SK_depth_0.png.*mode"):
        stb.decode_depth(depth)


# ---------------------------------------------------------------------- depth warp
def test_warp_identity_is_exact(rng):
    cam = Camera(500.0, 510.0, 60.3, 41.7, 120, 90)
    depth = rng.uniform(300, 900, (90, 120)).astype(np.float32)
    depth[rng.random((90, 120)) < 0.2] = 0
    np.testing.assert_allclose(depth_warp.warp_depth(depth, cam, cam, splat="nearest"), depth, rtol=1e-6)


def test_warp_z_buffer_keeps_the_nearest():
    cam = Camera(400.0, 400.0, 79.5, 59.5, 160, 120)
    depth = np.full((120, 160), 1000.0)
    depth[50:70, 70:90] = 500.0                 # a near square in front of a far wall
    t = np.array([-60.0, 0.0, 0.0])             # target camera 60 mm to the right: parallax of the square 48 px
    out = depth_warp.warp_depth(depth, cam, cam, np.eye(3), t, splat="nearest")
    # the square lands at u - 48 (rows unchanged); the wall behind it lands at u - 24 and is hidden there
    np.testing.assert_allclose(out[52:68, 24:40], 500.0, atol=1e-3)
    np.testing.assert_allclose(out[52:68, 100:130], 1000.0, atol=1e-3)


def test_warp_plane_matches_the_analytic_depth():
    src = Camera(*stb.DEPTH_INTR, 640, 480)
    dst = Camera(*stb.COLOR_INTR, 640, 480)
    rot, trans = stb.depth_to_colour_ours()
    # a tilted plane in the source frame: z = 600 + 0.3 x - 0.2 y  (x, y, z mm)
    v, u = np.indices((480, 640), dtype=np.float64)
    dx, dy = (u - src.cx) / src.fx, (src.cy - v) / src.fy
    depth = 600.0 / (1.0 - 0.3 * dx + 0.2 * dy)
    normal = np.array([-0.3, 0.2, 1.0])           # n . X = 600 in the source frame
    n_t = rot @ normal
    d_t = 600.0 + n_t @ trans                     # n_t . X_t = d_t in the target frame
    ray = dst.ray_directions(*np.meshgrid(np.arange(640.0), np.arange(480.0)))
    analytic = d_t / (ray @ n_t)
    for splat, coverage in (("2x2", 0.999), ("nearest", None)):
        out = depth_warp.warp_depth(depth, src, dst, rot, trans, splat=splat)
        inner = np.zeros_like(out, dtype=bool)
        inner[60:420, 80:560] = True
        filled = inner & (out > 0)
        assert np.abs(out[filled] - analytic[filled]).max() < 3.0
        if coverage:
            assert filled.sum() / inner.sum() >= coverage
        else:
            assert filled.sum() / inner.sum() < 0.9   # magnification 1.28: nearest splatting leaves holes


def test_command_line(converted, tmp_path):
    import subprocess

    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "data_prep.stb", f"--raw_dir={converted['raw']}", f"--out_dir={out}",
                           "--sequences=B1Counting", "--num_workers=1", "--noprogress", "--image_size=128"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test: wrote 2 frames in 1 shards" in proc.stdout
    arrays, attrs = rgb_shards.read_rgb_shard(str(out / "test-00000.h5"))
    assert arrays["image"].shape == (2, 128, 128, 3) and attrs["sequences"] == "B1Counting"
    np.testing.assert_allclose(arrays["joints"], converted["truth"]["B1Counting"]["joints"], atol=0.5)
