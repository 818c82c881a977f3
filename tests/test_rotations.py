"""Tests for hsr_tf.geometry.rotations against float64 NumPy Rodrigues and tensorflow-graphics."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_graphics.geometry.transformation import rotation_matrix_3d

from hsr_tf.geometry.rotations import axis_angle_to_matrix, pose_feature
from hsr_tf.hand_model.skeleton import axis_angle_to_matrix_np


def _random_aa(rng, n, magnitudes):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return axis * np.asarray(magnitudes)[:, None]


def test_matches_numpy_reference_across_magnitudes(rng):
    mags = np.concatenate([[0.0, 1e-7, 1e-4, 5e-3, 9.9e-3, 1.01e-2, 0.1], rng.uniform(0.2, 3.1, 20)])
    aa = _random_aa(rng, len(mags), mags)
    got = axis_angle_to_matrix(aa.astype(np.float32)).numpy()
    want = axis_angle_to_matrix_np(aa)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # orthonormal with det +1
    np.testing.assert_allclose(got @ np.swapaxes(got, -1, -2), np.broadcast_to(np.eye(3), got.shape), atol=2e-6)
    np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=2e-6)


def test_matches_tensorflow_graphics_for_ordinary_angles(rng):
    mags = rng.uniform(0.05, 3.1, 50)
    aa = _random_aa(rng, 50, mags)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    tfg = rotation_matrix_3d.from_axis_angle(tf.constant(aa / angle, tf.float32), tf.constant(angle, tf.float32))
    np.testing.assert_allclose(axis_angle_to_matrix(aa.astype(np.float32)).numpy(), tfg.numpy(), atol=2e-6)


def test_known_rotation_about_z():
    r = axis_angle_to_matrix(tf.constant([[0.0, 0.0, np.pi / 2]])).numpy()[0]
    np.testing.assert_allclose(r @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("magnitude", [0.0, 3e-3, 0.5, 2.0])
def test_jacobian_matches_float64_central_differences(rng, magnitude):
    aa = _random_aa(rng, 4, [magnitude] * 4)
    x = tf.constant(aa, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        r = tf.reshape(axis_angle_to_matrix(x), [4, 9])
    jac = tape.batch_jacobian(r, x).numpy()  # [4, 9, 3]
    assert np.all(np.isfinite(jac))
    eps = 1e-6
    num = np.zeros((4, 9, 3))
    for k in range(3):
        d = np.zeros(3)
        d[k] = eps
        num[:, :, k] = (axis_angle_to_matrix_np(aa + d) - axis_angle_to_matrix_np(aa - d)).reshape(4, 9) / (2 * eps)
    np.testing.assert_allclose(jac, num, atol=2e-5)


def test_gradient_at_zero_is_skew_generator():
    # dR/d aa_k at 0 is the skew generator E_k; a NaN or a missing series term would break it.
    x = tf.zeros([1, 3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        r = tf.reshape(axis_angle_to_matrix(x), [1, 9])
    jac = tape.batch_jacobian(r, x).numpy()[0].reshape(3, 3, 3)
    gens = np.array([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
                     [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                     [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=np.float64)
    np.testing.assert_allclose(np.moveaxis(jac, -1, 0), gens, atol=1e-7)


def test_compute_gradient_at_zero_and_random(rng):
    for aa in (np.zeros((2, 3)), rng.normal(size=(2, 3))):
        theo, num = tf.test.compute_gradient(axis_angle_to_matrix, [tf.constant(aa, tf.float32)], delta=1e-3)
        assert np.all(np.isfinite(theo[0]))
        np.testing.assert_allclose(theo[0], num[0], atol=2e-3)


def test_shape_errors_and_leading_dims(rng):
    with pytest.raises(ValueError, match="axis_angle"):
        axis_angle_to_matrix(tf.zeros([4, 2]))
    out = axis_angle_to_matrix(tf.zeros([2, 5, 7, 3]))
    assert out.shape == (2, 5, 7, 3, 3)
    with pytest.raises(ValueError, match="rotations"):
        pose_feature(tf.zeros([2, 21, 3]))


def test_pose_feature_drops_root_and_subtracts_identity(rng):
    aa = rng.normal(size=(3, 21, 3))
    rot = axis_angle_to_matrix_np(aa)
    feat = pose_feature(tf.constant(rot, tf.float32)).numpy()
    assert feat.shape == (3, 180)
    want = (rot[:, 1:] - np.eye(3)).reshape(3, 180)
    np.testing.assert_allclose(feat, want, atol=1e-6)
