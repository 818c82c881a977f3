"""RGB SavedModel: loads in a fresh process with TensorFlow alone and matches the Keras model for right and
left hands (left: mirrored in and back out), with the image resized to the network's size inside the graph.

References are computed without the signature's code: the 256 -> 64 resize as a NumPy 4 x 4 block mean, the
crop intrinsics by hand, joints_uv as the NumPy projection of the returned joints by the caller's camera."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import export as export_lib
from hsr_tf.models.rgb_mesh_net import RGBMeshNet

SMALL = dict(image_size=64, filters=16, num_residual=1, gcn_fc=32, gcn_features=(8, 8), regressor_features=(4, 8),
             regressor_hidden=16, mlp_hidden=16)
S = 256


def small_net(image_size=64, seed=0):
    keras.utils.set_random_seed(seed)
    net = RGBMeshNet("mesh", **dict(SMALL, image_size=image_size))
    net(net.example_input(1))
    # Non-trivial batch-norm statistics, so that inference differs from a freshly initialised layer.
    rng = np.random.default_rng(seed)
    for v in net.variables:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
        elif "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.1, v.shape).astype(np.float32))
    return net


def inputs(rng, b=4):
    """b frames; frame 1 is frame 0 flipped left-right and declared left (its camera mirrored: cx -> 255 - cx)."""
    yy, xx = np.mgrid[0:S, 0:S]
    image = np.empty((b, S, S, 3), np.uint8)
    for i in range(b):  # a smooth random pattern (asymmetric, so that a wrong flip shows)
        f = rng.uniform(0.01, 0.05, size=(3, 2))
        image[i] = (127 + 120 * np.sin(f[:, 0] * xx[..., None] + f[:, 1] * yy[..., None] ** 1.1)).astype(np.uint8)
    camera = np.stack([rng.uniform(300, 500, b), rng.uniform(300, 500, b), rng.uniform(100, 150, b),
                       rng.uniform(100, 150, b)], -1).astype(np.float32)
    root = rng.uniform(350, 700, b).astype(np.float32)
    bone = rng.uniform(22, 35, b).astype(np.float32)
    left = np.array([i % 2 == 1 for i in range(b)])
    image[1] = image[0, :, ::-1]
    camera[1] = camera[0] * [1, 1, 0, 1] + [0, 0, S - 1 - camera[0, 2], 0]
    root[1], bone[1] = root[0], bone[0]
    return dict(image=image, camera=camera, root_depth=root, bone_scale=bone, is_left=left)


def reference(net, x):
    """Expected outputs per frame from the Keras model, mirroring and resizing done here in NumPy."""
    out = {k: [] for k in ("vertices", "joints", "joints_uv", "heatmaps")}
    size = net.image_size
    k = S // size
    for b in range(len(x["image"])):
        img, cam = x["image"][b].astype(np.float64) / 255.0, x["camera"][b].astype(np.float64).copy()
        if x["is_left"][b]:
            img, cam[2] = img[:, ::-1], S - 1 - cam[2]
        img = img.reshape(size, k, size, k, 3).mean(axis=(1, 3))  # area resize by an integer factor
        cam_net = np.array([cam[0] / k, cam[1] / k, (cam[2] + 0.5) / k - 0.5, (cam[3] + 0.5) / k - 0.5])
        o = net({"image": tf.constant(img[None], tf.float32), "camera": tf.constant(cam_net[None], tf.float32),
                 "root_depth": tf.constant(x["root_depth"][b:b + 1]), "bone_scale": tf.constant(x["bone_scale"][b:b + 1])},
                training=False)
        verts, joints = o["vertices"][0].numpy(), o["joints"][0].numpy()
        hm = tf.image.resize(o["heatmaps"], [64, 64], method="bilinear")[0].numpy() if size != S else \
            o["heatmaps"][0].numpy()
        if x["is_left"][b]:
            verts, joints, hm = verts * [-1, 1, 1], joints * [-1, 1, 1], hm[:, ::-1]
        c = x["camera"][b]
        uv = np.stack([c[2] + c[0] * joints[:, 0] / joints[:, 2], c[3] - c[1] * joints[:, 1] / joints[:, 2]], -1)
        for key, val in (("vertices", verts), ("joints", joints), ("joints_uv", uv), ("heatmaps", hm)):
            out[key].append(val)
    return {key: np.stack(v) for key, v in out.items()}


def test_rgb_export_fresh_process_both_hands(tmp_path):
    net = small_net()
    sm = str(tmp_path / "sm")
    export_lib.export_rgb_saved_model(net, sm, metadata={"joint_names": [f"j{i}" for i in range(21)]})
    x = inputs(np.random.default_rng(3))
    np.savez(tmp_path / "in.npz", **x)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        m = tf.saved_model.load({sm!r})
        x = dict(np.load({str(tmp_path / 'in.npz')!r}))
        out = m.signatures["serving_default"](**{{k: tf.constant(v) for k, v in x.items()}})
        faces = m.signatures["faces"]()
        np.savez({str(tmp_path / 'out.npz')!r}, faces=faces["faces"].numpy(), faces_left=faces["faces_left"].numpy(),
                 **{{k: v.numpy() for k, v in out.items()}})
        assert not any(k.startswith("hsr_tf") for k in sys.modules), "hsr_tf was imported"
        print(m.metadata.numpy().decode())
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta["kind"] == "rgb" and meta["model_image_size"] == 64 and meta["input_size"] == S
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(got["faces"], net.faces)
    np.testing.assert_array_equal(got["faces_left"], net.faces[:, ::-1])
    ref = reference(net, x)
    assert got["vertices"].shape == (4, 1305, 3) and got["heatmaps"].shape == (4, 64, 64, 21)
    for key, tol in (("vertices", 0.05), ("joints", 0.05), ("joints_uv", 0.01), ("heatmaps", 1e-4)):
        np.testing.assert_allclose(got[key], ref[key], atol=tol, err_msg=key)
    # Frame 1 is frame 0 seen in a mirror: declared left, every output is frame 0's mirrored.
    np.testing.assert_allclose(got["vertices"][1], got["vertices"][0] * [-1, 1, 1], atol=0.05)
    np.testing.assert_allclose(got["joints_uv"][1, :, 0], S - 1 - got["joints_uv"][0, :, 0], atol=0.01)
    np.testing.assert_allclose(got["heatmaps"][1], got["heatmaps"][0][:, ::-1], atol=1e-5)
    # A left frame's output differs from running it as a right hand (the flag is not ignored).
    assert np.abs(got["vertices"][1] - got["vertices"][0]).max() > 1.0


@pytest.mark.slow
def test_rgb_export_native_size_and_helper(tmp_path):
    """A network at 256 px: no resizing; LoadedRGBModel checks NumPy dtypes and shapes."""
    net = small_net(image_size=S, seed=1)
    sm = str(tmp_path / "sm")
    export_lib.export_rgb_saved_model(net, sm)
    x = inputs(np.random.default_rng(5), b=2)
    model = export_lib.LoadedRGBModel(sm)
    got = model(**x)
    ref = reference(net, x)
    for key, tol in (("vertices", 0.05), ("joints", 0.05), ("joints_uv", 0.01), ("heatmaps", 1e-4)):
        np.testing.assert_allclose(got[key], ref[key], atol=tol, err_msg=key)
    with pytest.raises(ValueError, match="image: expected RGB crops of dtype uint8, found float32"):
        model(**{**x, "image": x["image"].astype(np.float32) / 255.0})
    with pytest.raises(ValueError, match=r"camera: expected shape \[B, 4\]"):
        model(**{**x, "camera": x["camera"][:, :3]})
    with pytest.raises(ValueError, match="expected a depth SavedModel"):
        export_lib.LoadedModel(sm)
    with pytest.raises(ValueError, match="image_size"):
        export_lib.RGBServingModule(keras.layers.Dense(3), net.faces)


def test_mirror_and_resize_camera_by_hand():
    cam = tf.constant([[400.0, 410.0, 100.0, 120.0]])
    np.testing.assert_allclose(export_lib.mirror_camera(cam, 256).numpy(), [[400, 410, 155, 120]])
    # 2x shrink: big-crop pixel centres 0 and 1 average into small-crop centre 0, so u = 0.5 -> 0, u = 100 -> 49.75.
    np.testing.assert_allclose(export_lib.resize_camera(cam, 256, 128).numpy(), [[200, 205, 49.75, 59.75]])
    np.testing.assert_allclose(export_lib.resize_camera(tf.constant([[1.0, 1.0, 0.5, 0.5]]), 256, 128).numpy(),
                               [[0.5, 0.5, 0.0, 0.0]])


def make_rgb_workdir(workdir, net, write_kind=True):
    """A run directory as the RGB training program leaves it: model_config.json, run_kind.txt, a checkpoint."""
    from hsr_tf.train import loop, run_kind

    os.makedirs(workdir, exist_ok=True)
    loop.save_model_config(net, str(workdir))
    if write_kind:
        run_kind.write_run_kind(str(workdir), "rgb")
    ckpt = tf.train.Checkpoint(**loop.model_checkpoint_objects(net))
    return ckpt.save(os.path.join(str(workdir), loop.CHECKPOINT_SUBDIR, "ckpt"))


@pytest.mark.parametrize("write_kind", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_export_program_detects_rgb_run(tmp_path, write_kind):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    net = small_net(seed=2)
    wd = tmp_path / "run"
    make_rgb_workdir(wd, net, write_kind)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=root)
    res = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={wd}", "--check_frames=2",
                          f"--data_dir={tmp_path / 'no_data'}"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(wd / "export" / "export_report.json") as f:
        report = json.load(f)
    assert report["kind"] == "rgb" and report["model_image_size"] == 64
    assert "synthetic patterns" in report["check_frames"]
    assert max(report["max_abs_diff"].values()) < 0.05
    # The exported weights are the checkpoint's: same outputs as the network the workdir was made from.
    x = inputs(np.random.default_rng(7), b=2)
    got = export_lib.LoadedRGBModel(str(wd / "export"))(**x)
    np.testing.assert_allclose(got["vertices"], reference(net, x)["vertices"], atol=0.05)
