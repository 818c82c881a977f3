"""Training loop: an interrupted run resumes at the same step with the same data order and ends in the
same state as an uninterrupted one; flags/command land in the workdir and TensorBoard; the learning rate
follows 1e-3 * 0.9 ** epoch."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import keras

from hsr_tf.train import loop

N_FRAMES, BATCH, N_PTS = 48, 8, 16  # 6 steps per epoch


@keras.saving.register_keras_serializable(package="hsr_tf_tests")
class TinyNet(keras.Model):
    """points [B, N, 3] -> {"joints": [B, 2, 3]} through a per-point MLP and max pooling."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(8, activation="relu")
        self.d2 = keras.layers.Dense(6)

    def call(self, points, training=False):
        feat = tf.reduce_max(self.d1(points), axis=1)
        return {"joints": tf.reshape(self.d2(feat), [-1, 2, 3])}

    def get_config(self):
        return super().get_config()


def make_data(seed):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(N_FRAMES, N_PTS, 3)).astype(np.float32)
    joints = points[:, :2, :] * 0.5 + 0.1
    ids = np.arange(N_FRAMES, dtype=np.int32)

    def dataset_fn(epoch):
        ds = tf.data.Dataset.from_tensor_slices({"points": points, "joints": joints, "id": ids})
        ds = ds.shuffle(N_FRAMES, seed=seed * 1000 + epoch, reshuffle_each_iteration=False)

        def augment(ex):  # stateless noise keyed by (seed, epoch, frame id), like the real reader
            s = tf.stack([tf.constant(seed * 1000 + epoch, tf.int32), ex["id"]])
            noise = tf.random.stateless_normal([N_PTS, 3], seed=s, stddev=0.01)
            return dict(ex, points=ex["points"] + noise)

        return ds.map(augment, num_parallel_calls=2, deterministic=True).batch(BATCH, drop_remainder=True)

    return dataset_fn


def loss_fn(batch, outputs, epoch):
    err = tf.reduce_mean(tf.reduce_sum((outputs["joints"] - batch["joints"]) ** 2, -1))
    # Weight schedule depending on the epoch tensor, as the paper's stage-joint weight.
    w = tf.where(epoch >= 1, 0.5, 1.0)
    # Fingerprint of the batch (frame ids in order) to compare data order between runs.
    fp = tf.reduce_sum(tf.cast(batch["id"], tf.float32) * tf.range(1.0, BATCH + 1.0))
    return w * err, {"joint": err, "batch_fingerprint": tf.stop_gradient(fp)}


def make_trainer(workdir, total_steps, run_info=None, checkpoint_every=4):
    keras.utils.set_random_seed(3)
    model = TinyNet()
    cfg = loop.TrainConfig(workdir=str(workdir), steps_per_epoch=N_FRAMES // BATCH, num_epochs=10,
                           max_steps=total_steps, checkpoint_every=checkpoint_every, summary_every=2,
                           progress=False)
    return loop.Trainer(model, loss_fn, make_data(seed=7), cfg, run_info=run_info, seed=3)


