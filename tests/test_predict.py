"""The predict CLI on a rendered depth PNG: hand selection by --center and by --crop, PLY / JSON / PNG
outputs, camera-mm results; errors for an empty region and bad arguments."""
import json
import os
import subprocess
import sys

import numpy as np
import open3d as o3d
import pytest
import keras
from PIL import Image

from data_prep.synth import render
from hsr_tf import export as export_lib
from hsr_tf.geometry.camera import Camera
from tests.test_export import FACES, TinyMeshNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CENTER = np.array([40.0, -30.0, 500.0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cam = Camera.preset("nyu")
    ball = o3d.geometry.TriangleMesh.create_sphere(45.0, resolution=30)
    ball.translate(CENTER)
    wall = o3d.geometry.TriangleMesh.create_box(2000, 2000, 1)  # background 400 mm behind the ball
    wall.translate([-1000, -1000, 900])
    mesh = ball + wall
    depth = render.raycast_depth(np.asarray(mesh.vertices), np.asarray(mesh.triangles), cam)["depth"]
    png = str(tmp / "depth.png")
    Image.fromarray(np.round(depth).astype(np.uint16)).save(png)
    keras.utils.set_random_seed(0)
    model = TinyMeshNet()
    model(np.zeros((1, 1024, 3), np.float32))
    sm = str(tmp / "sm")
    export_lib.export_saved_model(model, sm, FACES, num_points=1024,
                                  metadata={"model_joint_names": [f"j{i}" for i in range(21)]})
    return {"tmp": tmp, "png": png, "sm": sm, "cam": cam, "depth": np.round(depth)}


def run_predict(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "experiments.predict"] + args, capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def ball_pixels_numpy(depth, cam):
    """Independent back-projection: pixels within 150 mm (cube half-size) of the ball centre, per axis."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    pts = np.stack([(u - cam.cx) * z / cam.fx, (cam.cy - v) * z / cam.fy, z], axis=1)
    return pts[np.all(np.abs(pts - CENTER) <= 150.0, axis=1)]


def read_ply(path):
    with open(path) as f:
        lines = f.read().splitlines()
    nv = int(next(l for l in lines if l.startswith("element vertex")).split()[-1])
    nf = int(next(l for l in lines if l.startswith("element face")).split()[-1])
    start = lines.index("end_header") + 1
    verts = np.array([[float(x) for x in l.split()] for l in lines[start:start + nv]])
    faces = np.array([[int(x) for x in l.split()[1:]] for l in lines[start + nv:start + nv + nf]])
    return verts, faces


def test_predict_center(scene):
    cam = scene["cam"]
    uvd = cam.points_to_uvd(CENTER - [0, 0, 45.0])  # the ball's front point, as a user would click it
    out = str(scene["tmp"] / "out_center")
    res = run_predict([f"--saved_model={scene['sm']}", f"--depth={scene['png']}", "--camera=nyu",
                       "--center=" + ",".join(f"{c:.2f}" for c in uvd), f"--out_dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.load(open(os.path.join(out, "joints.json")))
    expected = ball_pixels_numpy(scene["depth"], cam)
    assert doc["num_hand_pixels"] == len(expected)  # the wall is outside the cube
    # The model saw the visible half-sphere: its centre (mean of the 1024 sampled points) lies near the
    # mean of all visible ball points (sampling error ~ 0.5 mm), in camera mm.
    np.testing.assert_allclose(doc["center_mm"], expected.mean(0), atol=2.0)
    assert sorted(doc["joints"]) == sorted(f"j{i}" for i in range(21))
    verts, faces = read_ply(os.path.join(out, "mesh.ply"))
    assert verts.shape == (10, 3) and np.array_equal(faces, FACES)
    assert np.all(np.abs(verts - CENTER).max(axis=1) < 300), "vertices not in camera mm near the hand"
    img = Image.open(os.path.join(out, "overlay.png"))
    assert img.size[0] >= 300


def test_predict_crop_and_errors(scene):
    cam = scene["cam"]
    uvd = cam.points_to_uvd(CENTER)
    box = [uvd[0] - 80, uvd[1] - 80, uvd[0] + 80, uvd[1] + 80, 400, 600]
    out = str(scene["tmp"] / "out_crop")
    res = run_predict([f"--saved_model={scene['sm']}", f"--depth={scene['png']}", "--camera=nyu",
                       "--crop=" + ",".join(f"{c:.0f}" for c in box), f"--out_dir={out}", "--noplot"])
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.load(open(os.path.join(out, "joints.json")))
    d = scene["depth"]
    u0, v0, u1, v1 = (int(round(c)) for c in box[:4])
    sub = d[v0:v1, u0:u1]
    assert doc["num_hand_pixels"] == int(np.sum((sub >= 400) & (sub <= 600)))
    # An empty region (only the wall is at 900 mm) raises a clear error.
    res = run_predict([f"--saved_model={scene['sm']}", f"--depth={scene['png']}", "--camera=nyu",
                       "--crop=0,0,40,40,400,600", f"--out_dir={out}"])
    assert res.returncode != 0 and "found none" in res.stderr
    res = run_predict([f"--saved_model={scene['sm']}", f"--depth={scene['png']}", "--camera=nyu",
                       "--center=1,2", f"--out_dir={out}"])
    assert res.returncode != 0 and "expected 3 comma-separated finite numbers" in res.stderr
    res = run_predict([f"--saved_model={scene['sm']}", f"--depth={scene['png']}", "--camera=icvl",
                       "--center=1,2,3", f"--out_dir={out}"])
    assert res.returncode != 0 and "320x240" in res.stderr
