"""The shipped depth model loads with one call, is small, holds model variables only, and reproduces its shipped
reference outputs; the export of the shipped model serves the same outputs in camera mm."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_depth_matches_shipped_reference_outputs():
    model = pretrained.load("depth")
    ref = np.load(os.path.join(pretrained.asset_dir("depth"), "reference.npz"))
    out = model(tf.constant(ref["points"]), training=False)
    for key in pretrained.REFERENCE_KEYS:
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-4, err_msg=key)
    # Trained weights, not an initialisation: a freshly built model of the same config gives other outputs.
    import keras
    with open(os.path.join(pretrained.asset_dir("depth"), "model_config.json")) as f:
        fresh = keras.saving.deserialize_keras_object(json.load(f))
    assert np.abs(fresh(tf.constant(ref["points"]), training=False)["joints"].numpy() - ref["joints"]).max() > 1e-3


def test_shipped_package_is_small_and_holds_model_variables_only():
    path = pretrained.asset_dir("depth")
    size_mb = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6
    assert size_mb < 25, size_mb
    names = [n for n, _ in tf.train.list_variables(pretrained.checkpoint_prefix("depth"))]
    assert not [n for n in names if n.startswith("optimizer")], "optimizer slots shipped"
    assert any(n.startswith("model_variables/") for n in names)
    info = pretrained.data_info("depth")
    assert info["num_points"] == 1024 and len(info["joint_names"]) == 21 and info["normalization"]["obb"] is False
    # The card's default-view figure is over the whole test split of the training set it names.
    card = pretrained.read_json("depth", "card.json")
    manifest = pretrained.read_json("depth", "training_data.json")
    from data_prep.synth import render
    test = render.split_subjects(manifest["num_subjects"], manifest["test_fraction"], manifest["seed"])["test"]
    assert card["heldout_subjects"] == test
    planned = len(test) * manifest["poses_per_subject"] * manifest["views_per_pose"]
    assert 0.95 * planned <= card["heldout"]["default"]["num_frames"] <= planned  # the renderer skips a few frames


def test_reference_batch_maps_to_camera_mm():
    """reference_batch + to_camera_mm equals scale * x + centre computed by hand."""
    from hsr_tf.data.reader import to_camera_mm
    batch = pretrained.reference_batch("depth")
    ref = np.load(os.path.join(pretrained.asset_dir("depth"), "reference.npz"))
    mm = to_camera_mm(batch["points"], batch).numpy()
    np.testing.assert_allclose(mm, ref["points"] * ref["scale"][:, None, None] + ref["center"][:, None], atol=1e-3)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="name"):
        pretrained.load("rgb_unknown")


@pytest.mark.slow
def test_export_pretrained_serves_the_reference_outputs(tmp_path):
    """python -m experiments.export --pretrained=depth: a SavedModel whose serving_default, fed the reference points in
    camera mm, returns the shipped reference outputs in camera mm."""
    out = tmp_path / "export"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "experiments.export", "--pretrained=depth", f"--export_dir={out}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    rep = json.load(open(out / "export_report.json"))
    assert rep["custom_ops"] == [] and max(rep["max_abs_diff_mm_vs_keras"].values()) < 0.05
    ref = np.load(os.path.join(pretrained.asset_dir("depth"), "reference.npz"))
    pts_mm = ref["points"] * ref["scale"][:, None, None] + ref["center"][:, None]
    served = tf.saved_model.load(str(out)).signatures["serving_default"](points=tf.constant(pts_mm, tf.float32))
    for key in pretrained.REFERENCE_KEYS:
        want = ref[key] * ref["scale"][:, None, None] + ref["center"][:, None]
        np.testing.assert_allclose(served[key].numpy(), want, atol=0.05, err_msg=key)


RGB_ASSET = os.path.join(pretrained.ASSET_ROOT, "rgb")


@pytest.mark.skipif(not os.path.isfile(os.path.join(RGB_ASSET, "model_config.json")),
                    reason="no shipped RGB model yet (hsr_tf/assets/pretrained/rgb is written by "
                           "experiments.package_pretrained --name=rgb from the CPU-sized Table 1 run)")
def test_shipped_rgb_model_matches_its_reference_and_card():
    """load('rgb'): an RGBMeshNet that reproduces its reference outputs; small, variables only; the card's test
    split is the whole test split of the training set it names."""
    model = pretrained.load("rgb")
    assert type(model).__name__ == "RGBMeshNet" and pretrained.kind("rgb") == "rgb"
    ref = pretrained.rgb_reference_batch("rgb")
    inputs = {k: ref[k] for k in pretrained.RGB_REFERENCE_INPUTS}
    out = model(inputs, training=False)
    for key in pretrained.RGB_REFERENCE_KEYS:
        np.testing.assert_allclose(out[key].numpy(), ref[f"reference/{key}"].numpy(), atol=1e-3, err_msg=key)
    import keras
    with open(os.path.join(RGB_ASSET, "model_config.json")) as f:
        fresh = keras.saving.deserialize_keras_object(json.load(f))
    assert np.abs(fresh(inputs, training=False)["joints"].numpy() - ref["reference/joints"].numpy()).max() > 1e-2
    size_mb = sum(os.path.getsize(os.path.join(RGB_ASSET, f)) for f in os.listdir(RGB_ASSET)) / 1e6
    assert size_mb < 25, size_mb
    names = [n for n, _ in tf.train.list_variables(pretrained.checkpoint_prefix("rgb"))]
    assert not [n for n in names if n.startswith("optimizer")] and any(n.startswith("model_variables/") for n in names)
    card, manifest = pretrained.read_json("rgb", "card.json"), pretrained.read_json("rgb", "training_data.json")
    from data_prep.synth import render
    test = render.split_subjects(manifest["num_subjects"], manifest["test_fraction"], manifest["seed"])["test"]
    assert card["kind"] == "rgb" and card["heldout_subjects"] == test
    planned = len(test) * manifest["poses_per_subject"] * manifest["views_per_pose"]
    assert 0.95 * planned <= card["heldout"]["default"]["num_frames"] <= planned  # the renderer skips a few frames
