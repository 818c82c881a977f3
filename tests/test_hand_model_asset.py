"""Tests of the packaged hand model asset (hsr_tf/assets/hand_model.npz) and the layer on it."""
import os

import keras
import numpy as np
import pytest

from hsr_tf.hand_model.layer import HandModelLayer
from hsr_tf.hand_model.model import HandModel, default_asset_path
from hsr_tf.hand_model.skeleton import FINGER_JOINTS, JOINT_NAMES, PARENTS, axis_angle_to_matrix_np
from test_hand_model import numpy_hand_model


@pytest.fixture(scope="module")
def model():
    return HandModel.load()


@pytest.fixture(scope="module")
def layer(model):
    return HandModelLayer(model)


def test_asset_fields_and_size(model):
    assert os.path.getsize(default_asset_path()) < 10e6
    assert model.mean_shape.shape == (1305, 3)
    assert model.shape_basis.shape == (10, 1305, 3)
    assert model.pose_basis.shape == (180, 1305, 3)
    assert model.joint_regressor.shape == (21, 1305)
    assert model.skinning_weights.shape == (1305, 21)
    np.testing.assert_array_equal(model.parents, PARENTS)
    assert model.mean_shape.dtype == np.float32 and model.faces.dtype == np.int32
    assert tuple(model.metadata["joint_names"]) == JOINT_NAMES
    # the shape basis directions are mutually orthogonal (PCA)
    flat = model.shape_basis.reshape(10, -1).astype(np.float64)
    gram = flat @ flat.T
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-4 * np.diag(gram).max()


def test_asset_topology_matches_generator(model):
    from data_prep.synth import hands
    np.testing.assert_array_equal(model.faces, hands.FACES)


def test_neutral_gives_mean_shape_and_regressed_joints(model, layer):
    out = layer(np.zeros((1, 10), np.float32), np.zeros((1, 21, 3), np.float32))
    np.testing.assert_allclose(out["vertices"].numpy()[0], model.mean_shape, atol=1e-3)
    np.testing.assert_allclose(out["joints"].numpy()[0], model.joint_regressor @ model.mean_shape, atol=1e-3)


def test_matches_numpy_reference(model, layer, rng):
    beta = rng.normal(size=(3, 10))
    theta = rng.normal(scale=0.4, size=(3, 21, 3))
    out = layer(beta.astype(np.float32), theta.astype(np.float32))
    verts, joints, rest = numpy_hand_model(model, beta, theta)
    np.testing.assert_allclose(out["vertices"].numpy(), verts, atol=5e-3)
    np.testing.assert_allclose(out["joints"].numpy(), joints, atol=5e-3)
    np.testing.assert_allclose(out["rest_vertices"].numpy(), rest, atol=5e-3)


def test_root_rotation_is_rigid_about_joint_zero(layer, rng):
    beta = rng.normal(size=(1, 10)).astype(np.float32)
    theta = rng.normal(scale=0.3, size=(1, 21, 3)).astype(np.float32)
    theta[0, 0] = 0.0
    base = layer(beta, theta)
    root = np.array([-0.4, 0.9, 1.3])
    theta[0, 0] = root
    moved = layer(beta, theta)
    rot = axis_angle_to_matrix_np(root)
    j0 = base["joints"].numpy()[0, 0]
    np.testing.assert_allclose(moved["vertices"].numpy()[0], (base["vertices"].numpy()[0] - j0) @ rot.T + j0,
                               atol=5e-3)


@pytest.mark.parametrize("finger", range(5))
def test_bending_one_finger_joint_moves_only_that_finger(model, layer, finger):
    from data_prep.synth import hands
    seg_finger = np.full(21, -1)
    for f in range(5):
        seg_finger[FINGER_JOINTS[f]] = f
    vertex_finger = seg_finger[hands.VERTEX_SEGMENT]
    beta = np.zeros((1, 10), np.float32)
    base = layer(beta, np.zeros((1, 21, 3), np.float32))["vertices"].numpy()[0]
    for level in range(3):
        theta = np.zeros((1, 21, 3), np.float32)
        theta[0, FINGER_JOINTS[finger][level]] = [0.8, 0.15, -0.1]
        bent = layer(beta, theta)["vertices"].numpy()[0]
        shift = np.linalg.norm(bent - base, axis=-1)
        assert shift[vertex_finger == finger].max() > 5.0  # the finger itself bends
        others = (vertex_finger >= 0) & (vertex_finger != finger)
        assert shift[others].max() < 1e-4, (level, shift[others].max())


def test_fit_on_a_heldout_subject_against_the_generator(model, layer):
    """Independent check of the recorded fit: pose a held-out subject with the generator's own
    deformation and compare with the model at its projected beta."""
    from data_prep.synth import hands, poses
    from hsr_tf.hand_model import fitting
    report = model.fit_report
    subject_id = report["heldout_subjects"][0]
    subject = hands.make_subjects(subject_id + 1, seed=0)[subject_id]
    library = poses.pose_library(1840, seed=0)
    pick = np.random.default_rng(0).choice(len(library), 24, replace=False)
    theta = subject.theta_for(library.angles[pick])
    target, target_joints = subject.pose(theta)
    beta = fitting.project_betas(subject.rest_vertices[None], model.mean_shape, model.shape_basis)
    out = layer(np.repeat(beta, len(pick), 0).astype(np.float32), theta.astype(np.float32))
    stats = fitting.vertex_error_stats(out["vertices"].numpy(), target)
    assert stats["mean_mm"] < 2.5, stats
    assert stats["p95_mm"] < 6.0, stats
    joint_err = np.linalg.norm(out["joints"].numpy() - target_joints, axis=-1).mean()
    assert joint_err < 3.0, joint_err
    # the model is a real improvement over the mean shape posed with the same theta
    mean_out = layer(np.zeros((len(pick), 10), np.float32), theta.astype(np.float32))
    assert fitting.vertex_error_stats(mean_out["vertices"].numpy(), target)["mean_mm"] > stats["mean_mm"]


def test_packaged_layer_config_round_trip(layer, rng, tmp_path):
    config = layer.get_config()
    assert config["model_spec"]["source"] == "packaged"
    beta = keras.Input((10,))
    theta = keras.Input((21, 3))
    kmodel = keras.Model([beta, theta], layer(beta, theta)["vertices"])
    path = str(tmp_path / "m.keras")
    kmodel.save(path)
    back = keras.models.load_model(path)
    b = rng.normal(size=(2, 10)).astype(np.float32)
    t = rng.normal(scale=0.3, size=(2, 21, 3)).astype(np.float32)
    np.testing.assert_allclose(back.predict([b, t], verbose=0), kmodel.predict([b, t], verbose=0), atol=1e-4)
