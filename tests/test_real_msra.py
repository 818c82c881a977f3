"""MSRA reader on raw-format fixtures."""
import os
import shutil

import numpy as np
import pytest

import fixtures_raw
from _real_checks import camera_points, load_split, surface_distance
from data_prep import _raw_common as rc
from data_prep import msra
from hsr_tf.data import datasets

GESTURES = datasets.MSRA_GESTURES


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("msra_raw"))
    return root, fixtures_raw.write_msra(root, subjects=("P0", "P4"), frames_per_gesture=1, seed=3)


def test_joints_exact_points_on_surface(raw, tmp_path):
    root, truth = raw
    out = str(tmp_path / "out")
    res = msra.convert(root, out, subjects=("P0", "P4"), num_workers=2, shard_size=8, progress=False)
    assert res["P0"]["frames"] == 17 and res["P4"]["frames"] == 17
    for subject, sid in (("P0", 0), ("P4", 4)):
        data = load_split(out, subject)
        np.testing.assert_array_equal(data["frame_id"], truth[subject]["frame_id"])
        np.testing.assert_array_equal(data["subject"], sid)
        assert np.all(data["joints"][..., 2] > 0)  # z flipped to "away from the camera"
        np.testing.assert_allclose(data["joints"], truth[subject]["joints"], atol=1e-3)
        pts = camera_points(data)
        for f in range(len(pts)):
            fr = truth[subject]["frames"][f]
            # float32 depth: points lie on the surface up to float precision
            assert surface_distance(pts[f], fr["vertices"], fr["faces"]).max() < 0.05


def test_bin_roundtrip(raw, tmp_path):
    _, truth = raw
    depth = truth["P0"]["frames"][0]["depth"]
    path = str(tmp_path / "x.bin")
    left, top, right, bottom = fixtures_raw.write_msra_bin(path, depth)
    assert os.path.getsize(path) == 24 + 4 * (right - left) * (bottom - top)
    np.testing.assert_array_equal(msra.read_depth_bin(path), depth)


def test_malformed_inputs_raise(raw, tmp_path):
    root, _ = raw
    bad = str(tmp_path / "bad")
    shutil.copytree(root, bad)
    b = os.path.join(bad, "P0", "IP", "000000_depth.bin")
    size = os.path.getsize(b)
    with open(b, "r+b") as f:
        f.truncate(size - 8)
    with pytest.raises(rc.RawDataError, match=r"IP/000000_depth\.bin: expected \d+ bytes .*found \d+ \(truncated\)"):
        msra.convert(bad, str(tmp_path / "o"), subjects=("P0",), num_workers=1, progress=False)
    with open(b, "r+b") as f:
        f.truncate(10)
    with pytest.raises(rc.RawDataError, match=r"000000_depth\.bin: expected a 24-byte header"):
        msra.read_depth_bin(b)
    jt = os.path.join(bad, "P4", "T", "joint.txt")
    with open(jt) as f:
        original = f.readlines()
    lines = list(original)
    lines[1] = " ".join(lines[1].split()[:62]) + "\n"
    with open(jt, "w") as f:
        f.writelines(lines)
    with pytest.raises(rc.RawDataError, match=r"T/joint\.txt:2: expected 63 numbers.*found 62"):
        msra.list_frames(bad, "P4")
    with open(jt, "w") as f:
        f.writelines(["2\n"] + lines[1:])
    with pytest.raises(rc.RawDataError, match=r"joint\.txt: expected 2 joint lines .*found 1"):
        msra.read_joints(jt)
    with open(jt, "w") as f:
        f.writelines(original)
    os.remove(os.path.join(bad, "P4", "Y", "000000_depth.bin"))
    with pytest.raises(rc.RawDataError, match=r"Y/000000_depth\.bin"):
        msra.list_frames(bad, "P4")
    with pytest.raises(rc.RawDataError, match=r"P7: expected the MSRA subject directory"):
        msra.list_frames(bad, "P7")
