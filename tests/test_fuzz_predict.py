"""Bad inputs of ``experiments.predict``: depth arrays of every dtype and rank with NaN / Inf / negative values,
PNGs of every mode and bit depth, damaged PNGs, all-zero maps, centres and crop boxes anywhere (in and out of
the image), a wrong camera file. Each either raises ``PredictInputError`` naming the flag or file and saying what
was expected, or gives exactly what an independent computation gives -- never another exception or a silently
wrong hand selection. The checks run before TensorFlow is imported, so the command-line cases are quick.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _fuzz_helpers import (DEFAULT_EXAMPLES, PNG_FORMATS, corruptions, fuzz_variants, pixels_for, write_corrupted,
                           write_png)
from experiments import predict
from hsr_tf.geometry.camera import Camera

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck))
CAM = Camera.preset("nyu")


def blob_depth():
    """[480, 640] uint16 mm: a 'hand' disc of radius 60 px at 450-520 mm around (330, 250), the rest 0."""
    v, u = np.mgrid[0:480, 0:640]
    r2 = (u - 330.0) ** 2 + (v - 250.0) ** 2
    return np.where(r2 < 60 ** 2, 450.0 + 70.0 * r2 / 60 ** 2, 0.0).round().astype(np.uint16)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_predict")
    png = str(tmp / "depth.png")
    write_png(png, blob_depth(), 0, 16)
    return {"tmp": tmp, "png": png, "depth": blob_depth().astype(np.float64)}


ARRAYS = st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.bool_, np.int8, np.uint8, np.int32, np.uint16, np.float16, np.float32,
                                      np.float64, np.complex64]),
               shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5), elements=None),
    # mostly plausible depth maps (2-D, non-negative), with a NaN / Inf / negative value now and then
    hnp.arrays(dtype=st.sampled_from([np.uint16, np.int32]), shape=hnp.array_shapes(min_dims=2, max_dims=2,
               max_side=6), elements=st.integers(0, 2000)),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64]), shape=hnp.array_shapes(min_dims=2, max_dims=2,
               max_side=6),
               elements=st.one_of(st.integers(0, 2000), st.sampled_from([-1, float("nan"), float("inf")]))
               .map(float)))


def _check_npy(scene, arr, scale):
    path = str(scene["tmp"] / "d.npy")
    np.save(path, arr)
    try:
        d = predict.load_depth(path, scale)
    except predict.PredictInputError as e:
        assert (str(e).startswith(path) or str(e).startswith("--depth_scale")) and "expected" in str(e), e
        event("raised")
        return
    # accepted: exactly the input, 2-D, real, finite, non-negative, not all zero
    ref = np.asarray(arr).astype(np.float64) * scale
    assert arr.ndim == 2 and arr.dtype.kind in "iuf"
    np.testing.assert_array_equal(d, ref)
    assert np.all(np.isfinite(d)) and d.min() >= 0 and d.max() > 0
    event("accepted")


SCALES = st.sampled_from([1.0, 0.1, 0.0, -1.0, float("nan")])
test_npy_depth_of_any_dtype_and_rank, test_npy_depth_many = fuzz_variants(
    _check_npy, dict(arr=ARRAYS, scale=SCALES), dict(arr=ARRAYS, scale=SCALES))


@pytest.mark.parametrize("fmt", PNG_FORMATS, ids=[f[0] for f in PNG_FORMATS])
def test_png_mode_and_bit_depth(scene, fmt):
    """Only a 16-bit greyscale PNG is depth in mm; an 8-bit or colour PNG (e.g. a visualisation) is refused."""
    path = str(scene["tmp"] / f"{fmt[0].replace(';', '')}.png")
    write_png(path, pixels_for(fmt, 64, 48), fmt[1], fmt[2])
    if fmt[0] == "I;16":
        np.testing.assert_array_equal(predict.load_depth(path), pixels_for(fmt, 64, 48)[..., 0])
    else:
        with pytest.raises(predict.PredictInputError, match=f"^{path}: expected a 16-bit greyscale depth PNG.*"
                                                            f"found mode '{fmt[0]}'"):
            predict.load_depth(path)


@settings(max_examples=DEFAULT_EXAMPLES, **FUZZ)
@given(op=corruptions())
def test_damaged_png_raises(scene, op):
    path = str(scene["tmp"] / "damaged.png")
    original = open(scene["png"], "rb").read()
    if not write_corrupted(path, original, op) and op[0] == "flip":
        return
    with pytest.raises(predict.PredictInputError, match=f"^{path}: expected"):
        predict.load_depth(path)


def test_all_zero_and_non_finite_depth(scene):
    path = str(scene["tmp"] / "zero.png")
    write_png(path, np.zeros((480, 640), np.uint16), 0, 16)
    with pytest.raises(predict.PredictInputError, match=f"{path}: expected some valid depth.*all-zero"):
        predict.select_hand(path, "nyu", center=(330, 250, 480))
    bad = np.full((480, 640), 500.0)
    bad[3, 4] = np.nan
    npy = str(scene["tmp"] / "nan.npy")
    np.save(npy, bad)
    with pytest.raises(predict.PredictInputError, match=f"{npy}: expected finite depths .*found 1 NaN"):
        predict.load_depth(npy)


def _cube_points(depth, centre_uvd, cube):
    """Independent selection: every valid pixel whose back-projected point is within cube/2 of the centre on
    each axis (x = (u - cx) z / fx, y = (cy - v) z / fy)."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    pts = np.stack([(u - CAM.cx) * z / CAM.fx, (CAM.cy - v) * z / CAM.fy, z], axis=1)
    cu, cv, cd = centre_uvd
    c = np.array([(cu - CAM.cx) * cd / CAM.fx, (CAM.cy - cv) * cd / CAM.fy, cd])
    return pts[np.all(np.abs(pts - c) <= 0.5 * cube, axis=1)]


