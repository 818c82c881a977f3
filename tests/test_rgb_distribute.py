"""--distribution in the RGB programs (issue 14 part 2): experiments.rgb_common / rgb_run / rgb_weak_common.

* Fast, in this process: build_model creates every variable under the --distribution strategy's scope, a phase's
  Trainer runs under it (its log line names the strategy and the global / per-replica batch), and a worker that
  is not the chief writes no run file and publishes no checkpoint (it still takes part in the save).
* Slow (two logical CPUs, in a subprocess: tests/_rgb_dist_worker.py, ~90 CPU seconds): phase 3 of the tiny RGB
  network mirrored over two replicas gives the same losses and weights as one device with the same global batch,
  with --sync_batchnorm; with --nosync_batchnorm the losses differ (the decision is visible).

* Slow: the programs under --distribution=mirrored (on a CPU machine MirroredStrategy has 1 replica) end to end:
  experiments.rgb_synth, then experiments.stb_weak fine-tuning it on the same synthetic set (pseudo-GT, both
  weak phases, the chief's evaluation).
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import _rgb_dist_worker as worker
from experiments import common, rgb_common, rgb_distribute

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _weights(npz, prefix):
    keys = [k for k in npz.files if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return [npz[k] for k in sorted(keys, key=lambda k: int(k[len(prefix):]))]


@pytest.fixture
def one_cpu_mirrored():
    """common.distribution_strategy() -> MirroredStrategy over /cpu:0 (1 replica) for the test, then restored."""
    saved = dict(common._STRATEGY)
    common._STRATEGY.clear()
    common._STRATEGY["strategy"] = tf.distribute.MirroredStrategy(["/cpu:0"])
    yield common._STRATEGY["strategy"]
    common._STRATEGY.clear()
    common._STRATEGY.update(saved)


def test_network_built_under_the_strategy_and_a_phase_trains_under_it(tmp_path, one_cpu_mirrored, caplog):
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(worker.flags_for(str(tmp_path / "w"), 1, True))
        net = rgb_common.build_model()
        outside = [v.path for v in net.variables
                   if not one_cpu_mirrored.extended.variable_created_in_scope(getattr(v, "value", v))]
        assert net.variables and not outside, outside[:3]
        model, key, _ = rgb_common.phase_model(net, 1)
        nv = int(net(net.example_input(1), training=False)["vertices"].shape[1])
        with caplog.at_level(logging.INFO):
            res = rgb_common.train_phase(model, rgb_common.build_loss(net, 1), worker.make_data(nv),
                                         str(tmp_path / "w"), 1, 2, key)
    assert res["step"] == 1 and res["steps_here"] == 1
    assert "distribution MirroredStrategy: 1 replicas in sync" in caplog.text
    assert "global batch 4, per-replica batch 4" in caplog.text
    assert os.path.exists(tmp_path / "w" / "checkpoints" / "checkpoint")


def test_a_worker_that_is_not_the_chief_writes_no_run_file(tmp_path, monkeypatch):
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(worker.flags_for(str(tmp_path / "w"), 1, True))
        net = rgb_common.build_model()
        wd = tmp_path / "w"
        wd.mkdir()
        monkeypatch.setattr(rgb_distribute, "is_chief", lambda: False)
        rgb_common.write_run_info(str(wd))
        assert rgb_common.publish(net, str(wd), 7) is None
        assert os.listdir(wd) == []
        monkeypatch.setattr(rgb_distribute, "is_chief", lambda: True)
        path = rgb_common.publish(net, str(wd), 7)
        rgb_common.write_run_info(str(wd))
    assert path.endswith("ckpt-7")
    assert sorted(os.listdir(wd)) == ["checkpoints", "command.txt", "flags.txt", "model_config.json", "run_kind.txt"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("sync_bn", [1, 0])
def test_two_logical_devices_match_one_device_in_an_rgb_phase(tmp_path, sync_bn):
    out = tmp_path / "r.npz"
    res = subprocess.run([sys.executable, os.path.join(HERE, "_rgb_dist_worker.py"), f"--out={out}",
                          f"--workdir={tmp_path}", "--steps=2", f"--sync_bn={sync_bn}"], capture_output=True,
                         text=True, timeout=1800, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    r = np.load(out)
    assert int(r["replicas"]) == 2 and list(r["steps"]) == [2, 2]
    assert bool(r["same_init"])  # the seeded build draws the same weights under either strategy
    single, mirrored, init = _weights(r, "single_"), _weights(r, "mirrored_"), _weights(r, "init_")
    assert len(single) == len(mirrored) == len(init) > 100
    moved = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(single, init)))
    apart = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(single, mirrored)))
    assert moved > 1e-3  # training moved the weights (a run that did nothing would trivially match)
    if sync_bn:
        assert int(r["synced_bn"]) > 0
        # Step 1 is the forward pass of both, step 2 the loss after one distributed update: the same up to
        # float rounding (two half-batch gradients summed vs one full-batch gradient).
        np.testing.assert_allclose(r["mirrored_loss"], r["single_loss"], rtol=1e-5)
        # RMSprop's first steps are lr * sign(g) for |g| >> eps: elements whose gradient is at the rounding
        # level can take opposite steps on the two runs, so the weights agree in norm, not element by element.
        assert apart < 0.05 * moved, (apart, moved)
    else:
        # Statistics over 2 instead of 4 frames change the forward pass, hence the first loss already.
        assert int(r["synced_bn"]) == 0
        assert abs(r["mirrored_loss"][0] - r["single_loss"][0]) > 1e-4 * abs(r["single_loss"][0])


def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, f"{module} failed:\n{proc.stderr[-4000:]}"
    return proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rgb_programs_take_the_distribution_flag(tmp_path):
    pre, data = str(tmp_path / "pre"), str(tmp_path / "synth")
    log = _run("experiments.rgb_synth", f"--workdir={pre}", f"--data_dir={data}", "--synth_num_subjects=2",
               "--synth_poses_per_subject=4", "--synth_views_per_pose=1", "--synth_image_size=64",
               "--synth_workers=1", "--image_size=64", f"--rgb_network={worker.TINY}", "--batch_size=2",
               "--phase1_steps=1", "--phase2_steps=1", "--phase3_steps=2", "--noexport", "--nopredict",
               "--noprogress", "--eval_every=0", "--visual_every=0", "--distribution=mirrored")
    assert "distribution MirroredStrategy: 1 replicas in sync over 1 worker(s)" in log
    assert "global batch 2, per-replica batch 2" in log
    assert os.path.exists(os.path.join(pre, "checkpoints", "ckpt-2.index"))
    assert os.path.exists(os.path.join(pre, "eval", "metrics.json"))
    work = str(tmp_path / "weak")
    log = _run("experiments.stb_weak", f"--workdir={work}", f"--data_dir={data}", f"--pretrained_workdir={pre}",
               "--batch_size=2", "--weak_phase1_steps=1", "--weak_phase2_steps=2", "--noprogress", "--eval_every=0",
               "--visual_every=0", "--distribution=mirrored", "--noevaluate_pretrained")
    assert "distribution MirroredStrategy: 1 replicas in sync" in log
    assert "pseudo-GT (pre" in log
    assert os.path.exists(os.path.join(work, "checkpoints", "ckpt-2.index"))
    assert np.isfinite(__import__("json").load(open(os.path.join(work, "eval", "metrics.json")))["pose_error_mm"])
