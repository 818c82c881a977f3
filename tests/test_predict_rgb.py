"""experiments.predict_rgb on a rendered synthetic frame pasted into a larger photo: the crop and its intrinsics
(against a hand-made crop), joints in camera mm and photo px (px = projection of mm), a left hand (the photo
mirrored) giving the mirrored joints, the PLY / JSON / overlay files, the stated defaults, and bad inputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep.synth import hands, poses
from data_prep.synth_rgb import appearance, raster
from experiments import predict_rgb
from hsr_tf import export as export_lib
from tests.test_export_rgb import small_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACES = np.asarray(hands.FACES)
CROP, OFFSET, PHOTO_WH = 160, (70, 40), (300, 240)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_rgb")
    subj = hands.make_subjects(1, 0)[0]
    verts, joints = subj.pose(subj.theta_for(poses.pose_library(3, 0))[0])
    look = appearance.subject_look(subj.rest_vertices, subj.rest_joints, FACES, np.random.default_rng(1))
    rec, reason = raster.render_rgb_frame(verts, joints, FACES, look, raster.RGBFrameConfig(image_size=CROP),
                                          np.random.default_rng(3))
    assert reason is None
    rendered = np.asarray(rec["image"], np.uint8)
    photo = np.full((PHOTO_WH[1], PHOTO_WH[0], 3), 90, np.uint8)
    photo[OFFSET[1]:OFFSET[1] + CROP, OFFSET[0]:OFFSET[0] + CROP] = rendered
    cam = np.asarray(rec["camera"], np.float64) + [0, 0, OFFSET[0], OFFSET[1]]  # same focal, shifted centre
    png = str(tmp / "photo.png")
    Image.fromarray(photo).save(png)
    flipped = str(tmp / "photo_flipped.png")
    Image.fromarray(photo[:, ::-1]).save(flipped)
    sm = str(tmp / "sm")
    export_lib.export_rgb_saved_model(small_net(seed=4), sm)
    return dict(tmp=tmp, png=png, flipped=flipped, sm=sm, photo=photo, rendered=rendered, cam=cam, rec=rec)


def run_cli(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "experiments.predict_rgb"] + args, capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_cli_right_and_left_hand(scene):
    cam = scene["cam"]
    bbox = f"{OFFSET[0]},{OFFSET[1]},{CROP},{CROP}"
    camera = ",".join(f"{c:.6f}" for c in cam)
    out_r = str(scene["tmp"] / "right")
    res = run_cli([f"--saved_model={scene['sm']}", f"--image={scene['png']}", f"--bbox={bbox}", "--margin=0",
                   f"--camera={camera}", "--root_depth=450", "--bone_scale=30", f"--out_dir={out_r}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "assumed" not in res.stdout
    with open(os.path.join(out_r, "joints.json")) as f:
        doc = json.load(f)
    assert doc["crop"]["u0"] == OFFSET[0] and doc["crop"]["v0"] == OFFSET[1] and doc["crop"]["side"] == CROP
    mm = np.array([j["camera_mm"] for j in doc["joints"]])
    px = np.array([j["image_px"] for j in doc["joints"]])
    # Independent reference: PIL resize of the rendered crop, intrinsics of a 160 -> 256 resize by hand.
    k = 256 / CROP
    rc = np.asarray(scene["rec"]["camera"], np.float64)
    crop_cam = np.array([rc[0] * k, rc[1] * k, (rc[2] + 0.5) * k - 0.5, (rc[3] + 0.5) * k - 0.5], np.float32)
    np.testing.assert_allclose(doc["crop"]["camera"], crop_cam, rtol=1e-5)
    img = np.asarray(Image.fromarray(scene["rendered"]).resize((256, 256), Image.BILINEAR))
    ref = export_lib.LoadedRGBModel(scene["sm"])(img[None], crop_cam[None], [450.0], [30.0], [False])
    np.testing.assert_allclose(mm, ref["joints"][0], atol=0.05)
    # Photo px are the projection of the camera-mm joints by the photo's camera (y up -> v down).
    np.testing.assert_allclose(px[:, 0], cam[2] + cam[0] * mm[:, 0] / mm[:, 2], atol=0.02)
    np.testing.assert_allclose(px[:, 1], cam[3] - cam[1] * mm[:, 1] / mm[:, 2], atol=0.02)
    with open(os.path.join(out_r, "mesh.ply")) as f:
        header = f.read(400)
    assert "element vertex 1305" in header and f"element face {len(FACES)}" in header
    overlay = np.asarray(Image.open(os.path.join(out_r, "overlay.png")))
    assert overlay.shape == scene["photo"].shape
    changed = np.any(overlay != scene["photo"], axis=-1)
    assert 0.001 < changed.mean() < 0.5  # drawn on, not replaced
    u, v = np.round(px[0]).astype(int)
    if 0 <= u < PHOTO_WH[0] and 0 <= v < PHOTO_WH[1]:
        assert overlay[v, u].min() > 200  # the wrist dot is white

    # The same photo mirrored, declared left: joints mirrored in camera x and in photo u.
    w = PHOTO_WH[0]
    out_l = str(scene["tmp"] / "left")
    cam_l = ",".join(f"{c:.6f}" for c in (cam[0], cam[1], w - 1 - cam[2], cam[3]))
    res = run_cli([f"--saved_model={scene['sm']}", f"--image={scene['flipped']}", "--hand=left", "--margin=0",
                   f"--bbox={w - OFFSET[0] - CROP},{OFFSET[1]},{CROP},{CROP}", f"--camera={cam_l}",
                   "--root_depth=450", "--bone_scale=30", f"--out_dir={out_l}"])
    assert res.returncode == 0, res.stderr[-3000:]
    with open(os.path.join(out_l, "joints.json")) as f:
        doc_l = json.load(f)
    mm_l = np.array([j["camera_mm"] for j in doc_l["joints"]])
    px_l = np.array([j["image_px"] for j in doc_l["joints"]])
    np.testing.assert_allclose(mm_l, mm * [-1, 1, 1], atol=0.05)
    np.testing.assert_allclose(px_l[:, 0], w - 1 - px[:, 0], atol=0.02)
    np.testing.assert_allclose(px_l[:, 1], px[:, 1], atol=0.02)
    with open(os.path.join(out_l, "mesh.ply")) as f:
        lines = f.read().splitlines()
    first_face = [int(t) for t in lines[lines.index("end_header") + 1 + 1305].split()[1:]]
    assert first_face == FACES[0, ::-1].tolist()  # mirrored mesh, reversed winding


def test_defaults_are_stated(scene):
    res = predict_rgb.predict(scene["sm"], scene["photo"])
    assumed = " ".join(res["doc"]["assumed"])
    assert "camera" in assumed and "root_depth = 500 mm" in assumed and "bone_scale" in assumed
    w, h = PHOTO_WH
    np.testing.assert_allclose(res["camera"], [w, w, (w - 1) / 2, (h - 1) / 2])
    assert res["box"] == (0, round((h - 1) / 2 - (w - 1) / 2), w)  # the whole photo, padded to a square
    bone = res["doc"]["bone_scale_mm"]
    assert 30 < bone < 60  # the hand model's mean middle proximal phalanx


def test_crop_box_rule():
    # centre (70 + 79.5, 40 + 49.5) = (149.5, 89.5), side 1.5 * 160 = 240: u0 = 149.5 - 119.5, v0 = 89.5 - 119.5
    assert predict_rgb.crop_box(300, 240, (70, 40, 160, 100), 0.25) == (30, -30, 240)
    assert predict_rgb.crop_box(200, 200) == (0, 0, 200)


def test_bad_inputs(scene, tmp_path):
    from absl import app

    with pytest.raises(FileNotFoundError, match="--image"):
        predict_rgb.load_photo(str(tmp_path / "missing.jpg"))
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(200)))
    with pytest.raises(ValueError, match="junk.jpg: expected a readable"):
        predict_rgb.load_photo(str(tmp_path / "junk.jpg"))
    Image.fromarray(np.full((20, 20), 700, np.uint16)).save(tmp_path / "depth.png")
    with pytest.raises(ValueError, match="depth.png: expected a colour photo"):
        predict_rgb.load_photo(str(tmp_path / "depth.png"))
    with pytest.raises(app.UsageError, match="--bbox: expected 4"):
        predict_rgb.parse_floats("1,2,3", 4, "bbox")
    with pytest.raises(app.UsageError, match="--camera: expected 4"):
        predict_rgb.parse_floats("1,2,nan,4", 4, "camera")
    with pytest.raises(ValueError, match="--bbox: expected a box overlapping"):
        predict_rgb.crop_box(300, 240, (400, 10, 50, 50))
    with pytest.raises(app.UsageError, match="--bbox: expected width and height"):
        predict_rgb.crop_box(300, 240, (10, 10, 0, 50))
    with pytest.raises(app.UsageError, match="--camera: expected fx, fy > 0"):
        predict_rgb.predict(scene["sm"], scene["photo"], camera=[0, 100, 10, 10])
    with pytest.raises(app.UsageError, match="--root_depth"):
        predict_rgb.predict(scene["sm"], scene["photo"], root_depth=-5.0)
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        predict_rgb.predict(str(tmp_path), scene["photo"])
