"""SavedModel export: camera-mm in/out with the normalisation inside; loads in a fresh process with
TensorFlow alone and matches the Keras model applied to NumPy-normalised points."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

from hsr_tf import export as export_lib
from hsr_tf.geometry import pointcloud

N_PTS, V = 64, 10


@keras.saving.register_keras_serializable(package="hsr_tf_tests")
class TinyMeshNet(keras.Model):
    """points [B, N, 3] -> vertices [B, V, 3], joints [B, 21, 3], dataset_joints [B, 14, 3] (normalised frame)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(16, activation="relu")
        self.d2 = keras.layers.Dense(V * 3 + 21 * 3)
        self.reg = keras.layers.Dense(14, use_bias=False)

    def call(self, points, training=False):
        g = tf.reduce_max(self.d1(points), axis=1)
        o = self.d2(g)
        verts = tf.reshape(o[:, :V * 3], [-1, V, 3]) * 0.1 + tf.reduce_mean(points, 1, keepdims=True)
        joints = tf.reshape(o[:, V * 3:], [-1, 21, 3]) * 0.1
        dj = tf.transpose(self.reg(tf.transpose(verts, [0, 2, 1])), [0, 2, 1])
        return {"vertices": verts, "joints": joints, "dataset_joints": dj, "beta": o[:, :10]}

    def get_config(self):
        return super().get_config()


FACES = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7], [7, 8, 9]], np.int32)


def _cloud(rng, b):
    # A hand-sized blob 400 mm in front of the camera, off-centre.
    return (rng.normal(size=(b, N_PTS, 3)) * [30, 40, 15] + [50, -20, 400]).astype(np.float32)


@pytest.mark.parametrize("center_mode,scale_mode", [("mean", "fixed"), ("bbox", "max_dist")])
def test_export_round_trip_fresh_process(tmp_path, rng, center_mode, scale_mode):
    keras.utils.set_random_seed(0)
    model = TinyMeshNet()
    pts = _cloud(rng, 3)
    model(pts[:1] / 150.0)
    out_dir = str(tmp_path / "sm")
    export_lib.export_saved_model(model, out_dir, FACES, num_points=N_PTS, center_mode=center_mode,
                                  scale_mode=scale_mode, fixed_scale=150.0, metadata={"joint_names": ["a"] * 21})
    np.save(tmp_path / "pts.npy", pts)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        m = tf.saved_model.load({out_dir!r})
        out = m.signatures["serving_default"](points=tf.constant(np.load({str(tmp_path / 'pts.npy')!r})))
        np.savez({str(tmp_path / 'out.npz')!r}, faces=m.signatures["faces"]()["faces"].numpy(),
                 **{{k: v.numpy() for k, v in out.items()}})
        assert not any(k.startswith("hsr_tf") for k in sys.modules), "hsr_tf was imported"
        print(m.metadata.numpy().decode())
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta["normalisation"] == {"center_mode": center_mode, "scale_mode": scale_mode, "fixed_scale": 150.0}
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(got["faces"], FACES)
    # Independent reference: NumPy normalisation from hsr_tf.geometry.pointcloud, Keras model, NumPy inverse.
    for b in range(len(pts)):
        norm = pointcloud.compute_normalization(pts[b], center_mode=center_mode, scale_mode=scale_mode,
                                                fixed_scale=150.0)
        ref = model(norm.apply(pts[b])[None], training=False)
        np.testing.assert_allclose(got["center"][b], norm.center, atol=1e-3)
        np.testing.assert_allclose(got["scale"][b], norm.scale, rtol=1e-5)
        for k in ("vertices", "joints", "dataset_joints"):
            np.testing.assert_allclose(got[k][b], norm.invert(ref[k][0].numpy()), atol=2e-3, err_msg=k)
    assert got["vertices"].shape == (3, V, 3) and got["joints"].shape == (3, 21, 3)
    assert got["dataset_joints"].shape == (3, 14, 3)


def test_loaded_model_helper_and_errors(tmp_path, rng):
    model = TinyMeshNet()
    model(np.zeros((1, N_PTS, 3), np.float32))
    out_dir = str(tmp_path / "sm")
    export_lib.export_saved_model(model, out_dir, FACES, num_points=N_PTS)
    lm = export_lib.LoadedModel(out_dir)
    pts = _cloud(rng, 1)[0]
    out = lm(pts)
    assert out["vertices"].shape == (1, V, 3)
    with pytest.raises(ValueError, match="expected shape"):
        lm(pts[:10])
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        export_lib.LoadedModel(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="center_mode"):
        export_lib.export_saved_model(model, str(tmp_path / "x"), FACES, center_mode="median")
    with pytest.raises(ValueError, match="faces"):
        export_lib.export_saved_model(model, str(tmp_path / "x"), FACES[:, :2])


def test_normalise_points_tf_matches_numpy(rng):
    pts = _cloud(rng, 2)
    for cm in ("mean", "bbox"):
        for sm in ("fixed", "max_dist"):
            n, c, s = export_lib.normalise_points_tf(pts, cm, sm, 120.0)
            for b in range(2):
                ref = pointcloud.compute_normalization(pts[b], center_mode=cm, scale_mode=sm, fixed_scale=120.0)
                np.testing.assert_allclose(n[b].numpy(), ref.apply(pts[b]), atol=1e-5)