def _check_centre(scene, u, v, d, cube):
    try:
        _, _, pts = predict.select_hand(scene["png"], "nyu", center=(u, v, d), cube_size=cube)
    except predict.PredictInputError as e:
        msg = str(e)
        assert msg.startswith(("--center", "--cube_size", scene["png"])) and "expected" in msg, msg
        outside = not (0 <= u < 640 and 0 <= v < 480)
        assert not outside or msg.startswith("--center: expected a pixel inside"), msg
        event("raised: " + msg.split(":")[0].split("/")[-1])
        return
    ref = _cube_points(scene["depth"], (u, v, d), cube)
    assert len(pts) == len(ref) >= 1
    np.testing.assert_allclose(np.sort(pts, axis=0), np.sort(ref, axis=0), atol=1e-2)
    event("selected")


COORD = st.floats(-200, 900, allow_nan=False)
NEAR_U, NEAR_V, NEAR_D = st.floats(250, 410), st.floats(170, 330), st.floats(380, 620)  # around the blob


CENTRES = dict(u=st.one_of(NEAR_U, COORD), v=st.one_of(NEAR_V, COORD), d=st.one_of(NEAR_D, st.floats(-100, 2000)),
               cube=st.sampled_from([300.0, 100.0, 0.0, -5.0]))
test_centre_anywhere, test_centre_anywhere_many = fuzz_variants(_check_centre, CENTRES, CENTRES)


@settings(max_examples=DEFAULT_EXAMPLES, **FUZZ)
@given(box=st.one_of(st.tuples(COORD, COORD, COORD, COORD),
                     st.tuples(st.floats(200, 330), st.floats(150, 250), st.floats(330, 460), st.floats(250, 380))),
       dr=st.one_of(st.tuples(st.floats(-10, 800), st.floats(-10, 800)),
                    st.tuples(st.floats(300, 480), st.floats(480, 700))))
def test_crop_anywhere(scene, box, dr):
    crop = (*box, *dr)
    try:
        _, _, pts = predict.select_hand(scene["png"], "nyu", crop=crop)
    except predict.PredictInputError as e:
        assert str(e).startswith(("--crop", scene["png"])) and "expected" in str(e), e
        event("raised")
        return
    d = scene["depth"]
    u0, v0, u1, v1 = int(max(box[0], 0)), int(max(box[1], 0)), int(min(box[2], 640)), int(min(box[3], 480))
    sub = d[v0:v1, u0:u1]
    assert len(pts) == int(np.sum((sub > 0) & (sub >= dr[0]) & (sub <= dr[1]))) >= 1
    event("selected")


def test_camera_file_and_size_errors(scene):
    bad = str(scene["tmp"] / "cam.json")
    open(bad, "w").write(json.dumps({"fx": 500.0, "fy": 500.0}))
    with pytest.raises(predict.PredictInputError, match=f"--camera={bad}: expected a JSON file"):
        predict.select_hand(scene["png"], bad, center=(330, 250, 480))
    with pytest.raises(predict.PredictInputError, match="--camera: expected a preset name"):
        predict.select_hand(scene["png"], "kinect9", center=(330, 250, 480))
    with pytest.raises(predict.PredictInputError, match=r"expected a 320x240 image for camera 'icvl', found 640x480"):
        predict.select_hand(scene["png"], "icvl", center=(100, 100, 480))
    with pytest.raises(predict.PredictInputError, match="exactly one of --center"):
        predict.select_hand(scene["png"], "nyu")
    with pytest.raises(predict.PredictInputError, match="--center: expected 3 comma-separated finite"):
        predict.parse_floats("1,nan,3", 3, "center")


@pytest.mark.parametrize("case", ["8bit", "rgb", "zero", "outside"])
def test_command_line_refuses_before_loading_a_model(scene, case):
    """The program itself: a clear message and a non-zero exit, without ever needing the (absent) model."""
    png = str(scene["tmp"] / f"cli_{case}.png")
    if case == "8bit":
        write_png(png, np.full((480, 640), 200, np.uint8), 0, 8)
    elif case == "rgb":
        write_png(png, np.zeros((480, 640, 3), np.uint8), 2, 8)
    elif case == "zero":
        write_png(png, np.zeros((480, 640), np.uint16), 0, 16)
    else:
        png = scene["png"]
    centre = "700,250,480" if case == "outside" else "330,250,480"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-m", "experiments.predict", "--saved_model=/nonexistent", f"--depth={png}",
                          f"--center={centre}"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    expected = {"8bit": "found mode 'L'", "rgb": "found mode 'RGB'", "zero": "all-zero depth map",
                "outside": "--center: expected a pixel inside the 640x480 image"}[case]
    assert res.returncode != 0 and expected in res.stderr, res.stderr[-2000:]
    assert "tensorflow" not in res.stderr.lower()


def test_cube_on_one_side_of_the_optical_axis_keeps_every_point(scene):
    """Regression (found by test_centre_anywhere): a cube entirely above the optical axis. Its front face's
    projection missed the pixels that see its far face nearer the image centre; the window is now the bounding
    box of all 8 projected corners, so the selection equals the independent one."""
    _, _, pts = predict.select_hand(scene["png"], "nyu", center=(250.0, 0.0, 380.0), cube_size=300.0)
    assert len(pts) == len(_cube_points(scene["depth"], (250.0, 0.0, 380.0), 300.0)) == 3689
