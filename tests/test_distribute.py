"""tf.distribute in the training loop (issue 14 section 2).

* Two logical CPU devices (in a subprocess, so this process keeps one): MirroredStrategy over both gives the
  same weights after N steps as one device with the same global batch, with BatchNorm statistics synchronised
  across replicas; with per-replica statistics it does not (the decision is visible). The model runs the
  PointNet++ custom ops inside each replica.
* Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy, TF_CONFIG): they train a few steps and stop
  (a kill), only the chief writes the checkpoints and summaries; a restart of both resumes, and the result equals
  an uninterrupted single-device run with the same global batch (slow: 4 TensorFlow processes).
* The helpers: chief detection from the cluster spec, the batch-size check, strategy names.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.train import distribute

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_dist_worker.py")


def _weights(npz, prefix):
    keys = [k for k in npz.files if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return [npz[k] for k in sorted(keys, key=lambda k: int(k[len(prefix):]))]


@pytest.mark.parametrize("sync_bn", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_two_logical_devices_match_one_device_with_the_same_global_batch(tmp_path, sync_bn):
    out = tmp_path / "r.npz"
    res = subprocess.run([sys.executable, WORKER, "logical", f"--out={out}", f"--workdir={tmp_path}", "--steps=5",
                          f"--sync_bn={sync_bn}"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    r = np.load(out)
    assert int(r["replicas"]) == 2
    single, mirrored = _weights(r, "single_"), _weights(r, "mirrored_")
    assert len(single) == len(mirrored) == 7  # conv kernel, BN (4), dense (2)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
    if sync_bn:
        # Same update up to float rounding (sum of two half-batch gradients vs one full-batch gradient).
        assert diff < 1e-5, diff
        np.testing.assert_allclose(r["mirrored_loss"], r["single_loss"], rtol=1e-5)
    else:
        # Statistics over 4 instead of 8 samples change the forward pass, hence the weights.
        assert diff > 1e-3, diff
    # Training moved the weights (a run that did nothing would trivially match).
    moved = max(float(np.abs(w).max()) for w in single)
    assert moved > 0 and not np.allclose(r["single_loss"][0], r["single_loss"][-1])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch_cluster(workdir, outdir, steps, stop_after):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, "multi", f"--out={outdir / f'w{i}.npz'}", f"--workdir={workdir}",
             f"--steps={steps}", f"--stop_after={stop_after}"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return [np.load(outdir / f"w{i}.npz") for i in range(2)]


@pytest.mark.slow
def test_two_workers_train_chief_checkpoints_and_a_restart_resumes(tmp_path):
    import _dist_worker

    workdir = tmp_path / "run"
    first = _launch_cluster(workdir, tmp_path, steps=10, stop_after=6)
    assert [bool(r["is_chief"]) for r in first] == [True, False]
    assert all(int(r["replicas"]) == 2 and list(r["steps"]) == [1, 2, 3, 4, 5, 6] for r in first)
    # Only the chief wrote: its checkpoint at step 4, summaries, the lock; no other worker's files.
    ckpts = sorted(n for n in os.listdir(workdir / "checkpoints"))
    assert ckpts == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    events = [os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs if f.startswith("events.out")]
    assert len({f.split(".")[-3] for f in events}) == 1, events  # one writer process (pid in the file name)

    second = _launch_cluster(workdir, tmp_path, steps=10, stop_after=0)
    assert all(list(r["steps"]) == [5, 6, 7, 8, 9, 10] for r in second)
    chief, other = _weights(second[0], "w_"), _weights(second[1], "w_")
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)  # replicas stay in sync
    # The same run on one device, uninterrupted, with the same global batch.
    ref, _, _ = _dist_worker.train(tf.distribute.get_strategy(), str(tmp_path / "ref"), 10)
    for a, b in zip(chief, ref.model.variables):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------------------------- helpers
class _Resolver:
    def __init__(self, spec, task_type, task_id):
        self._spec, self.task_type, self.task_id = spec, task_type, task_id

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._spec)


class _Strategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize("spec,task,chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 0), False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
])
def test_chief_is_the_chief_task_else_worker_zero(spec, task, chief):
    info = distribute.worker_info(_Strategy(_Resolver(spec, *task)))
    assert info["is_chief"] is chief
    assert info["num_workers"] == sum(len(v) for v in spec.values())


def test_single_process_is_chief_and_the_batch_must_divide():
    strategy = tf.distribute.get_strategy()
    assert distribute.worker_info(strategy) == {"task_type": None, "task_id": 0, "num_workers": 1, "is_chief": True}
    assert distribute.replica_batch_size(strategy, 7) == 7
    assert "global batch 32, per-replica batch 32" in distribute.describe(strategy, 32)

    class Two:
        num_replicas_in_sync = 2
    with pytest.raises(ValueError, match=r"--batch_size: expected a multiple of the 2 replicas.*found 7"):
        distribute.replica_batch_size(Two(), 7)
    assert distribute.replica_batch_size(Two(), 8) == 4


def test_strategy_names_and_tf_config_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="distribution: expected one of"):
        distribute.make_strategy("horovod")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG: expected JSON"):
        distribute.make_strategy("multi_worker")
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()


@pytest.mark.slow
def test_program_takes_the_distribution_flag(tmp_path):
    """experiments.synth_full --distribution=mirrored --noprogress: the strategy line, the step lines, a run."""
    import test_experiments as te

    hm, data = te.make_setup(tmp_path)
    res = te.run_module("experiments.synth_full", te.base_args(
        tmp_path, hm, data, str(tmp_path / "w"), distribution="mirrored", evaluate="false", export="false",
        log_every=3))
    log = res.stdout + res.stderr
    assert "distribution MirroredStrategy: 1 replicas in sync over 1 worker(s)" in log
    assert "global batch 4, per-replica batch 4" in log
    steps = [int(s) for s in __import__("re").findall(r"step (\d+)/12 \(epoch", log)]
    assert steps == [3, 6, 9, 12], steps
    assert os.path.exists(tmp_path / "w" / "checkpoints" / "ckpt-12.index")
