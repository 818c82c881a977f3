"""Subprocess side of tests/test_rgb_distribute.py: an RGB phase on one device and mirrored over two logical CPUs.

  python tests/_rgb_dist_worker.py --out=R.npz --workdir=W [--sync_bn=0|1] [--steps=N]

Two logical CPU devices. The tiny RGB network of the tests (``experiments.rgb_common.build_model`` with the flags
of TINY, 64 px input) is built and trained for N steps of phase 3 (end to end, L_fully, the pose regressor
frozen: ``rgb_common.train_phase``) twice with the same global batch and the same initial weights: under the
default strategy (one device) and under MirroredStrategy over /cpu:0 and /cpu:1 (2 replicas, per-replica batch
2). The strategy reaches the program code the way --distribution does, through ``common.distribution_strategy``
(its per-process cache is set here: MirroredStrategy() on a machine without GPUs takes the CPU as ONE device).
Saves both weight sets, the losses and whether the two builds drew the same initial weights.

Batches are synthetic (no rendering): the reader's fields and shapes (hsr_tf/data/rgb_reader.py) with random
images and heat-maps, meshes of 1305 random points 500 mm in front of the camera. Legend: B global batch (4).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

BATCH, FRAMES = 4, 8  # 2 steps per epoch
TINY = ('{"filters": 8, "num_residual": 1, "gcn_fc": 16, "gcn_features": [8, 8], "regressor_features": [4, 8], '
        '"regressor_hidden": 16, "mlp_hidden": 16}')


def flags_for(workdir, steps, sync_bn):
    return ["prog", f"--workdir={workdir}", f"--rgb_network={TINY}", "--image_size=64", "--heatmap_sigma=2",
            f"--batch_size={BATCH}", "--learning_rate=1e-3", "--lr_decay=1.0", "--noprogress", "--seed=0",
            "--summary_every=1", "--eval_every=0", "--visual_every=0", f"--checkpoint_every={steps}",
            f"--phase3_steps={steps}", "--noaugment", "--sync_batchnorm" if sync_bn else "--nosync_batchnorm"]


def make_data(num_vertices, num_joints=21, size=64, seed=5):
    """``epoch -> dataset`` of global batches with the reader's fields (deterministic in epoch)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n, h = FRAMES, size // 4
    verts = rng.normal(scale=30.0, size=(n, num_vertices, 3)).astype(np.float32) + np.float32([0, 0, 500])
    joints = verts[:, :num_joints] * np.float32(0.9)
    camera = np.tile(np.float32([[90.0, 90.0, 31.5, 31.5]]), (n, 1))
    uv = joints[..., :2] / joints[..., 2:] * camera[:, None, :2] + camera[:, None, 2:]
    data = {"image": rng.uniform(size=(n, size, size, 3)).astype(np.float32),
            "mask": (rng.uniform(size=(n, size, size)) > 0.5).astype(np.float32),
            "depth": rng.uniform(480, 520, size=(n, size, size)).astype(np.float32),
            "heatmaps": rng.uniform(size=(n, h, h, num_joints)).astype(np.float32),
            "joints": joints, "joints_uv": uv.astype(np.float32), "camera": camera, "vertices": verts,
            "has_vertices": np.ones(n, np.float32), "bone_scale": np.full(n, 30.0, np.float32),
            "root_depth": joints[:, 0, 2].copy(), "mirrored": np.zeros(n, np.float32),
            "frame_id": np.arange(n, dtype=np.int64)}

    def dataset_fn(epoch):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n)
        return tf.data.Dataset.from_tensor_slices({k: v[order] for k, v in data.items()}).batch(
            BATCH, drop_remainder=True)

    return dataset_fn


def train(strategy, workdir, steps, sync_bn, init=None):
    import keras
    from absl import flags

    from experiments import common, rgb_common

    flags.FLAGS.unparse_flags()
    flags.FLAGS(flags_for(workdir, steps, sync_bn))
    common._STRATEGY.clear()
    common._STRATEGY["strategy"] = strategy  # what common.distribution_strategy() returns from now on
    keras.utils.set_random_seed(0)
    net = rgb_common.build_model()  # under the strategy's scope
    initial = [v.numpy() for v in net.variables]
    if init is not None:
        for v, w in zip(net.variables, init):
            v.assign(w)
    model, key, variables_fn = rgb_common.phase_model(net, 3)
    nv = int(net(net.example_input(1), training=False)["vertices"].shape[1])
    res = rgb_common.train_phase(model, rgb_common.build_loss(net, 3), make_data(nv), workdir, steps, FRAMES // BATCH,
                                 key, variables_fn=variables_fn)
    return net, res, initial


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sync_bn", type=int, default=1)
    args = parser.parse_args()
    import tensorflow as tf

    from hsr_tf.train import distribute

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    single = tf.distribute.get_strategy()
    ref, ref_res, init = train(single, os.path.join(args.workdir, "single"), args.steps, bool(args.sync_bn))
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    dist, dist_res, dist_init = train(mirrored, os.path.join(args.workdir, "mirrored"), args.steps,
                                      bool(args.sync_bn), init=init)
    same_init = all(np.array_equal(a, b) for a, b in zip(init, dist_init))
    synced = sum(1 for layer in dist._flatten_layers() if getattr(layer, "synchronized", False))
    np.savez(args.out, replicas=mirrored.num_replicas_in_sync, same_init=same_init, synced_bn=synced,
             steps=[ref_res["step"], dist_res["step"]],
             **{f"single_{i}": v.numpy() for i, v in enumerate(ref.variables)},
             **{f"mirrored_{i}": v.numpy() for i, v in enumerate(dist.variables)},
             **{f"init_{i}": w for i, w in enumerate(init)},
             single_loss=[h["loss"] for h in ref_res["history"]],
             mirrored_loss=[h["loss"] for h in dist_res["history"]])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
