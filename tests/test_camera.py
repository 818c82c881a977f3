"""Camera: depth <-> points against independent computations (plane, cube), projections, crops, TF path."""
import numpy as np
import pytest

from hsr_tf.geometry.camera import Camera, depth_to_point_map_tf, points_to_uvd_tf, uvd_to_points_tf


def test_presets():
    nyu = Camera.preset("nyu")
    assert (nyu.width, nyu.height, nyu.fx, nyu.fy, nyu.cx, nyu.cy) == (640, 480, 588.03, 587.07, 320.0, 240.0)
    icvl = Camera.preset("ICVL")
    assert (icvl.width, icvl.height, icvl.fx) == (320, 240, 241.42)
    assert Camera.from_json(nyu.to_json()) == nyu
    with pytest.raises(ValueError, match="camera preset"):
        Camera.preset("kinect2")


def test_plane_at_known_depth():
    cam = Camera(fx=500.0, fy=400.0, cx=31.5, cy=23.5, width=64, height=48)
    depth = np.full((48, 64), 800.0)
    pts = cam.depth_to_point_map(depth)
    assert np.allclose(pts[..., 2], 800.0)
    # Row 0 is the top of the image -> largest y; column 0 is the left -> smallest x.
    assert np.all(np.diff(pts[:, 0, 1]) < 0) and np.all(np.diff(pts[0, :, 0]) > 0)
    # Independent: pixel spacing at depth z is z/f mm; the principal point is (31.5, 23.5).
    assert np.allclose(np.diff(pts[0, :, 0]), 800.0 / 500.0)
    assert np.allclose(np.diff(pts[:, 0, 1]), -800.0 / 400.0)
    assert np.allclose(pts[0, 0, :2], [-31.5 * 800 / 500, 23.5 * 800 / 400])


def test_cube_face_back_projects_to_its_square():
    # A 100 mm cube whose front face is at z = 500, centred on the optical axis: render its depth by hand.
    cam = Camera.preset("nyu")
    v, u = np.indices((cam.height, cam.width), dtype=np.float64)
    x = (u - cam.cx) * 500.0 / cam.fx
    y = (cam.cy - v) * 500.0 / cam.fy
    inside = (np.abs(x) <= 50) & (np.abs(y - 20.0) <= 50)  # face spans y in [-30, 70]
    depth = np.where(inside, 500.0, 0.0)
    pts = cam.depth_to_points(depth)
    assert len(pts) == inside.sum() > 0
    assert np.all(np.abs(pts[:, 0]) <= 50 + 1e-4) and np.all(np.abs(pts[:, 1] - 20.0) <= 50 + 1e-4)
    assert pts[:, 1].max() > 65 and pts[:, 1].min() < -25  # y up: the face's top is at +70
    # the face covers 100 mm / (500/f) pixels per side
    cols = np.nonzero(inside.any(axis=0))[0]
    assert abs(len(cols) - 100 * cam.fx / 500) <= 1.0


def test_uvd_roundtrip_and_formula(rng):
    cam = Camera.preset("nyu")
    p = np.stack([rng.uniform(-200, 200, 100), rng.uniform(-200, 200, 100), rng.uniform(200, 900, 100)], -1)
    uvd = cam.points_to_uvd(p)
    assert np.allclose(uvd[:, 0], 320 + 588.03 * p[:, 0] / p[:, 2])
    assert np.allclose(uvd[:, 1], 240 - 587.07 * p[:, 1] / p[:, 2])
    assert np.allclose(cam.uvd_to_points(uvd), p)
    with pytest.raises(ValueError, match="z > 0"):
        cam.points_to_uvd([[0.0, 0.0, -1.0]])


def test_tf_path_matches_numpy(rng):
    cam = Camera.preset("icvl")
    p = np.stack([rng.uniform(-100, 100, 50), rng.uniform(-100, 100, 50), rng.uniform(200, 600, 50)], -1)
    uvd_tf = points_to_uvd_tf(p.astype(np.float32)[None], cam).numpy()[0]
    assert np.allclose(uvd_tf, cam.points_to_uvd(p), atol=1e-3)
    back = uvd_to_points_tf(uvd_tf[None], cam).numpy()[0]
    assert np.allclose(back, p, atol=1e-2)
    depth = rng.uniform(300, 500, (cam.height, cam.width))
    depth[::7, ::5] = 0
    pm = depth_to_point_map_tf(depth[None], cam).numpy()[0]
    assert np.allclose(pm, cam.depth_to_point_map(depth), atol=1e-2)
    with pytest.raises(ValueError, match="depth"):
        depth_to_point_map_tf(np.zeros((10, 10)), cam)


def test_crop_hand_keeps_only_cube():
    cam = Camera.preset("nyu")
    # background wall at 900 mm, a 60 mm square "hand" patch at 400 mm around (0, 0)
    v, u = np.indices((cam.height, cam.width), dtype=np.float64)
    x = (u - cam.cx) * 400.0 / cam.fx
    y = (cam.cy - v) * 400.0 / cam.fy
    patch = (np.abs(x) <= 30) & (np.abs(y) <= 30)
    depth = np.where(patch, 400.0, 900.0)
    out = cam.crop_hand(depth, [0.0, 0.0, 400.0], cube_size=200.0)
    assert len(out["points"]) == patch.sum()
    assert np.allclose(out["points"][:, 2], 400.0)
    # same with a uvd centre
    out2 = cam.crop_hand(depth, [cam.cx, cam.cy, 400.0], cube_size=200.0, center_is_uvd=True)
    assert len(out2["points"]) == patch.sum()
    u0, v0, u1, v1 = out["window"]
    # window = projection of the cube's front face (z = 300): half-width 100 mm -> 100*f/300 px
    assert abs((u1 - u0) - 200 * cam.fx / 300) <= 3
    assert out["depth_crop"].shape == (v1 - v0, u1 - u0)
    assert set(np.unique(out["depth_crop"])) <= {0.0, 400.0}
    with pytest.raises(ValueError, match="depth"):
        cam.crop_hand(np.zeros((10, 10)), [0, 0, 400])
