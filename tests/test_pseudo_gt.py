"""hsr_tf.train.pseudo_gt: the ground-truth heat-map hook, resumable per-shard files, and the rotation that moves
stored meshes into the reader's augmented frame."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.data import rgb_reader
from hsr_tf.data import rgb_shards as rs
from hsr_tf.hand_model.skeleton import JOINT_NAMES
from hsr_tf.models.rgb_mesh_net import RGBMeshNet
from hsr_tf.train import pseudo_gt

S = 64
SMALL = dict(image_size=S, filters=8, num_residual=1, gcn_fc=16, gcn_features=(8, 8), regressor_features=(4, 8),
             regressor_hidden=16, mlp_hidden=16)


def _write_shard(path, num, seed, first_id):
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 30, (num, 21, 3))
    joints[..., 2] += 500.0
    cam = np.tile([[240.0, 250.0, 31.5, 31.0]], (num, 1)) + rng.normal(0, 2, (num, 4))
    verts = rng.normal(0, 30, (num, 1305, 3)) + [0, 0, 500.0]
    rs.write_rgb_shard(path, {
        "image": rng.integers(0, 256, (num, S, S, 3)), "mask": rng.integers(0, 256, (num, S, S)),
        "depth": rng.integers(0, 2000, (num, S, S)), "joints": joints, "joints_uv": rs.project(joints, cam),
        "camera": cam, "bone_scale": np.linalg.norm(joints[:, 9] - joints[:, 10], axis=-1),
        "root_depth": joints[:, 0, 2], "mirrored": np.zeros(num, np.uint8), "frame_index": first_id + np.arange(num),
        "vertices": verts}, {"dataset": "unit", "split": "train", "image_size": S, "joint_names": list(JOINT_NAMES)})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pgt"))
    _write_shard(os.path.join(d, "train-00000.h5"), 5, 0, 100)
    _write_shard(os.path.join(d, "train-00001.h5"), 3, 1, 200)
    return d


def test_augmentation_rotation_recovers_the_readers_crop_rotation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        cam = tf.constant([260.0, 230.0, 30.0, 33.0])
        scale, rot = rng.uniform(0.9, 1.1), rng.uniform(-0.5, 0.5)
        new_cam, r3, _, fwd = rgb_reader.crop_transform(cam, 64, 48, tf.constant(scale, tf.float32),
                                                        tf.constant(rot, tf.float32), tf.constant([2.0, -3.0]))
        uv = rng.uniform(0, 64, (21, 2)).astype(np.float32)
        out = np.concatenate([uv, np.ones((21, 1), np.float32)], -1) @ fwd.numpy().T
        got = pseudo_gt.augmentation_rotation(uv[None], cam[None], out[None], new_cam[None]).numpy()[0]
        np.testing.assert_allclose(got, r3.numpy(), atol=1e-4)
        assert abs(math.atan2(got[1, 0], got[0, 0]) - rot) < 1e-4


def test_predict_with_heatmaps_reproduces_the_network_with_its_own_heatmaps():
    net = RGBMeshNet("mesh", **SMALL)
    x = net.example_input(2)
    x["image"] = tf.random.stateless_uniform([2, S, S, 3], [1, 2])
    out = net(x)
    same = pseudo_gt.predict_with_heatmaps(net, x, out["heatmaps"])
    np.testing.assert_allclose(same["vertices"].numpy(), out["vertices"].numpy(), rtol=1e-5, atol=1e-3)
    other = pseudo_gt.predict_with_heatmaps(net, x, out["heatmaps"] + 1.0)
    assert np.abs(other["vertices"].numpy() - out["vertices"].numpy()).max() > 1e-3
    with pytest.raises(ValueError, match="heatmaps"):
        pseudo_gt.predict_with_heatmaps(net, x, tf.zeros([2, 8, 8, 21]))
    with pytest.raises(ValueError, match="variant"):
        pseudo_gt.predict_with_heatmaps(RGBMeshNet("baseline1", **SMALL), x, out["heatmaps"])


@pytest.mark.slow  # ~70 s on the shared 2 cores (seven tf.data pipelines)
def test_generate_is_per_shard_atomic_and_resumable_and_attach_rotates(shards):
    net = RGBMeshNet("mesh", **SMALL)
    net(net.example_input(1))
    with pytest.raises(pseudo_gt.PseudoGTError, match="data_prep.pseudo_gt"):
        pseudo_gt.load(shards, "train", "t")
    first = pseudo_gt.generate(net, shards, "train", "t", batch_size=2, log=lambda *_: None)
    assert first == {"written": ["train-00000.h5", "train-00001.h5"], "skipped": []}
    out_dir = pseudo_gt.output_dir(shards, "t")
    assert sorted(os.listdir(out_dir)) == ["train-00000.h5", "train-00001.h5"]  # no .tmp left
    assert rs.list_rgb_shards(shards, "train") == [os.path.join(shards, f"train-0000{i}.h5") for i in (0, 1)]
    # an interrupted write leaves only a .tmp and an incomplete file: both are redone, finished ones skipped
    os.remove(os.path.join(out_dir, "train-00001.h5"))
    with open(os.path.join(out_dir, "train-00001.h5.tmp"), "wb") as f:
        f.write(b"partial")
    again = pseudo_gt.generate(net, shards, "train", "t", batch_size=2, log=lambda *_: None)
    assert again == {"written": ["train-00001.h5"], "skipped": ["train-00000.h5"]}
    loaded = pseudo_gt.load(shards, "train", "t")
    np.testing.assert_array_equal(loaded["frame_index"], [100, 101, 102, 103, 104, 200, 201, 202])
    # the stored meshes are the network's output on the unaugmented crops with ground-truth heat-maps
    want = []
    for name in ("train-00000.h5", "train-00001.h5"):  # one reader per shard, as generate (same backgrounds)
        b = next(iter(rgb_reader.make_rgb_dataset(os.path.join(shards, name), "train", 8, image_size=S,
                                                  augment=False, shuffle=False, seed=0, heatmap_size=16,
                                                  heatmap_sigma=1.0)))
        want.append(pseudo_gt.predict_with_heatmaps(net, b, b["heatmaps"])["vertices"].numpy())
    want = np.concatenate(want)
    np.testing.assert_allclose(loaded["vertices"], want, rtol=1e-5, atol=1e-2)
    # attach: with the shards' ground-truth meshes as "pseudo-GT", augmented batches must get exactly the
    # reader's own rotated vertices; an unknown frame gets has_pseudo = 0
    gt = {k: v for k, v in rs.read_rgb_shard(os.path.join(shards, "train-00000.h5"))[0].items()
          if k in ("frame_index", "vertices", "joints_uv", "camera")}
    aug = rgb_reader.make_rgb_dataset(shards, "train", 8, image_size=48, augment=True, seed=3, heatmap_size=12)
    b = next(iter(pseudo_gt.attach(aug, gt)))
    has = b["has_pseudo"].numpy()
    assert has.sum() == 5 and set(b["frame_id"].numpy()[has > 0]) == {100, 101, 102, 103, 104}
    np.testing.assert_allclose(b["pseudo_vertices"].numpy()[has > 0], b["vertices"].numpy()[has > 0], atol=0.05)
    assert np.all(b["pseudo_vertices"].numpy()[has == 0] == 0)
