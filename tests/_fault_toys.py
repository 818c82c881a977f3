"""A tiny model, data and trainer for the fault and logging tests (also run as a subprocess).

  python tests/_fault_toys.py WORKDIR TOTAL_STEPS   trains (resuming) with checkpoints every 2 steps
      (HSR_TF_TEST_CHECKPOINT_EVERY overrides); the environment may carry HSR_TF_FAULT
      (hsr_tf.train.checkpoints) to kill it at a point of a save.

Legend: B batch (8), N points (16); 48 frames, 6 steps per epoch.
"""
from __future__ import annotations

import os
import sys

import numpy as np

N_FRAMES, BATCH, N_PTS = 48, 8, 16
STEPS_PER_EPOCH = N_FRAMES // BATCH


def make_data(seed=7, nan_frame=None, nan_epochs=()):
    """``fn(epoch)`` -> shuffled batches {points [B,N,3], joints [B,2,3], frame_id [B] int64}, deterministic in
    (seed, epoch). ``nan_frame``: that frame's joints are NaN in the epochs listed in ``nan_epochs``."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    points = rng.normal(size=(N_FRAMES, N_PTS, 3)).astype(np.float32)
    joints = points[:, :2, :] * 0.5 + 0.1
    poisoned = joints.copy()
    if nan_frame is not None:
        poisoned[nan_frame] = np.nan
    ids = np.arange(N_FRAMES, dtype=np.int64)

    def dataset_fn(epoch):
        data = poisoned if epoch in nan_epochs else joints
        ds = tf.data.Dataset.from_tensor_slices({"points": points, "joints": data, "frame_id": ids})
        ds = ds.shuffle(N_FRAMES, seed=seed * 1000 + epoch, reshuffle_each_iteration=False)
        return ds.batch(BATCH, drop_remainder=True)

    return dataset_fn


def make_model():
    import keras
    import tensorflow as tf

    class TinyNet(keras.Model):
        """points [B, N, 3] -> {"joints": [B, 2, 3]} through a per-point MLP and max pooling."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = keras.layers.Dense(8, activation="relu")
            self.d2 = keras.layers.Dense(6)

        def call(self, points, training=False):
            return {"joints": tf.reshape(self.d2(tf.reduce_max(self.d1(points), axis=1)), [-1, 2, 3])}

    return TinyNet()


def loss_fn(batch, outputs, epoch):
    import tensorflow as tf

    err = tf.reduce_mean(tf.reduce_sum((outputs["joints"] - batch["joints"]) ** 2, -1))
    fp = tf.reduce_sum(tf.cast(batch["frame_id"], tf.float32) * tf.range(1.0, BATCH + 1.0))
    return err, {"joint": err, "batch_fingerprint": tf.stop_gradient(fp)}


def make_trainer(workdir, total_steps, checkpoint_every=2, data=None, **config):
    import keras

    from hsr_tf.train import loop

    keras.utils.set_random_seed(3)
    config = {"summary_every": 2, "progress": False, **config}
    cfg = loop.TrainConfig(workdir=str(workdir), steps_per_epoch=STEPS_PER_EPOCH, num_epochs=20,
                           max_steps=total_steps, checkpoint_every=checkpoint_every, **config)
    return loop.Trainer(make_model(), loss_fn, data or make_data(), cfg, seed=3)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    trainer = make_trainer(sys.argv[1], int(sys.argv[2]),
                           checkpoint_every=int(os.environ.get("HSR_TF_TEST_CHECKPOINT_EVERY", "2")))
    out = trainer.train()
    print("FINISHED", out["step"], flush=True)
