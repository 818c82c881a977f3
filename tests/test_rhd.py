"""RHD reader on a rendered raw-format tree (tests/fixtures_rgb_raw.py): joints, chosen hand, mirroring, 2D
points, mask, depth and the errors on malformed input."""
import os
import pickle
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_rgb_raw as fx  # noqa: E402

from data_prep import _rgb_common as rg  # noqa: E402
from data_prep import rhd  # noqa: E402
from data_prep._raw_common import RawDataError  # noqa: E402
from hsr_tf.data import rgb_shards  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("rhd")
    raw, out = str(root / "raw"), str(root / "out")
    truth = fx.write_rhd(raw, seed=0)
    result = rhd.convert(raw, out, num_workers=1, progress=False)
    shards = {}
    for split, raw_split in (("train", "training"), ("test", "evaluation")):
        path = os.path.join(out, f"{split}-00000.h5")
        arrays, attrs = rgb_shards.read_rgb_shard(path)
        shards[split] = (arrays, attrs, rg.read_extra(path), truth[raw_split])
    return {"raw": raw, "out": out, "truth": truth, "result": result, "shards": shards}


def test_joints_hand_choice_and_visibility(converted):
    for split, (arrays, attrs, extra, truth) in converted["shards"].items():
        assert attrs["dataset"] == "rhd"
        np.testing.assert_allclose(arrays["joints"], np.stack([t["joints"] for t in truth]), atol=0.5)
        np.testing.assert_array_equal(arrays["mirrored"], [int(t["left"]) for t in truth])
        np.testing.assert_array_equal(extra["joints_visible"], np.stack([t["visible"] for t in truth]))
        np.testing.assert_array_equal(arrays["frame_index"], np.arange(len(truth)))
    assert list(converted["shards"]["train"][0]["mirrored"]) == [0, 1, 0]    # the fixture's one left hand


def test_uv_maps_back_to_the_original_image(converted):
    for split, (arrays, attrs, extra, truth) in converted["shards"].items():
        for i, t in enumerate(truth):
            got = fx.uv_in_original(arrays["joints_uv"][i], extra["crop_box"][i], arrays["mirrored"][i], 256)
            assert np.abs(got - t["uv"]).max() < 0.05


def test_mask_depth_and_image_match_the_mesh(converted):
    checked = 0
    for split, (arrays, attrs, extra, truth) in converted["shards"].items():
        for i, t in enumerate(truth):
            cast = fx.raycast_crop(t["vertices"], t["faces"], arrays["camera"][i], 256)
            hand = cast["mesh"] == 0
            mask = arrays["mask"][i] > 0
            assert set(np.unique(arrays["mask"][i])) <= {0, 255}
            iou = (mask & hand).sum() / (mask | hand).sum()
            assert iou > 0.85, (split, i, iou)       # 320 px source upsampled: edges are blocky
            both = mask & hand
            diff = np.abs(arrays["depth"][i][both].astype(np.float64) - cast["depth"][both])
            assert np.median(diff) < 1.5, (split, i)
            for j in range(2, 21):
                u, v = np.rint(arrays["joints_uv"][i, j]).astype(int)
                if not hand[v, u]:
                    continue
                seen = fx.nearest_joint(cast["points"][v, u][None], t["joints"])[0]
                if fx.finger_of_joint(seen) != fx.finger_of_joint(j):
                    continue
                assert fx.classify_colour(arrays["image"][i, v, u]) == fx.finger_of_joint(j), (split, i, j)
                checked += 1
    assert checked >= 30


def test_resume(converted):
    again = rhd.convert(converted["raw"], converted["out"], num_workers=1, progress=False)
    assert again["train"]["reused"] == converted["result"]["train"]["shards"]
    assert again["train"]["frames"] == 0


def _copy(raw, tmp_path):
    dst = str(tmp_path / "raw")
    shutil.copytree(raw, dst)
    return dst


def _rewrite(path, fn):
    with open(path, "rb") as f:
        anno = pickle.load(f)
    fn(anno)
    with open(path, "wb") as f:
        pickle.dump(anno, f)


def test_malformed_inputs_raise_naming_the_file(converted, tmp_path):
    from PIL import Image

    raw = _copy(converted["raw"], tmp_path)
    pick = os.path.join(raw, "evaluation", "anno_evaluation.pickle")
    _rewrite(pick, lambda a: a[1].pop("K"))
    with pytest.raises(RawDataError, match=r"anno_evaluation.pickle: sample 1: expected key 'K'"):
        rhd.list_frames(raw, "test")
    _rewrite(pick, lambda a: a[1].update(K=np.eye(3), xyz=np.zeros((21, 3))))
    with pytest.raises(RawDataError, match=r"sample 1: 'xyz': expected shape \[42, 3\]"):
        rhd.list_frames(raw, "test")
    os.remove(os.path.join(raw, "training", "mask", "00002.png"))
    with pytest.raises(RawDataError, match=r"training/mask/00002.png"):
        rhd.list_frames(raw, "train")
    colour = os.path.join(raw, "training", "color", "00000.png")
    Image.new("RGB", (64, 64)).save(colour)
    with pytest.raises(RawDataError, match=r"00000.png.*320x320.*64x64"):
        rhd.load_frame(rhd.list_frames(raw, "train", max_frames=1)[0].source, rg.CropConfig())
    mask = os.path.join(raw, "training", "mask", "00001.png")
    Image.new("RGB", (320, 320)).save(mask)
    with pytest.raises(RawDataError, match=r"mask/00001.png.*mode"):
        rhd.read_mask(mask)
    Image.fromarray(np.full((320, 320), 40, np.uint8), mode="L").save(mask)
    with pytest.raises(RawDataError, match=r"mask/00001.png.*0..33"):
        rhd.read_mask(mask)
    with pytest.raises(RawDataError, match="anno_training.pickle"):
        os.remove(os.path.join(raw, "training", "anno_training.pickle"))
        rhd.list_frames(raw, "train")


def test_hand_choice_rule():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :3] = 5          # 3 left-hand pixels
    mask[1, :2] = 20         # 2 right-hand pixels
    left, sel = rhd.choose_hand(mask)
    assert left and sel.sum() == 3
    mask[2, :] = 33
    left, sel = rhd.choose_hand(mask)
    assert not left and sel.sum() == 6
    # joint order: wrist, then each finger tip -> MCP reversed to root -> tip
    xyz = np.arange(42 * 3, dtype=np.float64).reshape(42, 3) / 1000.0 + np.array([0.0, 0.0, 1.0])
    j, _ = rhd.hand_to_ours(xyz, np.ones((42, 3)), is_left=False)
    np.testing.assert_allclose(j[1] / 1000.0 * np.array([1, -1, 1]), xyz[21 + 4] * 1.0, atol=1e-12)
    np.testing.assert_allclose(j[4] / 1000.0 * np.array([1, -1, 1]), xyz[21 + 1], atol=1e-12)


def test_command_line(converted, tmp_path):
    import subprocess

    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "data_prep.rhd", f"--raw_dir={converted['raw']}", f"--out_dir={out}",
                           "--split=test", "--num_workers=1", "--noprogress"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test: wrote 2 frames in 1 shards" in proc.stdout
    arrays, _ = rgb_shards.read_rgb_shard(str(out / "test-00000.h5"))
    np.testing.assert_allclose(arrays["joints"], converted["shards"]["test"][0]["joints"], atol=1e-6)
