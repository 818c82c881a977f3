"""Bad input at the SavedModel signatures (issue 15 section 3), depth and RGB, through the loaded signature as a
TensorFlow-only user calls it: wrong rank, wrong size, batch sizes that disagree, NaN/Inf, non-positive focal
length / depth / scale, degenerate clouds, huge values, wrong dtypes, empty batches.

Property: every call either returns outputs of the right shapes, all finite, or raises an error whose message
names the corrupted input (or, for overflowing values, the output) and says what was expected. Empty batches
return empty outputs. Hypothesis draws the corruptions; the counts of what was tried are printed (pytest -s)."""
import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsr_tf import export as export_lib
from tests.test_export import FACES, N_PTS, TinyMeshNet
from tests.test_export_rgb import small_net

TRIED = collections.Counter()
S = 256
RGB_KEYS = ("image", "camera", "root_depth", "bone_scale", "is_left")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def depth_sigs(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = TinyMeshNet()
    model(np.zeros((1, N_PTS, 3), np.float32))
    sigs = {}
    for mode in ("fixed", "max_dist"):
        d = str(tmp_path_factory.mktemp("depth") / mode)
        export_lib.export_saved_model(model, d, FACES, num_points=N_PTS, scale_mode=mode)
        sigs[mode] = tf.saved_model.load(d).signatures["serving_default"]
    return sigs


@pytest.fixture(scope="module")
def rgb_sig(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rgb") / "sm")
    export_lib.export_rgb_saved_model(small_net(seed=6), d)
    return tf.saved_model.load(d).signatures["serving_default"]


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nSavedModel signature fuzzing, inputs tried per (signature, corruption):")
    for key, n in sorted(TRIED.items()):
        print(f"  {key[0]:6s} {key[1]:24s} {n}")
    for sig in ("depth", "rgb"):
        print(f"  {sig}: {sum(n for k, n in TRIED.items() if k[0] == sig)} calls in total")


def _messages(err):
    return str(err).replace("\n", " ")


def _expect_refusal(call, names):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
        call()
    msg = _messages(info.value)
    assert any(n in msg for n in names) and "expected" in msg, msg[:600]


# ------------------------------------------------------------------------------------------ depth
def _cloud(rng, b, n=N_PTS):
    return (rng.normal(size=(b, n, 3)) * [30, 40, 15] + [50, -20, 400]).astype(np.float32)


DEPTH_CASES = ("valid", "empty", "rank_more", "rank_less", "num_points", "last_dim", "nan", "inf", "huge",
               "degenerate", "dtype")


@settings(max_examples=15, **SETTINGS)
@given(case=st.sampled_from(DEPTH_CASES), mode=st.sampled_from(("fixed", "max_dist")), b=st.integers(1, 3),
       seed=st.integers(0, 2 ** 31 - 1), where=st.integers(0, 10 ** 6))
def test_depth_signature_fuzzed(depth_sigs, case, mode, b, seed, where):
    check_depth(depth_sigs, case, mode, b, seed, where)


def test_depth_signature_every_case(depth_sigs):
    for k, (case, mode) in enumerate((c, m) for c in DEPTH_CASES for m in ("fixed", "max_dist")):
        check_depth(depth_sigs, case, mode, 1 + k % 3, k, 7919 * k)


def check_depth(depth_sigs, case, mode, b, seed, where):
    TRIED[("depth", f"{case}:{mode}")] += 1
    sig = depth_sigs[mode]
    rng = np.random.default_rng(seed)
    pts = _cloud(rng, b)
    i, j = where % b, where % N_PTS
    if case == "empty":
        pts = pts[:0]
    elif case == "rank_more":
        pts = pts[..., None]
    elif case == "rank_less":
        pts = pts[0]
    elif case == "num_points":
        pts = _cloud(rng, b, N_PTS + (1 if where % 2 else -1))
    elif case == "last_dim":
        pts = np.concatenate([pts, pts[..., :1]], -1)
    elif case in ("nan", "inf"):
        pts[i, j, where % 3] = np.nan if case == "nan" else -np.inf
    elif case == "huge":
        pts = pts * np.float32(10.0 ** (10 + where % 29))
    elif case == "degenerate":
        pts[:] = pts[:, :1]
    x = tf.constant(pts, tf.float64 if case == "dtype" else tf.float32)
    call = lambda: sig(points=x)  # noqa: E731
    if case in ("valid", "empty") or (case == "degenerate" and mode == "fixed"):
        out = call()
        bb = 0 if case == "empty" else b
        assert out["vertices"].shape == (bb, 10, 3) and out["dataset_joints"].shape == (bb, 14, 3)
        assert all(np.all(np.isfinite(v.numpy())) for v in out.values())
    elif case == "dtype":
        _expect_refusal(call, ["expected to be a float tensor"])
    elif case == "huge":  # refused (naming points, or the output that overflowed) or finite
        try:
            out = call()
        except tf.errors.InvalidArgumentError as e:
            assert "points" in str(e) or "finite outputs" in str(e), str(e)[:600]
        else:
            assert all(np.all(np.isfinite(v.numpy())) for v in out.values())
    else:
        _expect_refusal(call, ["points"])


# ------------------------------------------------------------------------------------------ RGB
def _rgb_inputs(rng, b):
    return {"image": rng.integers(0, 256, (b, S, S, 3), dtype=np.uint8),
            "camera": np.stack([rng.uniform(200, 600, b), rng.uniform(200, 600, b), rng.uniform(60, 200, b),
                                rng.uniform(60, 200, b)], -1).astype(np.float32),
            "root_depth": rng.uniform(300, 900, b).astype(np.float32),
            "bone_scale": rng.uniform(20, 40, b).astype(np.float32),
            "is_left": rng.integers(0, 2, b).astype(bool)}


RGB_CASES = ("valid", "empty", "rank_more", "rank_less", "size", "batch", "nan", "inf", "non_positive", "huge",
             "dtype")


@settings(max_examples=12, **SETTINGS)
@given(case=st.sampled_from(RGB_CASES), target=st.sampled_from(RGB_KEYS), b=st.integers(1, 2),
       seed=st.integers(0, 2 ** 31 - 1), where=st.integers(0, 10 ** 6))
def test_rgb_signature_fuzzed(rgb_sig, case, target, b, seed, where):
    check_rgb(rgb_sig, case, target, b, seed, where)


def test_rgb_signature_every_case(rgb_sig):
    for k, (case, target) in enumerate((c, t) for c in RGB_CASES for t in RGB_KEYS):
        check_rgb(rgb_sig, case, target, 1 + k % 2, k, 7919 * k)


def check_rgb(rgb_sig, case, target, b, seed, where):
    rng = np.random.default_rng(seed)
    x = _rgb_inputs(rng, b)
    v = x[target]
    floats = target in ("camera", "root_depth", "bone_scale")
    if case in ("nan", "inf", "non_positive", "huge") and not floats:
        case = "valid"  # uint8 / bool inputs cannot hold these values
    TRIED[("rgb", case if case in ("valid", "empty") else f"{case}:{target}")] += 1
    i = where % b
    if case == "empty":
        x = {k: a[:0] for k, a in x.items()}
    elif case == "rank_more":
        x[target] = v[..., None]
    elif case == "rank_less":
        x[target] = v[0] if v.ndim == 1 else v[:, 0]
    elif case == "size":
        x[target] = v[:, :-1] if v.ndim > 1 else np.concatenate([v, v])  # [B] inputs: wrong length
    elif case == "batch":
        x[target] = np.concatenate([v, v[:1]])
    elif case in ("nan", "inf"):
        v.reshape(b, -1)[i, where % (v.size // b)] = np.nan if case == "nan" else np.inf
    elif case == "non_positive":
        v.reshape(b, -1)[i, where % (2 if target == "camera" else 1)] = -float(where % 3)
    elif case == "huge":
        v.reshape(b, -1)[i, 0] = 1e30 if target != "camera" else 1e-30
    tensors = {k: tf.constant(a) for k, a in x.items()}
    if case == "dtype":
        tensors[target] = tf.cast(tensors[target], tf.float64 if target != "image" else tf.float32)
    call = lambda: rgb_sig(**tensors)  # noqa: E731
    if case in ("valid", "empty"):
        out = call()
        bb = 0 if case == "empty" else b
        assert out["vertices"].shape == (bb, 1305, 3) and out["heatmaps"].shape == (bb, 64, 64, 21)
        assert out["joints_uv"].shape == (bb, 21, 2)
        assert all(np.all(np.isfinite(t.numpy())) for t in out.values())
    elif case == "dtype":
        _expect_refusal(call, ["was expected to be a"])
    elif case == "huge":
        try:
            out = call()
        except tf.errors.InvalidArgumentError as e:
            assert "finite outputs" in str(e), str(e)[:600]
        else:
            assert all(np.all(np.isfinite(t.numpy())) for t in out.values())
    else:  # a batch that disagrees is reported on the input that differs from the image (or on the image's)
        _expect_refusal(call, [target] + (["batch size B of image"] if case == "batch" else []))


def test_numpy_float_image_is_cast_by_tensorflow_but_refused_by_the_helper(tmp_path):
    """TensorFlow converts a NumPy float image to the signature's uint8 before the graph sees it (0.5 -> 0):
    nothing inside the SavedModel can see that; LoadedRGBModel refuses it."""
    d = str(tmp_path / "sm")
    export_lib.export_rgb_saved_model(small_net(seed=6), d)
    x = _rgb_inputs(np.random.default_rng(0), 1)
    sig = tf.saved_model.load(d).signatures["serving_default"]
    half = np.full((1, S, S, 3), 0.5, np.float32)
    a = sig(**{**x, "image": half})["vertices"].numpy()
    b = sig(**{**x, "image": np.zeros((1, S, S, 3), np.uint8)})["vertices"].numpy()
    np.testing.assert_array_equal(a, b)  # the documented TensorFlow behaviour this test pins down
    with pytest.raises(ValueError, match="image: expected RGB crops of dtype uint8, found float32"):
        export_lib.LoadedRGBModel(d)(**{**x, "image": half})


@pytest.mark.slow
def test_shipped_depth_model_empty_batch_and_nan(tmp_path):
    """The real HandShapeNet (shipped weights, fallback ops): B = 0 crashed the graph before (an integer
    division by the batch in the set abstraction); now it returns empty outputs, and B = 2 still matches the
    Keras model on NumPy-normalised points."""
    from hsr_tf import ops, pretrained
    from hsr_tf.geometry import pointcloud

    model = pretrained.load("depth")
    d = str(tmp_path / "sm")
    with ops.use_backend("fallback"):
        export_lib.export_saved_model(model, d, model.faces, num_points=1024)
    sig = tf.saved_model.load(d).signatures["serving_default"]
    out = sig(points=tf.zeros([0, 1024, 3]))
    assert out["vertices"].shape == (0, 1305, 3) and out["dataset_joints"].shape[0] == 0
    pts = _cloud(np.random.default_rng(2), 2, 1024)
    got = sig(points=tf.constant(pts))
    for b in range(2):
        norm = pointcloud.compute_normalization(pts[b], center_mode="mean", scale_mode="fixed", fixed_scale=150.0)
        ref = model(norm.apply(pts[b])[None].astype(np.float32), training=False)
        np.testing.assert_allclose(got["vertices"][b].numpy(), norm.invert(ref["vertices"][0].numpy()), atol=0.05)
    pts[1, 5, 2] = np.nan
    _expect_refusal(lambda: sig(points=tf.constant(pts)), ["points"])
