"""ICVL reader on raw-format fixtures."""
import os
import shutil

import numpy as np
import pytest

import fixtures_raw
from _real_checks import camera_points, load_split, surface_distance
from data_prep import _raw_common as rc
from data_prep import icvl
from hsr_tf.data import datasets


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("icvl_raw"))
    return root, fixtures_raw.write_icvl(root, num_train=4, num_rotated=2, test_counts=(2, 3), seed=2)


def test_joints_exact_points_on_surface(raw, tmp_path):
    root, truth = raw
    out = str(tmp_path / "out")
    res = icvl.convert(root, out, num_workers=1, progress=False)
    assert res["train"]["frames"] == 4 and res["test"]["frames"] == 5  # rotated copies skipped by default
    for split in ("train", "test"):
        data = load_split(out, split)
        np.testing.assert_allclose(data["joints"], truth[split]["joints"], atol=1e-3)
        # independent: joints reproject to the label's (u, v, d) with v = cy - fy y / z (y up)
        j = data["joints"].astype(np.float64)
        np.testing.assert_allclose(120.0 - 241.42 * j[..., 1] / j[..., 2], data["uvd"][..., 1], atol=1e-3)
        # ICVL joints are our paired joints (palm centre etc.)
        ours = datasets.ICVL.transform_our_joints(truth[split]["joints21"])[:, datasets.ICVL.our_joint_indices]
        np.testing.assert_allclose(data["joints"], ours, atol=1e-3)
        pts = camera_points(data)
        for f in range(len(pts)):
            fr = truth[split]["frames"][f]
            assert surface_distance(pts[f], fr["vertices"], fr["faces"]).max() < 0.7
    assert datasets.ICVL.test_frames == 702 + 894


def test_rotated_copies_flag(raw, tmp_path):
    root, truth = raw
    assert icvl.is_rotated_copy("22.5/image_0000.png") and not icvl.is_rotated_copy("201403121135/image_0000.png")
    out = str(tmp_path / "out")
    res = icvl.convert(root, out, splits=("train",), keep_rotated=True, num_workers=1, progress=False)
    assert res["train"]["frames"] == 6
    data = load_split(out, "train")
    # label order: original 0, rotated 0, rotated 1, originals 1..3
    want = np.concatenate([truth["train"]["joints"][:1], truth["train_rotated"]["joints"],
                           truth["train"]["joints"][1:]])
    np.testing.assert_allclose(data["joints"], want, atol=1e-3)


def test_malformed_inputs_raise(raw, tmp_path):
    from PIL import Image

    root, _ = raw
    bad = str(tmp_path / "bad")
    shutil.copytree(root, bad)
    labels = os.path.join(bad, "Testing", "test_seq_2.txt")
    with open(labels) as f:
        lines = f.readlines()
    lines[1] = " ".join(lines[1].split()[:-1]) + "\n"  # 47 numbers
    with open(labels, "w") as f:
        f.writelines(lines)
    with pytest.raises(rc.RawDataError, match=r"test_seq_2\.txt:2: expected a PNG path and 48 numbers.*found 47"):
        icvl.list_frames(bad, "test")
    png = os.path.join(bad, "Training", "Depth", "201403121135", "image_0002.png")
    Image.fromarray(np.zeros((240, 320, 3), np.uint8), mode="RGB").save(png)
    with pytest.raises(rc.RawDataError, match=r"image_0002\.png: expected a 16-bit single-channel PNG.*'RGB'"):
        icvl.convert(bad, str(tmp_path / "o"), splits=("train",), num_workers=1, progress=False)
    os.remove(png)
    with pytest.raises(rc.RawDataError, match=r"labels\.txt:\d+: expected the depth PNG .*image_0002\.png"):
        icvl.list_frames(bad, "train")
    os.remove(os.path.join(bad, "Testing", "test_seq_1.txt"))
    with pytest.raises(rc.RawDataError, match=r"test_seq_1\.txt: expected an ICVL label file"):
        icvl.list_frames(bad, "test")


def test_command_line(raw, tmp_path):
    """`python -m data_prep.icvl` with flags: split selection, max_frames, cube size recorded, summary printed."""
    import json
    import subprocess
    import sys

    from hsr_tf.data import shards

    root, truth = raw
    out = str(tmp_path / "cli")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "data_prep.icvl", f"--raw_dir={root}", f"--out_dir={out}",
                          "--split=test", "--max_frames=3", "--cube_size=260", "--num_points=256", "--num_workers=1",
                          "--progress=false"], capture_output=True, text=True, cwd=repo, timeout=300,
                         env=dict(os.environ, PYTHONPATH=repo))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test: wrote 3 frames in 1 shards" in res.stdout
    assert shards.list_shards(out, "train") == []
    data = load_split(out, "test")
    assert data["points"].shape == (3, 256, 3)
    np.testing.assert_allclose(data["joints"], truth["test"]["joints"][:3], atol=1e-3)
    attrs = shards.read_attrs(shards.list_shards(out, "test")[0])
    assert attrs["cube_size"] == 260.0 and json.loads(attrs["front_end"])["num_points"] == 256
    bad = subprocess.run([sys.executable, "-m", "data_prep.icvl", f"--raw_dir={root}", f"--out_dir={out}",
                          "--split=val"], capture_output=True, text=True, cwd=repo, timeout=300,
                         env=dict(os.environ, PYTHONPATH=repo))
    assert bad.returncode != 0 and "split: expected a comma-separated subset of ['train', 'test'], found 'val'" \
        in bad.stderr
