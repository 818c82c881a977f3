"""Tests of HandModel / HandModelLayer on a small hand-made model (independent of the packaged asset).

The NumPy reference below is written from Eqs. 1-3 of the paper with the lead's
``skeleton.forward_kinematics_np`` for the kinematic chain.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from _hand_model_toy import make_toy_model
from hsr_tf.hand_model.layer import HandModelLayer
from hsr_tf.hand_model.model import HandModel
from hsr_tf.hand_model.skeleton import FINGER_JOINTS, axis_angle_to_matrix_np, forward_kinematics_np


def numpy_hand_model(model, beta, theta):
    """Float64 reference: returns (vertices [B,V,3], joints [B,J,3], rest [B,V,3])."""
    beta = np.asarray(beta, np.float64)
    theta = np.asarray(theta, np.float64)
    mean = model.mean_shape.astype(np.float64)
    rest = mean[None] + np.tensordot(beta, model.shape_basis.astype(np.float64), axes=(1, 0))
    rest_joints = np.einsum("jv,bvc->bjc", model.joint_regressor.astype(np.float64), rest)
    rot = axis_angle_to_matrix_np(theta)
    feat = (rot[:, 1:] - np.eye(3)).reshape(len(beta), -1)
    blended = rest + np.tensordot(feat, model.pose_basis.astype(np.float64), axes=(1, 0))
    transforms, joints = forward_kinematics_np(theta, rest_joints, model.parents)
    homo = np.concatenate([blended, np.ones(blended.shape[:2] + (1,))], axis=-1)
    per_vertex = np.einsum("vj,bjrc->bvrc", model.skinning_weights.astype(np.float64), transforms)
    verts = np.einsum("bvrc,bvc->bvr", per_vertex, homo)[..., :3]
    return verts, joints, rest


@pytest.fixture
def toy(rng):
    return make_toy_model(rng)


def test_neutral_gives_mean_shape_and_regressed_joints(toy):
    model, _, _ = toy
    layer = HandModelLayer(model)
    out = layer(np.zeros((2, model.num_betas), np.float32), np.zeros((2, 21, 3), np.float32))
    np.testing.assert_allclose(out["vertices"].numpy(), np.broadcast_to(model.mean_shape, (2,) + model.mean_shape.shape),
                               atol=1e-4)
    np.testing.assert_allclose(out["rest_vertices"].numpy()[0], model.mean_shape, atol=1e-4)
    np.testing.assert_array_equal(layer.mean_shape, model.mean_shape)
    np.testing.assert_allclose(out["joints"].numpy()[1], model.joint_regressor @ model.mean_shape, atol=1e-4)


def test_matches_numpy_reference_random_beta_theta(toy, rng):
    model, _, _ = toy
    beta = rng.normal(size=(5, model.num_betas))
    theta = rng.normal(scale=0.6, size=(5, 21, 3))
    theta[0] = 0.0
    theta[1, 1:] = rng.normal(scale=1e-6, size=(20, 3))  # tiny angles: series branch
    out = HandModelLayer(model)(beta.astype(np.float32), theta.astype(np.float32))
    verts, joints, rest = numpy_hand_model(model, beta, theta)
    np.testing.assert_allclose(out["vertices"].numpy(), verts, atol=2e-3)
    np.testing.assert_allclose(out["joints"].numpy(), joints, atol=2e-3)
    np.testing.assert_allclose(out["rest_vertices"].numpy(), rest, atol=2e-3)


def test_root_rotation_is_rigid_about_joint_zero(toy, rng):
    model, _, _ = toy
    beta = rng.normal(size=(1, model.num_betas)).astype(np.float32)
    theta = rng.normal(scale=0.4, size=(1, 21, 3)).astype(np.float32)
    theta[0, 0] = 0.0  # base pose: no global orientation
    layer = HandModelLayer(model)
    base = layer(beta, theta)
    root = np.array([0.3, -1.1, 0.7])
    theta2 = theta.copy()
    theta2[0, 0] = root
    moved = layer(beta, theta2)
    rot = axis_angle_to_matrix_np(root)
    j0 = base["joints"].numpy()[0, 0]
    want = (base["vertices"].numpy()[0] - j0) @ rot.T + j0
    np.testing.assert_allclose(moved["vertices"].numpy()[0], want, atol=2e-3)
    want_j = (base["joints"].numpy()[0] - j0) @ rot.T + j0
    np.testing.assert_allclose(moved["joints"].numpy()[0], want_j, atol=2e-3)


@pytest.mark.parametrize("finger,level", [(1, 1), (0, 0), (4, 2)])
def test_bending_one_finger_joint_moves_only_that_finger(toy, finger, level):
    model, vertex_finger, _ = toy
    joint = FINGER_JOINTS[finger][level]
    layer = HandModelLayer(model)
    beta = np.zeros((1, model.num_betas), np.float32)
    theta = np.zeros((1, 21, 3), np.float32)
    base = layer(beta, theta)["vertices"].numpy()[0]
    theta[0, joint] = [0.9, 0.1, -0.2]
    bent = layer(beta, theta)["vertices"].numpy()[0]
    moved = np.linalg.norm(bent - base, axis=-1) > 1e-4
    assert moved.any(), "the bend moved nothing"
    assert set(vertex_finger[moved]) == {finger}
    assert not moved[vertex_finger != finger].any()


def _compute_gradient_check(layer, beta, theta0, output, rng):
    """compute_gradient on 12 random projections of the output (one backprop per output element)."""
    size = int(np.prod(layer(beta, theta0)[output].shape))
    proj = tf.constant(rng.normal(size=(size, 12)), tf.float32)

    @tf.function
    def f(t):
        return tf.matmul(tf.reshape(layer(beta, t)[output], [1, -1]), proj)
    theo, num = tf.test.compute_gradient(f, [tf.constant(theta0)], delta=1e-2)
    theo, num = theo[0], num[0]
    assert np.all(np.isfinite(theo))
    scale = np.abs(num).max()
    assert scale > 1.0  # the check is not vacuous
    return np.abs(theo - num).max() / scale


@pytest.mark.parametrize("where", ["zero", "random"])
def test_compute_gradient_wrt_theta(toy, rng, where):
    model, _, _ = toy
    layer = HandModelLayer(model)
    beta = tf.constant(rng.normal(size=(1, model.num_betas)), tf.float32)
    theta0 = np.zeros((1, 21, 3), np.float32) if where == "zero" else \
        rng.normal(scale=0.5, size=(1, 21, 3)).astype(np.float32)
    for output in ("vertices", "joints"):
        assert _compute_gradient_check(layer, beta, theta0, output, rng) < 2e-3


def test_gradient_matches_float64_reference_differences(toy, rng):
    """Analytic TF gradient of a scalar loss vs central differences of the float64 NumPy model."""
    model, _, _ = toy
    layer = HandModelLayer(model)
    beta = rng.normal(size=(2, model.num_betas))
    target = rng.normal(scale=30.0, size=(2, model.num_vertices, 3))
    for theta in (np.zeros((2, 21, 3)), rng.normal(scale=0.5, size=(2, 21, 3))):
        t_var = tf.constant(theta, tf.float32)
        b_var = tf.constant(beta, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch([t_var, b_var])
            loss = tf.reduce_sum(layer(b_var, t_var)["vertices"] * target)
        g_theta, g_beta = tape.gradient(loss, [t_var, b_var])

        def ref(th, be):
            return np.sum(numpy_hand_model(model, be, th)[0] * target)
        eps = 1e-6
        num_theta = np.zeros_like(theta)
        for idx in [(0, 0, 1), (1, 6, 0), (0, 7, 2), (1, 2, 1), (0, 19, 0)]:
            d = np.zeros_like(theta)
            d[idx] = eps
            num_theta[idx] = (ref(theta + d, beta) - ref(theta - d, beta)) / (2 * eps)
            np.testing.assert_allclose(g_theta.numpy()[idx], num_theta[idx], rtol=2e-3,
                                       atol=1e-3 * np.abs(target).sum() / 100)
        d = np.zeros_like(beta)
        d[1, 2] = eps
        num_b = (ref(theta, beta + d) - ref(theta, beta - d)) / (2 * eps)
        np.testing.assert_allclose(g_beta.numpy()[1, 2], num_b, rtol=2e-3)


def test_wrong_shapes_raise_naming_argument(toy):
    model, _, _ = toy
    layer = HandModelLayer(model)
    s = model.num_betas
    with pytest.raises(ValueError, match="beta"):
        layer(np.zeros((2, s + 1), np.float32), np.zeros((2, 21, 3), np.float32))
    with pytest.raises(ValueError, match="beta"):
        layer(np.zeros((s,), np.float32), np.zeros((2, 21, 3), np.float32))
    with pytest.raises(ValueError, match="theta"):
        layer(np.zeros((2, s), np.float32), np.zeros((2, 20, 3), np.float32))
    with pytest.raises(ValueError, match="theta"):
        layer(np.zeros((2, s), np.float32), np.zeros((2, 63), np.float32))
    with pytest.raises(ValueError, match="beta/theta"):
        layer(np.zeros((3, s), np.float32), np.zeros((2, 21, 3), np.float32))


def _fields(model):
    return {f: np.array(getattr(model, f)) for f in
            ("mean_shape", "shape_basis", "pose_basis", "joint_regressor", "skinning_weights", "parents", "faces")}


@pytest.mark.parametrize("field,mutate,needle", [
    ("pose_basis", lambda a: a[:-9], "pose_basis"),
    ("shape_basis", lambda a: a[:, :-1], "shape_basis"),
    ("joint_regressor", lambda a: a.T, "joint_regressor"),
    ("skinning_weights", lambda a: a * 2.0, "skinning_weights"),
    ("mean_shape", lambda a: a[..., None], "mean_shape"),
    ("faces", lambda a: a.astype(np.float32), "faces"),
    ("parents", lambda a: a[::-1].copy(), "parents"),
    ("faces", lambda a: a + 10_000, "faces"),
])
def test_malformed_asset_names_field(toy, tmp_path, field, mutate, needle):
    model, _, _ = toy
    arrays = _fields(model)
    arrays[field] = mutate(arrays[field])
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=needle):
        HandModel.load(path)


def test_missing_field_and_missing_file(toy, tmp_path):
    model, _, _ = toy
    arrays = _fields(model)
    del arrays["skinning_weights"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="skinning_weights"):
        HandModel.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="nothing"):
        HandModel.load(tmp_path / "absent.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="npz"):
        HandModel.load(tmp_path / "corrupt.npz")


def test_save_load_round_trip_with_metadata(toy, tmp_path):
    model, _, _ = toy
    model2 = HandModel(**_fields(model), metadata={"fit_report": '{"mean_mm": 1.5}', "joint_names": np.array(["a"])})
    model2.save(tmp_path / "m.npz")
    back = HandModel.load(tmp_path / "m.npz")
    for f, arr in _fields(model2).items():
        np.testing.assert_array_equal(getattr(back, f), arr)
    assert back.fit_report == {"mean_mm": 1.5}
    assert back.source == str(tmp_path / "m.npz")


def _functional(layer, s):
    beta = keras.Input((s,))
    theta = keras.Input((21, 3))
    out = layer(beta, theta)
    return keras.Model([beta, theta], [out["vertices"], out["joints"], out["rest_vertices"]])


def test_keras_file_round_trip(toy, rng, tmp_path):
    model, _, _ = toy
    s = model.num_betas
    kmodel = _functional(HandModelLayer(model), s)
    beta = rng.normal(size=(3, s)).astype(np.float32)
    theta = rng.normal(scale=0.5, size=(3, 21, 3)).astype(np.float32)
    want = kmodel.predict([beta, theta], verbose=0)
    path = str(tmp_path / "hand.keras")
    kmodel.save(path)
    loaded = keras.models.load_model(path)
    got = loaded.predict([beta, theta], verbose=0)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # a config alone (no weights) must not silently produce zeros
    bare = HandModelLayer.from_config(HandModelLayer(model).get_config())
    with pytest.raises(ValueError, match="weights"):
        bare(beta, theta)


def test_tf_function_saved_model(toy, rng, tmp_path):
    model, _, _ = toy
    layer = HandModelLayer(model)
    s = model.num_betas
    module = tf.Module()
    module.layer = layer
    module.run = tf.function(lambda b, t: layer(b, t),
                             input_signature=[tf.TensorSpec([None, s], tf.float32),
                                              tf.TensorSpec([None, 21, 3], tf.float32)])
    path = os.path.join(tmp_path, "sm")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    beta = rng.normal(size=(2, s)).astype(np.float32)
    theta = rng.normal(scale=0.5, size=(2, 21, 3)).astype(np.float32)
    got = loaded.run(tf.constant(beta), tf.constant(theta))
    verts, joints, _ = numpy_hand_model(model, beta, theta)
    np.testing.assert_allclose(got["vertices"].numpy(), verts, atol=2e-3)
    np.testing.assert_allclose(got["joints"].numpy(), joints, atol=2e-3)
