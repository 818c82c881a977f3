"""The rendering CLI ``python -m data_prep.synth``: an interrupted run resumes to exactly the frames of an
uninterrupted one (same shards, same frame ids, same data), with no duplicates."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hsr_tf.data import shards

# 3 subjects (2 train, 1 test) x 22 poses (the pose library's minimum) x 2 views = 132 frame slots,
# 4 per shard -> 33 shards; ~35 ms a frame on one worker.
ARGS = ["--num_subjects=3", "--poses_per_subject=22", "--views_per_pose=2", "--frames_per_shard=4",
        "--num_workers=1", "--seed=5", "--noprogress"]
NUM_SHARDS = 2 * 11 + 11
NUM_SLOTS = 3 * 22 * 2


def _cli(out_dir):
    return [sys.executable, "-m", "data_prep.synth", f"--out_dir={out_dir}"] + ARGS


def _env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _read_all(out_dir):
    """{shard name: loaded arrays}, every finished shard validated."""
    names = sorted(n for n in os.listdir(out_dir) if n.endswith(".h5"))
    return {n: shards.load_shard(os.path.join(out_dir, n)) for n in names}


def test_killed_run_resumes_to_the_same_frames(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.run(_cli(ref_dir), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # interrupted run: SIGKILL (no clean-up possible) as soon as the first shards are on disk
    proc = subprocess.Popen(_cli(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    finished = []
    try:
        while time.time() < deadline and proc.poll() is None:
            finished = [n for n in os.listdir(run_dir) if n.endswith(".h5")] if run_dir.exists() else []
            if len(finished) >= 2:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    partial = sorted(n for n in os.listdir(run_dir) if n.endswith(".h5"))
    assert 2 <= len(partial) < NUM_SHARDS
    before = {n: os.stat(run_dir / n).st_mtime_ns for n in partial}
    # a stale temporary from a write cut short must not count as a finished shard
    stale = run_dir / "test-00000.h5.tmp"
    stale.write_bytes(b"half-written")
    if (run_dir / "test-00000.h5").exists():
        os.remove(run_dir / "test-00000.h5")
        del before["test-00000.h5"]

    resumed = subprocess.run(_cli(run_dir), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(before)} already finished" in resumed.stderr
    for n, mtime in before.items():  # finished shards were kept, not rendered again
        assert os.stat(run_dir / n).st_mtime_ns == mtime, n
    assert not any(n.endswith(".tmp") for n in os.listdir(run_dir))

    a, b = _read_all(ref_dir), _read_all(run_dir)
    assert sorted(a) == sorted(b) and len(a) == NUM_SHARDS
    ids = np.concatenate([d["frame_id"] for d in b.values()])
    assert len(ids) == len(np.unique(ids)), "duplicate frames after resuming"
    assert np.array_equal(np.sort(ids), np.sort(np.concatenate([d["frame_id"] for d in a.values()])))
    written = len(ids)
    assert 0.9 * NUM_SLOTS <= written <= NUM_SLOTS
    for n in a:  # the same frames bit for bit: every frame's randomness depends only on (seed, frame_id)
        assert sorted(a[n]) == sorted(b[n])
        for k in a[n]:
            assert np.array_equal(a[n][k], b[n][k]), (n, k)
    # no subject in both splits
    train = set(np.concatenate([d["subject"] for n, d in b.items() if n.startswith("train")]).tolist())
    test = set(np.concatenate([d["subject"] for n, d in b.items() if n.startswith("test")]).tolist())
    assert train and test and not train & test


def test_changed_configuration_refuses_to_resume(tmp_path):
    from data_prep.synth import render

    cfg = render.DatasetConfig(num_subjects=2, poses_per_subject=22, views_per_pose=1, frames_per_shard=64)
    render.generate(str(tmp_path), cfg, num_workers=1, progress=False, log=lambda *_: None)
    other = render.DatasetConfig(num_subjects=2, poses_per_subject=22, views_per_pose=1, frames_per_shard=64, seed=1)
    with pytest.raises(ValueError, match=r"manifest\.json: expected the same configuration.*seed"):
        render.generate(str(tmp_path), other, num_workers=1, progress=False, log=lambda *_: None)


def test_cli_renders_fewer_poses_than_the_named_gestures(tmp_path):
    # --poses_per_subject=5 used to fail ("expected >= 22"): 2 subjects x 5 poses x 1 view = 10 frame slots
    out = tmp_path / "small"
    args = [sys.executable, "-m", "data_prep.synth", f"--out_dir={out}", "--num_subjects=2", "--poses_per_subject=5",
            "--views_per_pose=1", "--frames_per_shard=8", "--num_workers=1", "--seed=1", "--noprogress",
            "--test_fraction=0"]
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ids = np.concatenate([d["frame_id"] for d in _read_all(out).values()])
    assert 8 <= len(ids) <= 10 and ids.max() < 10
    bad = subprocess.run(args[:4] + ["--poses_per_subject=0"], env=_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "poses_per_subject" in bad.stderr
