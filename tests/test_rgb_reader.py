"""RGB reader: augmented projection consistency, heat-map peaks, (seed, epoch) determinism, malformed shards
(slow: a rendered fixture and tf.data pipelines), and the colour jitter's affine map (fast)."""
import h5py
import numpy as np
import pytest

from data_prep.synth_rgb import dataset, raster
from hsr_tf.data import rgb_reader, rgb_shards

# the pipeline tests take ~150 s on the shared 2-core machine (a render, tf.data graph building): -m slow
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rgb"))
    cfg = dataset.RGBDatasetConfig(num_subjects=2, poses_per_subject=3, views_per_pose=1, frames_per_shard=8,
                                   test_fraction=0.5, frame=raster.RGBFrameConfig(image_size=48))
    dataset.generate(out, cfg, num_workers=1, progress=False, log=lambda *_: None)
    return out


def _batch(shard_dir, **kw):
    ds = rgb_reader.make_rgb_dataset(shard_dir, "train", 3, image_size=64, **kw)
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


@slow
def test_augmented_projection_heatmaps_and_mask(shard_dir):
    b = _batch(shard_dir, augment=True, seed=1)
    assert b["image"].shape == (3, 64, 64, 3) and b["heatmaps"].shape == (3, 64, 64, 21)
    np.testing.assert_allclose(rgb_shards.project(b["joints"], b["camera"]), b["joints_uv"], atol=0.02)
    np.testing.assert_allclose(rgb_shards.project(b["vertices"], b["camera"]).shape, (3, 1305, 2))
    # the warped mask covers the projected vertices (image and targets moved together)
    vuv = np.round(rgb_shards.project(b["vertices"], b["camera"])).astype(int)
    for i in range(3):
        ok = (vuv[i] >= 0).all(-1) & (vuv[i] < 64).all(-1)
        assert (b["mask"][i][vuv[i][ok, 1], vuv[i][ok, 0]] > 0).mean() > 0.9
    # heat-map peak at the joint's uv (64 x 64 here, image 64: same pixels)
    for i, j in ((0, 0), (1, 9), (2, 4)):
        u, v = b["joints_uv"][i, j]
        if 2 < u < 61 and 2 < v < 61:
            r, c = np.unravel_index(np.argmax(b["heatmaps"][i, :, :, j]), (64, 64))
            assert abs(c - u) <= 0.5 + 1e-3 and abs(r - v) <= 0.5 + 1e-3
    assert b["image"].min() >= 0 and b["image"].max() <= 1 and b["has_vertices"].tolist() == [1, 1, 1]
    # 3-D rotation about the optical axis: depth of the joints unchanged
    plain = _batch(shard_dir, augment=False, shuffle=False)
    assert np.all(plain["root_depth"] > 0)


@slow
def test_determinism_per_seed_and_epoch(shard_dir):
    a = _batch(shard_dir, seed=3, epoch=1)
    b = _batch(shard_dir, seed=3, epoch=1)
    c = _batch(shard_dir, seed=3, epoch=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"])


@slow
def test_malformed_shard_raises(shard_dir, tmp_path):
    src = rgb_shards.list_rgb_shards(shard_dir, "train")[0]
    bad = str(tmp_path / "train-00000.h5")
    with open(src, "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    with h5py.File(bad, "a") as f:
        del f["camera"]
    with pytest.raises(rgb_shards.RGBShardError, match="field 'camera'"):
        rgb_reader.make_rgb_dataset(str(tmp_path), "train", 2)
    with pytest.raises(rgb_shards.RGBShardError, match="found none"):
        rgb_reader.make_rgb_dataset(str(tmp_path), "test", 2)


# -- colour jitter (fast: no pipeline) ---------------------------------------------------------------------------
def test_colour_matrix_identity_and_hue_turns():
    import tensorflow as tf

    m, o = rgb_reader.colour_matrix(1.0, 1.0, 1.0, 0.0, tf.constant([0.3, 0.5, 0.7]))
    np.testing.assert_allclose(m.numpy(), np.eye(3), atol=1e-6)
    np.testing.assert_allclose(o.numpy(), 0.0, atol=1e-7)
    # a third of a turn sends red -> green -> blue -> red, as TF's HSV hue shift does (independent code)
    m, _ = rgb_reader.colour_matrix(1.0, 1.0, 1.0, 1.0 / 3.0, tf.zeros([3]))
    prim = np.eye(3, dtype=np.float32)
    ours = prim @ m.numpy().T
    hsv = tf.image.adjust_hue(tf.constant(prim[None]), 1.0 / 3.0).numpy()[0]
    np.testing.assert_allclose(ours, hsv, atol=1e-6)
    np.testing.assert_allclose(ours, prim[[1, 2, 0]], atol=1e-6)
    # any hue turn keeps greys grey
    m, _ = rgb_reader.colour_matrix(1.0, 1.0, 1.0, 0.137, tf.zeros([3]))
    np.testing.assert_allclose(m.numpy() @ np.full(3, 0.4), np.full(3, 0.4), atol=1e-6)


def test_colour_matrix_saturation_brightness_contrast_against_pil():
    import tensorflow as tf
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = img.astype(np.float32) / 255.0
    # saturation s: PIL's ImageEnhance.Color blends with its own luma image (L = 299 R + 587 G + 114 B)
    m, o = rgb_reader.colour_matrix(1.0, 1.0, 0.4, 0.0, tf.constant(x.mean((0, 1))))
    ref = np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(0.4), np.float32) / 255.0
    np.testing.assert_allclose(x @ m.numpy().T + o.numpy(), ref, atol=2.5 / 255)
    # brightness b then contrast c about the mean colour: the mean becomes b * mean, deviations scale by b c
    b, c = 1.15, 0.8
    m, o = rgb_reader.colour_matrix(b, c, 1.0, 0.0, tf.constant(x.mean((0, 1))))
    y = x @ m.numpy().T + o.numpy()
    np.testing.assert_allclose(y.mean((0, 1)), b * x.mean((0, 1)), atol=1e-5)
    np.testing.assert_allclose(y - y.mean((0, 1)), b * c * (x - x.mean((0, 1))), atol=1e-5)
