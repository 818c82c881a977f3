"""The experiment programs end to end on tiny shards with a toy hand model and a tiny shape network:
train (resumable) -> evaluate -> export (fallback, checked against Keras) -> SavedModel in a fresh process.
A real SIGKILL + restart of the program is in the slow test."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hsr_tf.data import shards as shards_lib
from hsr_tf.hand_model.skeleton import JOINT_NAMES
from tests._hand_model_toy import make_toy_model

P = 64
TINY_NET = {"sa1_npoint": 32, "sa1_radius": 0.2, "sa1_nsample": 8, "sa1_mlp": [8, 8], "sa2_npoint": 16,
            "sa2_radius": 0.4, "sa2_nsample": 8, "sa2_mlp": [16], "global_mlp": [32], "head_hidden": 16}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_setup(tmp_path, n_train=24, n_test=8):
    rng = np.random.default_rng(0)
    hm, _, _ = make_toy_model(rng)
    hm_path = str(tmp_path / "toy_hand.npz")
    hm.save(hm_path)
    v = hm.mean_shape.shape[0]
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        # Frames: the toy mean hand, randomly placed 400-500 mm in front of the camera; points = noisy vertices.
        verts = hm.mean_shape[None] + rng.normal(size=(n, 1, 3)) * [20, 20, 30] + [0, 0, 450]
        joints = (hm.joint_regressor @ hm.mean_shape)[None] + (verts - hm.mean_shape[None])[:, :1]
        idx = rng.integers(0, v, size=(n, P))
        cam_pts = np.take_along_axis(verts, idx[..., None], axis=1) + rng.normal(size=(n, P, 3))
        center = cam_pts.mean(1)
        shards_lib.write_shard(str(data / f"{split}-00000.h5"), {
            "points": (cam_pts - center[:, None]) / 150.0, "joints": joints, "vertices": verts, "center": center,
            "scale": np.full(n, 150.0)},
            {"dataset": "synth", "split": split, "camera": {"fx": 588.03, "fy": 587.07, "cx": 320, "cy": 240,
                                                            "width": 640, "height": 480},
             "joint_names": list(JOINT_NAMES), "normalization": "center=mean;scale=fixed:150.0;obb=False"})
    return hm_path, str(data)


def base_args(tmp_path, hm_path, data_dir, workdir, **over):
    args = {"workdir": workdir, "data_dir": data_dir, "render_if_empty": "false", "hand_model": hm_path,
            "shape_network": json.dumps(TINY_NET), "batch_size": 4, "num_epochs": 2, "checkpoint_every": 3,
            "summary_every": 2, "eval_every": 4, "eval_batches": 1, "visual_every": 4, "progress": "false",
            "predict": "false", "seed": 1}
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


def run_module(module, args, timeout=600, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    if check:
        assert res.returncode == 0, f"{module} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def test_synth_full_train_evaluate_export(tmp_path):
    hm_path, data_dir = make_setup(tmp_path)
    wd = str(tmp_path / "run")
    run_module("experiments.synth_full", base_args(tmp_path, hm_path, data_dir, wd))
    # 24 frames / batch 4 = 6 steps per epoch, 2 epochs.
    assert os.path.exists(os.path.join(wd, "checkpoints", "ckpt-12.index"))
    flags_txt = open(os.path.join(wd, "flags.txt")).read()
    assert "--batch_size=4" in flags_txt and f"--data_dir={data_dir}" in flags_txt
    assert "experiments.synth_full" in open(os.path.join(wd, "command.txt")).read()
    metrics = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    assert metrics["num_frames"] == 8
    for k in ("mean_joint_error_mm", "shape_error_mm", "point_cloud_error_mm", "model_joint_error_mm"):
        assert np.isfinite(metrics[k]) and metrics[k] > 0, k
    for f in ("per_joint.csv", "threshold_curve.csv", "threshold_curve.png"):
        assert os.path.getsize(os.path.join(wd, "eval", f)) > 0
    rep = json.load(open(os.path.join(wd, "export", "export_report.json")))
    assert rep["custom_ops"] == []
    assert max(rep["max_abs_diff_mm_vs_keras"].values()) < 0.05
    # TensorBoard: loss terms incl. the shape loss, lr, held-out metrics, mesh + image summaries.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(wd, "train"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"loss", "loss/stage1/shape", "loss/stage2/chamfer", "loss/regression/joint",
            "optim/learning_rate"} <= tags, tags
    assert any(t.endswith("/render") for t in tags) and any("overlay" in t for t in tags)
    ev = EventAccumulator(os.path.join(wd, "eval"), size_guidance={"tensors": 0})
    ev.Reload()
    assert "metrics/mean_joint_error_mm" in ev.Tags()["tensors"]
    # The exported model in a fresh process with TensorFlow alone: camera-mm in, camera-mm out.
    pts = np.load if False else None
    script = (
        "import numpy as np, tensorflow as tf, sys\n"
        f"m = tf.saved_model.load({os.path.join(wd, 'export')!r})\n"
        f"x = np.random.default_rng(0).normal(size=(2, {P}, 3)).astype('float32') * 30 + [0, 0, 450]\n"
        "o = m.signatures['serving_default'](points=tf.constant(x, tf.float32))\n"
        "assert not any(k.startswith('hsr_tf') for k in sys.modules)\n"
        "print(o['vertices'].shape, o['joints'].shape, o['dataset_joints'].shape, float(tf.reduce_mean(o['vertices'][..., 2])))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    shapes = res.stdout.strip().splitlines()[-1]
    assert "(2, 21, 3)" in shapes
    # Vertices come out in camera mm: near the 450 mm deep input, not the normalised frame.
    assert 300 < float(shapes.split()[-1]) < 600, shapes


def test_synth_weak_rejects_shape_loss(tmp_path):
    hm_path, data_dir = make_setup(tmp_path, n_train=8, n_test=4)
    res = run_module("experiments.synth_weak", base_args(tmp_path, hm_path, data_dir, str(tmp_path / "w"),
                                                         lambda_shape=1.0, max_steps=1), check=False)
    assert res.returncode != 0 and "lambda_shape" in res.stderr


@pytest.mark.slow
def test_sigkill_and_rerun_resumes(tmp_path):
    """Kill the training program after its first checkpoint; the same command resumes from it."""
    hm_path, data_dir = make_setup(tmp_path, n_train=48)
    wd = str(tmp_path / "k")
    args = base_args(tmp_path, hm_path, data_dir, wd, num_epochs=4, checkpoint_every=2, evaluate="false",
                     export="false", eval_every=0, visual_every=0)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "experiments.synth_weak"] + args, env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = os.path.join(wd, "checkpoints")
    t0 = time.time()
    while time.time() - t0 < 300:
        if os.path.isdir(ck) and any(f.startswith("ckpt-4.") for f in os.listdir(ck)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(f.split("-")[1].split(".")[0]) for f in os.listdir(ck) if f.startswith("ckpt-"))
    assert 4 <= killed_at < 48
    res = run_module("experiments.synth_weak", args)
    assert f"Resumed from" in res.stderr and f"at step {killed_at}" in res.stderr
    assert os.path.exists(os.path.join(ck, "ckpt-48.index"))


FLAGFILE_CHECK = r"""
import json, sys
from absl import flags
from experiments import common
FLAGS = flags.FLAGS
FLAGS(["prog"] + ["--flagfile=" + f for f in sys.argv[1].split(",")] + ["--workdir=/tmp/x"])
sn = json.loads(FLAGS.shape_network) if FLAGS.shape_network else None
out = {"lambda_chamfer": FLAGS.lambda_chamfer, "lambda_mean_shape": FLAGS.lambda_mean_shape,
       "lambda_joint": FLAGS.lambda_joint, "batch_size": FLAGS.batch_size, "shape_network": sn,
       "lambda_shape_full": common.resolve_lambda_shape("full")}
