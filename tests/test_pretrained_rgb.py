"""The RGB model as a shipped package: experiments.package_pretrained on a tiny RGB run, hsr_tf.pretrained.load('rgb'),
experiments.export --pretrained=rgb, --init_from for experiments.rgb_synth, and the errors for a model of the wrong
kind. (The shipped package itself: tests/test_pretrained.py.)"""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import _package_rgb, common, model_spec, rgb_run
from hsr_tf import pretrained
from hsr_tf.models.rgb_mesh_net import RGBMeshNet
from hsr_tf.train import loop, run_kind
from tests.test_rgb_pipeline import parsed  # the flag-parsing context of the RGB program tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments", "flags", "rgb_demo.flags")
SMALL = dict(filters=16, num_residual=1, gcn_fc=32, gcn_features=(8, 8), regressor_features=(4, 8), regressor_hidden=16,
             mlp_hidden=16)  # a narrow network for the runs made up in a test (tests/test_export_rgb.py's)


def tiny_args(data_dir, workdir, steps=(1, 1, 2), *extra):
    """The demo flagfile on a tiny set (2 subjects: 1 train, 1 test; 4 frames each) and schedule."""
    return ["--flagfile=" + DEMO, f"--data_dir={data_dir}", f"--workdir={workdir}", "--synth_num_subjects=2",
            "--synth_poses_per_subject=4", "--synth_views_per_pose=1", "--synth_workers=1", "--batch_size=2",
            f"--phase1_steps={steps[0]}", f"--phase2_steps={steps[1]}", f"--phase3_steps={steps[2]}",
            "--checkpoint_every=1", "--summary_every=1", "--eval_every=0", "--visual_every=0", "--num_overlays=0",
            "--noexport", "--nopredict", "--noprogress"] + list(extra)


def run_module(module, args, env_extra=None, expect_ok=True, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, **(env_extra or {}))
    res = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    if expect_ok:
        assert res.returncode == 0, f"{module} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny RGB run (its own W/eval) and the package written from it under <tmp>/assets/rgb."""
    tmp = tmp_path_factory.mktemp("rgb_pkg")
    data, wd = str(tmp / "data"), str(tmp / "run")
    with parsed(tiny_args(data, wd)):
        rgb_run.run()
    out_root, card = tmp / "assets", tmp / "docs" / "model_card_rgb.md"
    res = run_module("experiments.package_pretrained", [f"--workdir={wd}", f"--out_root={out_root}", "--name=rgb",
                                                        f"--card={card}", "--reference_frames=3"])
    return {"data": data, "workdir": wd, "root": str(out_root), "card": str(card), "stdout": res.stdout}


def fake_rgb_workdir(path, seed=1, **over):
    """A run directory as experiments.rgb_synth publishes it (model_config.json, run_kind.txt, W/checkpoints),
    holding a freshly initialised network of SMALL widths (``over`` changes them)."""
    keras.utils.set_random_seed(seed)
    net = RGBMeshNet("mesh", **dict(SMALL, image_size=64, **over))
    net(net.example_input(1), training=False)
    os.makedirs(path, exist_ok=True)
    loop.save_model_config(net, str(path))
    run_kind.write_run_kind(str(path), "rgb")
    tf.train.Checkpoint(**loop.model_checkpoint_objects(net)).save(os.path.join(str(path), "checkpoints", "ckpt"))
    return net


