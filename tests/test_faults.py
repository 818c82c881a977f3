"""Faults during training (issue 15 section 4): a kill during a checkpoint write at every phase of the save
(simulated in-process and by a real SIGKILL of a subprocess), a full disk during a checkpoint, a NaN loss
(stop naming the step and the frames, or skip and count), and two runs on one workdir.

The reference for "resumes with the same data order" is an uninterrupted run: the resumed run must see the
same batch (fingerprint of its frame ids) at every step and end with the same weights."""
import errno
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import _fault_toys as toys
from hsr_tf.train import checkpoints, loop, workdir_lock

TOTAL = 15
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class SimulatedKill(BaseException):
    """Stands for SIGKILL in-process: no ``except Exception`` / ``except OSError`` handler runs."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tr = toys.make_trainer(tmp_path_factory.mktemp("ref"), TOTAL)
    tr.train()
    return {h["step"]: h for h in tr.history}, [w.numpy() for w in tr.model.weights]


def _recorded(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(str(workdir), "checkpoints"))
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []


def _assert_clean(workdir):
    """Nothing half written: no staging directory, every ckpt file belongs to a recorded checkpoint."""
    ckdir = os.path.join(str(workdir), "checkpoints")
    names = os.listdir(ckdir)
    assert not [n for n in names if n.startswith(".staging-")], names
    recorded = set(_recorded(workdir))
    for n in names:
        if n.startswith("ckpt-"):
            assert n.split(".")[0] in recorded, f"{n} is not a recorded checkpoint ({recorded})"
    for prefix in recorded:
        assert os.path.exists(os.path.join(ckdir, prefix + ".index"))
        tf.train.load_checkpoint(os.path.join(ckdir, prefix))  # readable


def _assert_resumed_like_reference(trainer, first_step, reference):
    ref_hist, ref_weights = reference
    assert [h["step"] for h in trainer.history] == list(range(first_step, TOTAL + 1))
    for h in trainer.history:
        assert h["batch_fingerprint"] == ref_hist[h["step"]]["batch_fingerprint"], f"step {h['step']}"
        np.testing.assert_allclose(h["loss"], ref_hist[h["step"]]["loss"], rtol=1e-5)
    for a, b in zip(trainer.model.weights, ref_weights):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)


# Two of the five points are slow-marked to keep the default suite short (the machine has 2 cores).
@pytest.mark.parametrize("phase", [pytest.param(p, marks=pytest.mark.slow) if p in ("before_write", "after_publish")
                                   else p for p in checkpoints.PHASES])
def test_kill_at_each_phase_of_a_checkpoint_write(tmp_path, monkeypatch, reference, phase):
    def kill(pid, sig):
        assert sig == signal.SIGKILL
        raise SimulatedKill(phase)

    monkeypatch.setattr(checkpoints.os, "kill", kill)
    monkeypatch.setenv(checkpoints.FAULT_ENV, f"checkpoint:{phase}:kill:8")
    with pytest.raises(SimulatedKill):
        toys.make_trainer(tmp_path, TOTAL).train()
    # Only after the state file is replaced is ckpt-8 the checkpoint to resume from.
    assert _recorded(tmp_path) == (["ckpt-2", "ckpt-4", "ckpt-6", "ckpt-8"][-3:] if phase == "after_record"
                                   else ["ckpt-2", "ckpt-4", "ckpt-6"])
    leftovers = os.listdir(tmp_path / "checkpoints")
    if phase in ("after_write", "mid_publish"):
        assert ".staging-ckpt-8" in leftovers  # what a kill leaves, swept on restart
    monkeypatch.delenv(checkpoints.FAULT_ENV)
    toys.make_trainer(tmp_path, TOTAL).train(stop_after=1)  # one step, no save: what the restart cleaned up
    _assert_clean(tmp_path)
    resumed = toys.make_trainer(tmp_path, TOTAL)
    resumed.train()
    _assert_clean(tmp_path)
    _assert_resumed_like_reference(resumed, 9 if phase == "after_record" else 7, reference)


def test_sigkill_of_a_subprocess_during_a_checkpoint_publish(tmp_path, reference):
    env = dict(os.environ, **{checkpoints.FAULT_ENV: "checkpoint:mid_publish:kill:10"})
    res = subprocess.run([sys.executable, os.path.join(HERE, "_fault_toys.py"), str(tmp_path), str(TOTAL)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert "FINISHED" not in res.stdout
    assert _recorded(tmp_path) == ["ckpt-4", "ckpt-6", "ckpt-8"]
    # The data file of ckpt-10 was published, its index not: not a checkpoint, and swept on restart.
    assert os.path.exists(tmp_path / "checkpoints" / "ckpt-10.data-00000-of-00001")
    assert not os.path.exists(tmp_path / "checkpoints" / "ckpt-10.index")
    toys.make_trainer(tmp_path, TOTAL).train(stop_after=1)
    _assert_clean(tmp_path)
    resumed = toys.make_trainer(tmp_path, TOTAL)
    resumed.train()
    _assert_resumed_like_reference(resumed, 9, reference)


@pytest.mark.slow
def test_sigkill_at_random_times_never_leaves_a_torn_checkpoint(tmp_path, reference):
    """A real SIGKILL from outside at random moments of a run that saves at every step (saves dominate)."""
    rng = np.random.default_rng(0)
    cmd = [sys.executable, os.path.join(HERE, "_fault_toys.py"), str(tmp_path), str(TOTAL)]
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                                env=dict(os.environ, HSR_TF_TEST_CHECKPOINT_EVERY="1"))
        # Wait until it trains (a checkpoint appears), then kill at a random moment.
        deadline = time.time() + 240
        start = len(_recorded(tmp_path)) if os.path.exists(tmp_path / "checkpoints" / "checkpoint") else 0
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(tmp_path / "checkpoints" / "checkpoint") and len(_recorded(tmp_path)) != start:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.0)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
    assert kills >= 1
    resumed = toys.make_trainer(tmp_path, TOTAL)
    resumed.train()
    _assert_clean(tmp_path)
    ref_hist, ref_weights = reference
    for a, b in zip(resumed.model.weights, ref_weights):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)


def test_full_disk_during_a_checkpoint_keeps_the_previous_ones(tmp_path, monkeypatch, reference):
    monkeypatch.setenv(checkpoints.FAULT_ENV, "checkpoint:after_write:enospc:6")
    with pytest.raises(checkpoints.CheckpointWriteError) as info:
        toys.make_trainer(tmp_path, TOTAL).train()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path / "checkpoints") in message and "ckpt-6" in message and "ckpt-4" in message
    assert "intact" in message
    assert _recorded(tmp_path) == ["ckpt-2", "ckpt-4"]
    assert not glob.glob(str(tmp_path / "checkpoints" / ".staging-*"))  # cleaned up by the failed save itself
    _assert_clean(tmp_path)
    monkeypatch.delenv(checkpoints.FAULT_ENV)
    resumed = toys.make_trainer(tmp_path, TOTAL)
    resumed.train()
    _assert_resumed_like_reference(resumed, 5, reference)


def test_a_real_write_failure_inside_tensorflow_is_reported(tmp_path):
    """TensorFlow's own file write fails (a file-size limit, as a full disk would): CheckpointWriteError, the
    previous checkpoints and the state file untouched, no staging directory left."""
    import resource

    tr = toys.make_trainer(tmp_path, 4)
    tr.train()
    ckdir = tmp_path / "checkpoints"
    before = {n: (ckdir / n).read_bytes() for n in os.listdir(ckdir)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        with pytest.raises(checkpoints.CheckpointWriteError) as info:
            tr.checkpointer.save(99)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "ckpt-99" in str(info.value) and "ckpt-4" in str(info.value)
    assert {n: (ckdir / n).read_bytes() for n in os.listdir(ckdir)} == before
    assert _recorded(tmp_path) == ["ckpt-2", "ckpt-4"]


# ---------------------------------------------------------------------------------------------- NaN / Inf
def test_nan_loss_stops_naming_step_and_frames_without_a_poisoned_checkpoint(tmp_path):
    data = toys.make_data(nan_frame=13, nan_epochs=(1,))
    tr = toys.make_trainer(tmp_path, TOTAL, data=data, checkpoint_every=1)
    # Where frame 13 falls in epoch 1: the batch index, hence the global step.
    batches = [b["frame_id"].numpy().tolist() for b in data(1)]
    index = next(i for i, ids in enumerate(batches) if 13 in ids)
    step = toys.STEPS_PER_EPOCH + index + 1
    with pytest.raises(loop.NonFiniteLossError) as info:
        tr.train()
    message = str(info.value)
    assert f"step {step} (epoch 1, batch {index} of the epoch)" in message
    assert f"frame_id {batches[index]}" in message and "nan" in message.lower()
    assert tr.history[-1]["step"] == step - 1  # the poisoned step was not recorded as trained
    assert all(np.all(np.isfinite(w.numpy())) for w in tr.model.weights)
    assert int(tr.optimizer.iterations.numpy()) == step - 1  # no update applied
    assert _recorded(tmp_path)[-1] == f"ckpt-{step - 1}"
    for prefix in _recorded(tmp_path):
        reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / prefix))
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.asarray(value).dtype.kind == "f":
                assert np.all(np.isfinite(value)), f"{prefix}: {name} is not finite"


def test_nan_loss_skipped_and_counted_with_the_flag(tmp_path):
    data = toys.make_data(nan_frame=13, nan_epochs=(1,))
    tr = toys.make_trainer(tmp_path, 12, data=data, checkpoint_every=4, on_nonfinite="skip")  # 2 epochs
    out = tr.train()
    assert out["step"] == 12 and out["skipped"] == 1 and len(tr.skipped_batches) == 1
    skipped_step = tr.skipped_batches[0]["step"]
    assert 7 <= skipped_step <= 12 and skipped_step not in [h["step"] for h in tr.history]
    assert "13" in tr.skipped_batches[0]["message"]
    assert int(tr.optimizer.iterations.numpy()) == 11  # one update fewer than steps
    assert all(np.all(np.isfinite(w.numpy())) for w in tr.model.weights)
    # The other batches of epoch 1 are the ones a clean epoch 1 has, in the same order (data order kept).
    fps = [float(np.sum(b["frame_id"].numpy() * np.arange(1, toys.BATCH + 1))) for b in toys.make_data()(1)]
    seen = {h["step"]: h["batch_fingerprint"] for h in tr.history if h["step"] >= 7}
    assert seen == {s: fps[s - 7] for s in range(7, 13) if s != skipped_step}
    # The skip count is checkpointed: a resumed run accepts iterations = step - skipped, and continues.
    again = toys.make_trainer(tmp_path, 14, data=data, checkpoint_every=4, on_nonfinite="skip")
    out2 = again.train()
    assert out2["step"] == 14 and out2["skipped"] == 1 and again.history[0]["step"] == 13
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "faults/nonfinite_skipped" in acc.Tags()["tensors"]


def test_too_many_consecutive_nonfinite_batches_stop(tmp_path):
    data = toys.make_data(nan_frame=13, nan_epochs=(0,))
    tr = toys.make_trainer(tmp_path, 6, data=data, on_nonfinite="skip", max_consecutive_skips=1)
    with pytest.raises(loop.NonFiniteLossError, match="1 non-finite batches in a row"):
        tr.train()


# ---------------------------------------------------------------------------------------------- workdir lock
_HOLD = ("import sys, time; sys.path.insert(0, sys.argv[1]); from hsr_tf.train import workdir_lock; "
         "workdir_lock.WorkdirLock(sys.argv[2], command='holder-run --flag').acquire(); "
         "print('locked', flush=True); time.sleep(120)")


def _hold_lock(workdir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, REPO, str(workdir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_workdir_refuses(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(workdir_lock.WorkdirLockedError) as info:
            toys.make_trainer(tmp_path, 4).train()
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "holder-run --flag" in message and str(tmp_path) in message
        import socket
        assert socket.gethostname() in message
        assert not os.path.exists(tmp_path / "checkpoints")  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    holder = _hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level("WARNING", logger="hsr_tf.train.workdir_lock"):
        out = toys.make_trainer(tmp_path, 2).train()
    assert out["step"] == 2
    assert any(f"pid {holder.pid}" in r.getMessage() and "no longer runs" in r.getMessage() for r in caplog.records)
    # Released at the end: the next run takes it silently.
    caplog.clear()
    with caplog.at_level("WARNING", logger="hsr_tf.train.workdir_lock"):
        toys.make_trainer(tmp_path, 3).train()
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]


def test_the_lock_nests_within_a_process_and_excludes_others(tmp_path):
    """A program holds the lock for its whole run; the training loop's acquisition inside it nests."""
    outer = workdir_lock.WorkdirLock(str(tmp_path), command="program --flags").acquire()
    out = toys.make_trainer(tmp_path, 2).train()  # nested: no refusal
    assert out["step"] == 2
    assert outer.held and "program --flags" in (tmp_path / ".lock").read_text()  # still the program's lock
    probe = subprocess.run([sys.executable, "-c", _HOLD, REPO, str(tmp_path)], capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode != 0 and "WorkdirLockedError" in probe.stderr and "program --flags" in probe.stderr
    outer.release()
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: an empty record
    with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
        assert lock.held


def test_a_relative_workdir_resumes(tmp_path, monkeypatch, reference):
    """The state file's relative entries resolve against the checkpoint directory once, not twice."""
    monkeypatch.chdir(tmp_path)
    toys.make_trainer("runs/rel", TOTAL).train(stop_after=5)
    resumed = toys.make_trainer("runs/rel", TOTAL)
    assert resumed.train()["step"] == TOTAL
    _assert_resumed_like_reference(resumed, 5, reference)
    _assert_clean(tmp_path / "runs" / "rel")


@pytest.mark.slow
def test_a_second_program_on_a_locked_workdir_refuses_before_writing(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        res = subprocess.run([sys.executable, "-m", "experiments.synth_full", f"--workdir={tmp_path}",
                              f"--data_dir={tmp_path / 'no_data'}", "--norender_if_empty", "--noprogress"],
                             capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode != 0
    assert "WorkdirLockedError" in res.stderr and f"pid {holder.pid}" in res.stderr, res.stderr[-2000:]
    assert "FileNotFoundError" not in res.stderr  # refused before looking at the data
    assert sorted(os.listdir(tmp_path)) == [".lock"]  # nothing written into the workdir
