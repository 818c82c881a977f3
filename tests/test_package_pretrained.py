"""experiments.package_pretrained on a tiny synthetic run, and --init_from=pretrained:depth in the synthetic programs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_NET = {"sa1_npoint": 32, "sa1_radius": 0.2, "sa1_nsample": 8, "sa1_mlp": [8, 8], "sa2_npoint": 16,
            "sa2_radius": 0.4, "sa2_nsample": 8, "sa2_mlp": [16], "global_mlp": [32], "head_hidden": 16}
SMALL_NET = {"sa1_npoint": 128, "sa1_nsample": 16, "sa1_mlp": [32, 32, 64], "sa2_npoint": 32, "sa2_nsample": 16,
             "sa2_mlp": [64, 64, 128], "global_mlp": [128, 256], "head_hidden": 128}  # the shipped depth model's


def run_module(module, args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{module} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def tiny_set(path):
    """3 subjects (1 held out) x 2 poses x 2 views, rendered by data_prep.synth (real hand model, 1024 points)."""
    from data_prep.synth import render
    config = render.DatasetConfig(num_subjects=3, poses_per_subject=2, views_per_pose=2, seed=0)
    render.generate(str(path), config, num_workers=1, progress=False, log=lambda *a: None)
    return ["--synth_num_subjects=3", "--synth_poses_per_subject=2", "--synth_views_per_pose=2", "--synth_seed=0",
            f"--data_dir={path}", "--norender_if_empty"]


def train_args(workdir, net, **over):
    args = {"workdir": workdir, "shape_network": json.dumps(net), "batch_size": 2, "max_steps": 2, "num_epochs": 5,
            "checkpoint_every": 1, "summary_every": 1, "eval_every": 1, "eval_batches": 1, "visual_every": 0,
            "progress": "false", "evaluate": "false", "export": "false", "predict": "false", "augment": "false"}
    args.update(over)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.mark.slow
def test_package_tiny_run(tmp_path):
    data = tiny_set(tmp_path / "data")
    run = str(tmp_path / "run")
    run_module("experiments.synth_full", data + train_args(run, TINY_NET))
    out_root, card = tmp_path / "assets", tmp_path / "docs" / "card.md"
    run_module("experiments.package_pretrained", [f"--workdir={run}", f"--out_root={out_root}", "--name=tiny",
                                                  f"--card={card}", "--frontal_frames_per_subject=3",
                                                  "--reference_frames=2", "--render_workers=1"])
    from hsr_tf import pretrained
    from hsr_tf.train import loop
    pkg = out_root / "tiny"
    assert sorted(os.listdir(pkg)) == sorted(["card.json", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                                              "data_info.json", "model_config.json", "reference.npz",
                                              "training_data.json"])
    # Model variables only: the training checkpoint also holds Adam's two slots per trainable variable.
    shipped = {n for n, _ in tf.train.list_variables(str(pkg / "ckpt-2"))}
    trained = {n for n, _ in tf.train.list_variables(os.path.join(run, "checkpoints", "ckpt-2"))}
    assert not any(n.startswith("optimizer") for n in shipped) and any(n.startswith("optimizer") for n in trained)
    # ... so it is smaller by about Adam's two float32 slots per trainable parameter.
    n_trainable = json.load(open(pkg / "card.json"))["num_parameters"]
    saved = os.path.getsize(os.path.join(run, "checkpoints", "ckpt-2.data-00000-of-00001")) - \
        os.path.getsize(pkg / "ckpt-2.data-00000-of-00001")
    assert 0.9 * 8 * n_trainable < saved < 1.1 * 8 * n_trainable + 4096, (saved, n_trainable)
    # The package loads with the library call and gives what the run's own training checkpoint gives.
    model = pretrained.load("tiny", root=str(out_root))
    source, _ = loop.load_model_from_workdir(run)
    ref = np.load(pkg / "reference.npz")
    out, want = model(tf.constant(ref["points"]), training=False), source(tf.constant(ref["points"]), training=False)
    for key in pretrained.REFERENCE_KEYS:
        np.testing.assert_allclose(ref[key], want[key].numpy(), atol=1e-5, err_msg=key)
        np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=key)
    c = json.load(open(pkg / "card.json"))
    from data_prep.synth import render
    assert c["step"] == 2 and c["samples_seen"] == 4
    assert c["heldout_subjects"] == render.split_subjects(3, 0.1, 0)["test"]
    assert c["heldout"]["default"]["num_frames"] <= 4 and c["heldout"]["frontal"]["num_frames"] <= 3
    assert len(c["curve"]["mean_joint_error_mm"]) >= 2  # the run's eval scalars at steps 1 and 2
    text = open(card).read()
    assert "not reached" in text and f"{c['heldout']['default']['mean_joint_error_mm']:.1f}" in text
    assert os.path.getsize(str(card)[:-3] + "_curve.png") > 10_000
    # The main job on a run instead of the shipped model: held-out subjects from the run's own data manifest.
    main = tmp_path / "main"
    run_module("experiments.reconstruct", [f"--workdir={main}", f"--model={run}", "--frames_per_subject=2",
                                           "--views=frontal", "--sheet_frames=2", "--overlays=0",
                                           "--render_workers=1"])
    summary = json.load(open(main / "summary.json"))
    assert summary["heldout_subjects"] == c["heldout_subjects"] and summary["checkpoint"].endswith("ckpt-2")
    assert summary["sets"]["frontal"]["num_frames"] == 2 * len(c["heldout_subjects"])


@pytest.mark.slow
def test_init_from_pretrained_depth(tmp_path):
    """synth_weak --init_from=pretrained:depth with learning rate 0: the run's trainable weights are the shipped ones
    (and without --init_from they are not)."""
    from hsr_tf import pretrained
    data = tiny_set(tmp_path / "data")
    for tag, extra in (("init", ["--init_from=pretrained:depth"]), ("scratch", [])):
        wd = str(tmp_path / tag)
        run_module("experiments.synth_weak", data + train_args(wd, SMALL_NET, max_steps=1, learning_rate=0.0,
                                                                 eval_every=0) + extra)
    from hsr_tf.train import loop
    shipped = pretrained.load("depth")
    ran, _ = loop.load_model_from_workdir(str(tmp_path / "init"))
    scratch, _ = loop.load_model_from_workdir(str(tmp_path / "scratch"))
    for a, b, c in zip(shipped.trainable_variables, ran.trainable_variables, scratch.trainable_variables):
        assert a.path == b.path
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)
    assert max(float(np.abs(a.numpy() - c.numpy()).max()) for a, c in
               zip(shipped.trainable_variables, scratch.trainable_variables)) > 1e-3