try:
    out["lambda_shape_weak"] = common.resolve_lambda_shape("weak")
except ValueError as e:
    out["lambda_shape_weak"] = "refused"
print(json.dumps(out))
"""


@pytest.mark.parametrize("files,chamfer,shape_full,shape_weak,small", [
    ("demo", 1.0, 1.0, "refused", True),
    ("table2a_joint", 0.0, 0.0, 0.0, False),
    ("table2a_joint_chamfer", 1.0, 0.0, 0.0, False),
    ("table2a_joint_shape", 0.0, 1.0, "refused", False),
    ("table2a_joint_chamfer,cpu_small_net", 1.0, 0.0, 0.0, True),
])
def test_flagfiles_parse_to_the_table_rows(files, chamfer, shape_full, shape_weak, small):
    paths = ",".join(os.path.join(ROOT, "experiments", "flags", f + ".flags") for f in files.split(","))
    res = subprocess.run([sys.executable, "-c", FLAGFILE_CHECK, paths], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["lambda_chamfer"] == chamfer and got["lambda_joint"] == 2.0 and got["lambda_mean_shape"] == 1.0
    assert got["lambda_shape_full"] == shape_full and got["lambda_shape_weak"] == shape_weak
    assert got["batch_size"] == 32
    assert (got["shape_network"] is not None) == small