def test_interrupted_run_resumes_same_step_same_batches(tmp_path):
    total = 15  # 2.5 epochs
    ref = make_trainer(tmp_path / "ref", total)
    out = ref.train()
    assert out["step"] == total and not out["interrupted"]
    ref_hist = {h["step"]: h for h in ref.history}
    assert sorted(ref_hist) == list(range(1, total + 1))

    # Interrupted after 10 steps of the first process: the last periodic checkpoint is step 8.
    first = make_trainer(tmp_path / "run", total)
    out1 = first.train(stop_after=10)
    assert out1["interrupted"] and out1["step"] == 10
    ckpts = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "run" / "checkpoints" / "ckpt-*.index")))
    assert ckpts == ["ckpt-4.index", "ckpt-8.index"]

    # A fresh process-equivalent (new model, optimizer, trainer) with the same settings.
    second = make_trainer(tmp_path / "run", total)
    out2 = second.train()
    assert out2["step"] == total
    steps2 = [h["step"] for h in second.history]
    assert steps2 == list(range(9, total + 1)), "resumed at the wrong step"
    for h in second.history:
        r = ref_hist[h["step"]]
        assert h["batch_fingerprint"] == r["batch_fingerprint"], f"step {h['step']}: different batch"
        np.testing.assert_allclose(h["loss"], r["loss"], rtol=1e-5, err_msg=f"step {h['step']}")
    # Steps 1..10 of the interrupted process also matched the reference.
    for h in first.history:
        assert h["batch_fingerprint"] == ref_hist[h["step"]]["batch_fingerprint"]
        np.testing.assert_allclose(h["loss"], ref_hist[h["step"]]["loss"], rtol=1e-5)
    # Same final weights and optimizer state.
    for a, b in zip(ref.model.weights, second.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    assert int(second.optimizer.iterations.numpy()) == total


def test_every_batch_of_an_epoch_is_seen_once(tmp_path):
    tr = make_trainer(tmp_path / "w", 12)  # 2 epochs
    tr.train()
    # Each epoch covers all 48 frames: sum of fingerprints of a permutation-invariant check via ids is hard,
    # so compare against the dataset itself.
    ds_fn = make_data(seed=7)
    for epoch in range(2):
        ids = np.concatenate([b["id"].numpy() for b in ds_fn(epoch)])
        assert sorted(ids.tolist()) == list(range(N_FRAMES))
        fps = [float(np.sum(b["id"].numpy() * np.arange(1, BATCH + 1))) for b in ds_fn(epoch)]
        got = [h["batch_fingerprint"] for h in tr.history[epoch * 6:(epoch + 1) * 6]]
        assert got == fps
    # Different epochs are shuffled differently.
    assert [b["id"].numpy().tolist() for b in ds_fn(0)] != [b["id"].numpy().tolist() for b in ds_fn(1)]


def test_learning_rate_decays_per_epoch(tmp_path):
    tr = make_trainer(tmp_path / "lr", 13)
    tr.train()
    # After 13 steps with 6 per epoch: floor(13 / 6) = 2 decays.
    np.testing.assert_allclose(float(tr.optimizer.learning_rate.numpy()), 1e-3 * 0.9 ** 2, rtol=1e-6)
    # At step 11 the schedule gives 0.9 ** 1.
    sched = tr.optimizer._learning_rate
    np.testing.assert_allclose(float(sched(11)), 1e-3 * 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(sched(12)), 1e-3 * 0.9 ** 2, rtol=1e-6)


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_flags_and_command_written(tmp_path):
    info = {"flags": "--batch_size=8\n--seed=7\n", "command": "python -m experiments.synth_full --seed=7",
            "hparams": {"lambda_chamfer": 1.0, "num_stages": 2}, "hparam_metrics": ["metrics/joint"]}
    tr = make_trainer(tmp_path / "f", 4, run_info=info)
    tr.train()
    assert (tmp_path / "f" / "flags.txt").read_text() == info["flags"]
    assert info["command"] in (tmp_path / "f" / "command.txt").read_text()
    acc = _events(tmp_path / "f" / "train")
    tags = acc.Tags()["tensors"]
    assert "run/flags" in tags and "run/command" in tags
    text = acc.Tensors("run/flags")[0].tensor_proto.string_val[0].decode()
    assert "--seed=7" in text
    assert {"loss", "loss/joint", "optim/learning_rate"} <= set(tags)
    # Scalars are averaged over each summary interval (summary_every=2): step 2 = mean of steps 1, 2.
    loss_events = {e.step: tf.make_ndarray(e.tensor_proto) for e in acc.Tensors("loss")}
    np.testing.assert_allclose(loss_events[2], np.mean([tr.history[0]["loss"], tr.history[1]["loss"]]), rtol=1e-6)
    # hparams at the TensorBoard root of the run.
    root = _events(tmp_path / "f")
    assert any("hparams" in t for t in root.Tags()["tensors"]) or root.PluginTagToContent("hparams")
    # A rerun with changed flags keeps the old ones.
    info2 = dict(info, flags="--batch_size=8\n--seed=8\n")
    make_trainer(tmp_path / "f", 4, run_info=info2).train()
    assert (tmp_path / "f" / "flags.txt").read_text() == info2["flags"]
    backups = glob.glob(str(tmp_path / "f" / "flags.*.txt"))
    assert len(backups) == 1 and open(backups[0]).read() == info["flags"]


def test_model_config_round_trip(tmp_path):
    tr = make_trainer(tmp_path / "m", 3)
    tr.train()
    loop.save_model_config(tr.model, str(tmp_path / "m"))
    model, ckpt = loop.load_model_from_workdir(str(tmp_path / "m"), example_points_shape=(1, N_PTS, 3))
    assert ckpt.endswith("ckpt-3")
    x = np.random.default_rng(1).normal(size=(2, N_PTS, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x)["joints"].numpy(), tr.model(x)["joints"].numpy(), rtol=1e-6)


def test_short_epoch_raises(tmp_path):
    cfg = loop.TrainConfig(workdir=str(tmp_path / "s"), steps_per_epoch=100, num_epochs=1, progress=False)
    tr = loop.Trainer(TinyNet(), loss_fn, make_data(seed=1), cfg)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        tr.train()


@keras.saving.register_keras_serializable(package="hsr_tf_tests")
class ListBatchNormNet(keras.Model):
    """Like the shape networks: sublayers held in a list, with BatchNorm whose moving statistics matter."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(8), keras.layers.BatchNormalization()]
        self.head = keras.layers.Dense(6)

    def call(self, points, training=False):
        x = self.blocks[1](self.blocks[0](points), training=training)
        feat = tf.reduce_max(tf.nn.relu(x), axis=1)
        return {"joints": tf.reshape(self.head(feat), [-1, 2, 3])}

    def get_config(self):
        return super().get_config()


def test_checkpoint_holds_every_variable_including_batchnorm_statistics(tmp_path):
    keras.utils.set_random_seed(5)
    model = ListBatchNormNet()
    cfg = loop.TrainConfig(workdir=str(tmp_path), steps_per_epoch=N_FRAMES // BATCH, num_epochs=2, max_steps=6,
                           checkpoint_every=3, summary_every=3, progress=False)
    loop.Trainer(model, loss_fn, make_data(seed=1), cfg, seed=5).train()
    trained = [(v.path, v.numpy()) for v in model.variables]
    moving = [value for path, value in trained if "moving_mean" in path]
    assert moving and all(np.abs(value).max() > 0 for value in moving), "training must move the BN statistics"

    loop.save_model_config(model, str(tmp_path))
    reloaded, _ = loop.load_model_from_workdir(str(tmp_path), example_points_shape=(1, N_PTS, 3))
    restored = [v.numpy() for v in reloaded.variables]
    assert len(restored) == len(trained)
    for (path, value), got in zip(trained, restored):  # paths differ between instances (auto names); order doesn't
        np.testing.assert_array_equal(got, value, err_msg=path)


def test_learning_rate_decays_per_samples_seen(tmp_path):
    """lr = 1e-3 * 0.9 ** floor(step * batch / lr_decay_samples), independent of the epoch length."""
    keras.utils.set_random_seed(3)
    cfg = loop.TrainConfig(workdir=str(tmp_path / "s"), steps_per_epoch=N_FRAMES // BATCH, num_epochs=10,
                           max_steps=13, lr_decay_samples=20, batch_size=BATCH, summary_every=2, progress=False)
    tr = loop.Trainer(TinyNet(), loss_fn, make_data(seed=7), cfg, seed=3)
    tr.train()
    # 13 steps x 8 samples = 104 samples -> floor(104 / 20) = 5 decays (the epoch of 6 steps would give 2).
    np.testing.assert_allclose(float(tr.optimizer.learning_rate.numpy()), 1e-3 * 0.9 ** 5, rtol=1e-6)
    sched = tr.optimizer._learning_rate
    # Step 2 = 16 samples: none yet; step 3 = 24 samples: one; step 5 = 40 samples: two.
    for step, decays in ((2, 0), (3, 1), (4, 1), (5, 2), (7, 2), (8, 3)):
        np.testing.assert_allclose(float(sched(step)), 1e-3 * 0.9 ** decays, rtol=1e-6, err_msg=f"step {step}")
    with pytest.raises(ValueError, match="batch_size"):
        loop.TrainConfig(workdir=str(tmp_path), steps_per_epoch=6, lr_decay_samples=100)
