"""Subprocess side of tests/test_distribute.py: training runs under tf.distribute strategies.

  python tests/_dist_worker.py logical --out=R.npz --workdir=W [--sync_bn=0|1] [--steps=N]
      two logical CPU devices; trains the same model from the same initial weights twice, on one device
      (default strategy) and mirrored over both, with the same global batch; saves both weight sets.
  python tests/_dist_worker.py multi --out=R.npz --workdir=W --steps=N [--stop_after=K]
      one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by the caller); saves this worker's
      final weights, the steps it trained and whether it is the chief.

The model has a PointNet++ set-abstraction level (custom ops farthest_point_sample, ball_query, group_points
and a BatchNorm) so the custom ops run inside each replica. Legend: B global batch (8), N points (16).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

N_FRAMES, BATCH, N_PTS = 48, 8, 16  # 6 steps per epoch


def make_model_cls():
    import keras
    import tensorflow as tf

    from hsr_tf.layers.set_abstraction import SetAbstraction

    class DistNet(keras.Model):
        """points [B, N, 3] -> {"joints": [B, 2, 3]}: set abstraction (4 centroids, 4 neighbours, BN), head."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.sa = SetAbstraction(npoint=4, radius=0.9, nsample=4, mlp=[8])
            self.head = keras.layers.Dense(6)

        def call(self, points, training=False):
            _, feat = self.sa(points, None, training=training)
            return {"joints": tf.reshape(self.head(tf.reduce_max(feat, axis=1)), [-1, 2, 3])}

    return DistNet


def make_data(seed=7):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    points = rng.normal(size=(N_FRAMES, N_PTS, 3)).astype(np.float32)
    joints = points[:, :2, :] * 0.5 + 0.1
    ids = np.arange(N_FRAMES, dtype=np.int64)

    def dataset_fn(epoch):
        ds = tf.data.Dataset.from_tensor_slices({"points": points, "joints": joints, "frame_id": ids})
        ds = ds.shuffle(N_FRAMES, seed=seed * 1000 + epoch, reshuffle_each_iteration=False)
        return ds.batch(BATCH, drop_remainder=True)

    return dataset_fn


def loss_fn(batch, outputs, epoch):
    import tensorflow as tf

    err = tf.reduce_mean(tf.reduce_sum((outputs["joints"] - batch["joints"]) ** 2, -1))
    return err, {"joint": err}


def train(strategy, workdir, steps, sync_bn=True, stop_after=None, init=None):
    import keras

    from hsr_tf.train import loop

    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = make_model_cls()()
        model(np.zeros((1, N_PTS, 3), np.float32))
        if init is not None:  # the same initial weights as another run
            for v, w in zip(model.variables, init):
                v.assign(w)
    initial = [v.numpy() for v in model.variables]
    cfg = loop.TrainConfig(workdir=workdir, steps_per_epoch=N_FRAMES // BATCH, num_epochs=10, max_steps=steps,
                           checkpoint_every=4, summary_every=2, progress=False, learning_rate=1e-2,
                           batch_size=BATCH, lr_decay_samples=10_000, sync_batchnorm=sync_bn)
    trainer = loop.Trainer(model, loss_fn, make_data(), cfg, seed=3, strategy=strategy)
    out = trainer.train(stop_after=stop_after)
    return trainer, out, initial


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["logical", "multi"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sync_bn", type=int, default=1)
    parser.add_argument("--stop_after", type=int, default=0)
    args = parser.parse_args()
    import tensorflow as tf

    from hsr_tf import ops
    from hsr_tf.train import distribute

    if args.mode == "logical":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        single = tf.distribute.get_strategy()
        ref, _, init = train(single, os.path.join(args.workdir, "single"), args.steps, bool(args.sync_bn))
        mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
        dist, _, _ = train(mirrored, os.path.join(args.workdir, "mirrored"), args.steps, bool(args.sync_bn),
                           init=init)
        np.savez(args.out, backend=ops.backend(), replicas=mirrored.num_replicas_in_sync,
                 **{f"single_{i}": v.numpy() for i, v in enumerate(ref.model.variables)},
                 **{f"mirrored_{i}": v.numpy() for i, v in enumerate(dist.model.variables)},
                 single_loss=[h["loss"] for h in ref.history], mirrored_loss=[h["loss"] for h in dist.history])
        return
    strategy = distribute.make_strategy("multi_worker")  # first: it configures the collective runtime
    info = distribute.worker_info(strategy)
    trainer, out, _ = train(strategy, args.workdir, args.steps, stop_after=args.stop_after or None)
    np.savez(args.out, backend=ops.backend(), is_chief=info["is_chief"], replicas=strategy.num_replicas_in_sync,
             steps=[h["step"] for h in trainer.history], final_step=out["step"],
             **{f"w_{i}": v.numpy() for i, v in enumerate(trainer.model.variables)})


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