@pytest.mark.slow
def test_package_tiny_rgb_run(tiny_run):
    pkg = os.path.join(tiny_run["root"], "rgb")
    assert sorted(os.listdir(pkg)) == sorted(["card.json", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                                              "data_info.json", "model_config.json", "reference.npz",
                                              "run_kind.txt", "training_data.json"])
    assert pretrained.kind("rgb", root=tiny_run["root"]) == "rgb"
    # Variables only (no RMSprop slots, no step), unlike the run's phase-3 Trainer checkpoint.
    shipped = {n for n, _ in tf.train.list_variables(os.path.join(pkg, "ckpt-2"))}
    phase3 = {n for n, _ in tf.train.list_variables(os.path.join(tiny_run["workdir"], "phase3", "checkpoints",
                                                                 "ckpt-2"))}
    assert not any(n.startswith("optimizer") for n in shipped) and any(n.startswith("optimizer") for n in phase3)
    # load('rgb') gives the stored reference outputs on the stored reference inputs, and so does the run itself.
    model = pretrained.load("rgb", root=tiny_run["root"])
    source, _ = loop.load_model_from_workdir(tiny_run["workdir"])
    ref = pretrained.rgb_reference_batch("rgb", root=tiny_run["root"])
    assert ref["image_uint8"].shape == (3, 64, 64, 3) and ref["image_uint8"].dtype == np.uint8
    inputs = {k: ref[k] for k in pretrained.RGB_REFERENCE_INPUTS}
    out, want = model(inputs, training=False), source(inputs, training=False)
    for key in pretrained.RGB_REFERENCE_KEYS:
        np.testing.assert_allclose(out[key].numpy(), ref[f"reference/{key}"].numpy(), atol=1e-4, err_msg=key)
        np.testing.assert_allclose(want[key].numpy(), ref[f"reference/{key}"].numpy(), atol=1e-4, err_msg=key)
    # The reference frames are the test split's first frames, as the reader serves them (uint8-rounded images).
    first = next(iter(_package_rgb.heldout_dataset(tiny_run["data"], model, _package_rgb.run_settings(
        tiny_run["workdir"]), batch_size=3)))
    np.testing.assert_allclose(ref["image"].numpy(), first["image"].numpy(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(ref["camera"].numpy(), first["camera"].numpy(), atol=1e-5)
    # The card's held-out figures are the run's own final evaluation of the same weights (whole test split).
    card = json.load(open(os.path.join(pkg, "card.json")))
    own = json.load(open(os.path.join(tiny_run["workdir"], "eval", "metrics.json")))
    for key in ("pose_error_mm", "mesh_error_mm", "aligned_mesh_error_mm", "joint_2d_error_px",
                "mean_baseline_pose_error_mm", "mean_baseline_mesh_error_mm", "auc_20_50"):
        assert card["heldout"]["default"][key] == pytest.approx(own[key], rel=1e-4, abs=1e-4), key
    from data_prep.synth import render
    assert card["kind"] == "rgb" and card["step"] == 2 and card["test_frames"] == 4 and card["train_frames"] == 4
    assert card["heldout_subjects"] == render.split_subjects(2, 0.1, 0)["test"]
    assert card["phase_steps"] == {"phase1": 1, "phase2": 1, "phase3": 2}
    assert card["network"]["filters"] == 32 and card["network"]["image_size"] == 64
    info = pretrained.data_info("rgb", root=tiny_run["root"])
    assert info["kind"] == "rgb" and info["model_image_size"] == 64 and len(info["joint_names"]) == 21
    assert info["heatmap_sigma"] == 2.0  # the demo flagfile's --heatmap_sigma, read from the run's flags.txt
    text = open(tiny_run["card"]).read()
    assert "pretrained RGB model" in text and "NOT the paper's" in text
    assert f"| model | {card['heldout']['default']['pose_error_mm']:.1f} |" in text
    assert f"| mean baseline | {card['heldout']['default']['mean_baseline_pose_error_mm']:.1f} |" in text


@pytest.mark.slow
def test_export_pretrained_rgb_serves_the_reference_outputs(tiny_run, tmp_path):
    """experiments.export --pretrained=rgb (package root from HSR_TF_PRETRAINED_ROOT): the RGB serving_default of an
    exported run, checked against the Keras model and the package's reference outputs."""
    from hsr_tf import export as export_lib

    out = tmp_path / "export"
    run_module("experiments.export", ["--pretrained=rgb", f"--export_dir={out}", "--check_frames=3"],
               env_extra={pretrained.ROOT_ENV: tiny_run["root"]})
    rep = json.load(open(out / "export_report.json"))
    assert rep["kind"] == "rgb" and "reference frames" in rep["check_frames"]
    assert max(rep["max_abs_diff"].values()) < 0.05 and max(rep["max_abs_diff_vs_reference"].values()) < 0.05
    # By hand: the 64 px reference crops repeated 4 x 4 into the signature's 256 px input.
    ref = pretrained.rgb_reference_batch("rgb", root=tiny_run["root"])
    served = export_lib.LoadedRGBModel(str(out))(
        image=np.repeat(np.repeat(ref["image_uint8"], 4, axis=1), 4, axis=2),
        camera=export_lib.resize_camera(ref["camera"], 64, 256).numpy(), root_depth=ref["root_depth"].numpy(),
        bone_scale=ref["bone_scale"].numpy(), is_left=np.zeros(3, bool))
    np.testing.assert_allclose(served["vertices"], ref["reference/vertices"].numpy(), atol=0.05)
    np.testing.assert_allclose(served["joints_uv"], (ref["reference/joints_uv"].numpy() + 0.5) * 4 - 0.5, atol=0.05)
    assert served["heatmaps"].shape == (3, 64, 64, 21)


@pytest.mark.slow
def test_rgb_synth_init_from_pretrained_and_run(tiny_run, tmp_path, monkeypatch):
    """rgb_synth --init_from=pretrained:rgb with learning rate 0 and phase 3 only: the published trainable weights
    are the package's; without --init_from they are not. (--init_from=WORKDIR: the next test, on rgb_run.init_from.)"""
    monkeypatch.setenv(pretrained.ROOT_ENV, tiny_run["root"])
    source = pretrained.load("rgb")
    got = {}
    for tag, extra in (("pretrained", ["--init_from=pretrained:rgb"]), ("scratch", [])):
        wd = str(tmp_path / tag)
        with parsed(tiny_args(tiny_run["data"], wd, (0, 0, 1), "--learning_rate=0", "--noevaluate", *extra)):
            rgb_run.run()
        got[tag], _ = loop.load_model_from_workdir(wd)
    for a, b in zip(source.trainable_variables, got["pretrained"].trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)
    assert max(float(np.abs(a.numpy() - c.numpy()).max()) for a, c in
               zip(source.trainable_variables, got["scratch"].trainable_variables)) > 1e-4


def test_init_from_copies_an_rgb_run_and_refuses_other_models(tmp_path):
    src = fake_rgb_workdir(tmp_path / "src", seed=1)
    keras.utils.set_random_seed(2)
    net = RGBMeshNet("mesh", **dict(SMALL, image_size=64))  # tuples where the source's config has lists
    net(net.example_input(1), training=False)
    assert max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(src.variables, net.variables)) > 1e-3
    ckpt = rgb_run.init_from(net, str(tmp_path / "src"))
    assert ckpt.endswith("ckpt-1")
    for a, b in zip(src.variables, net.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    # Another network configuration: named, not copied.
    narrow = RGBMeshNet("mesh", **dict(SMALL, image_size=64, filters=8))
    narrow(narrow.example_input(1), training=False)
    with pytest.raises(ValueError, match=r"configuration.*'filters': \(16, 8\)"):
        rgb_run.init_from(narrow, str(tmp_path / "src"))
    # A depth run (no run_kind.txt) into the RGB network, and the RGB run into a depth program.
    (tmp_path / "depth_run").mkdir()
    with pytest.raises(ValueError, match="expected an RGB model.*found a depth model"):
        rgb_run.init_from(net, str(tmp_path / "depth_run"))
    with pytest.raises(ValueError, match="expected a depth model for this depth program, found an RGB model"):
        model_spec.init_from(None, str(tmp_path / "src"), 1024)


def test_package_refuses_wrong_kind_and_partial_checkpoints(tmp_path):
    (tmp_path / "depth_run").mkdir()
    res = run_module("experiments.package_pretrained", [f"--workdir={tmp_path / 'depth_run'}", "--name=rgb",
                                                        f"--out_root={tmp_path / 'assets'}", "--card="],
                     expect_ok=False, timeout=300)
    assert res.returncode != 0
    assert "--name=rgb: expected an RGB run to package under that name, found a depth run" in res.stderr
    assert not (tmp_path / "assets").exists()
    wd = tmp_path / "rgb_run"
    fake_rgb_workdir(wd)
    with pytest.raises(ValueError, match="found a phase1 checkpoint"):
        _package_rgb.load_final(str(wd), str(wd / "phase1" / "checkpoints" / "ckpt-5"))
    shutil.rmtree(wd / "checkpoints")
    with pytest.raises(FileNotFoundError, match="published final network.*--checkpoint=W/phase3"):
        _package_rgb.load_final(str(wd))


def test_load_refuses_a_package_of_the_other_kind(tmp_path):
    """A directory holding an RGB model under the shipped name 'depth' (or a depth one under 'rgb') is refused."""
    fake_rgb_workdir(tmp_path / "depth")
    os.rename(tmp_path / "depth" / "checkpoints" / "ckpt-1.index", tmp_path / "depth" / "ckpt-1.index")
    os.rename(tmp_path / "depth" / "checkpoints" / "ckpt-1.data-00000-of-00001",
              tmp_path / "depth" / "ckpt-1.data-00000-of-00001")
    with pytest.raises(ValueError, match="expected the 'depth' package to hold a depth model, found an RGB model"):
        pretrained.load("depth", root=str(tmp_path))
    shutil.copytree(tmp_path / "depth", tmp_path / "rgb")
    assert type(pretrained.load("rgb", root=str(tmp_path))).__name__ == "RGBMeshNet"
    os.remove(tmp_path / "rgb" / run_kind.RUN_KIND_FILE)
    with pytest.raises(ValueError, match="expected the 'rgb' package to hold an RGB model, found a depth model"):
        pretrained.load("rgb", root=str(tmp_path))
    with pytest.raises(ValueError, match="expected an RGB package"):
        pretrained.rgb_reference_batch("rgb", root=str(tmp_path))


def test_card_paths_are_relative_to_their_worktree(tmp_path):
    """The committed card names the run as a reader's checkout does: no machine's absolute paths, no venv python."""
    (tmp_path / "tree" / ".git").mkdir(parents=True)
    run = tmp_path / "tree" / "runs" / "r1"
    run.mkdir(parents=True)
    assert _package_rgb.portable_path(str(run)) == os.path.join("runs", "r1")
    assert _package_rgb.portable_path(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    cmd = f"/opt/venv/bin/python3 -m experiments.package_pretrained --workdir={run} --name=rgb '--card_note=a b'"
    assert _package_rgb.portable_command(cmd) == \
        "python -m experiments.package_pretrained --workdir=runs/r1 --name=rgb '--card_note=a b'"
