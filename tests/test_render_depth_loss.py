"""hsr_tf.losses_weak: smooth L1 and L_D against NumPy."""
import numpy as np
import tensorflow as tf

from hsr_tf import losses_weak


def _np_smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def test_smooth_l1_matches_numpy():
    x = np.linspace(-3, 3, 61)
    np.testing.assert_allclose(losses_weak.smooth_l1(tf.constant(x)).numpy(), _np_smooth_l1(x), rtol=1e-12)


def test_depth_loss_matches_numpy_and_ignores_missing_depth():
    rng = np.random.default_rng(0)
    cov = (rng.random((2, 4, 4)) > 0.3).astype(np.float32)
    z = (500 + 20 * rng.standard_normal((2, 4, 4))).astype(np.float32) * cov
    ref = (500 + 20 * rng.standard_normal((2, 4, 4))).astype(np.float32)
    mask = (rng.random((2, 4, 4)) > 0.3).astype(np.float32)
    ref[0, 0, 0] = 0.0
    mask[0, 0, 0] = 1.0  # hand without a measurement: ignored
    parts = {"mask": tf.constant(cov), "surface_depth": tf.constant(z), "coverage": tf.constant(cov)}
    got = losses_weak.depth_loss(parts, ref * mask, mask, scale=np.array([10.0, 20.0])).numpy()
    target = ref * mask
    valid = (mask < 0.5) | (target > 0)
    per = _np_smooth_l1((z - target) / np.array([10.0, 20.0])[:, None, None])
    np.testing.assert_allclose(got, per[valid].mean(), rtol=1e-5)
