"""Similarity Procrustes: exact recovery, proper rotations, finite and correct gradients."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from hsr_tf.geometry.procrustes import apply_similarity, invert_similarity, similarity_procrustes


def _umeyama_np(x, y):
    """Independent reference: Umeyama (1991) with SVD and the reflection correction, float64."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / len(x)
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    corr = np.diag([1.0, 1.0, sign])
    rot = u @ corr @ vt
    s = np.trace(np.diag(d) @ corr) / (xc ** 2).sum(1).mean()
    return s, rot, my - s * rot @ mx


def _tf(x):
    return tf.constant(np.asarray(x), tf.float32)


def test_recovers_known_similarity(rng):
    b, k = 6, 21
    x = rng.normal(size=(b, k, 3)) * 40.0
    rot = Rotation.random(b, random_state=3).as_matrix()
    s = rng.uniform(1 / 200, 1 / 100, b)
    t = rng.normal(size=(b, 3)) * 0.3
    y = s[:, None, None] * np.einsum("bij,bkj->bki", rot, x) + t[:, None]
    s2, r2, t2 = similarity_procrustes(_tf(x), _tf(y))
    np.testing.assert_allclose(s2.numpy(), s, rtol=1e-5)
    np.testing.assert_allclose(r2.numpy(), rot, atol=1e-5)
    np.testing.assert_allclose(t2.numpy(), t, atol=1e-5)
    np.testing.assert_allclose(apply_similarity(_tf(x), s2, r2, t2).numpy(), y, atol=1e-5)
    # inverse maps back
    si, ri, ti = invert_similarity(s2, r2, t2)
    np.testing.assert_allclose(apply_similarity(_tf(y), si, ri, ti).numpy(), x, atol=2e-3)


def test_weights_ignore_outliers(rng):
    b, k = 3, 12
    x = rng.normal(size=(b, k, 3)) * 30.0
    rot = Rotation.random(b, random_state=4).as_matrix()
    y = 0.5 * np.einsum("bij,bkj->bki", rot, x) + 2.0
    y[:, :3] += rng.normal(size=(b, 3, 3)) * 50.0  # corrupt three points...
    w = np.ones((b, k))
    w[:, :3] = 0.0  # ...and give them zero weight
    s2, r2, t2 = similarity_procrustes(_tf(x), _tf(y), _tf(w))
    np.testing.assert_allclose(s2.numpy(), 0.5, rtol=1e-5)
    np.testing.assert_allclose(r2.numpy(), rot, atol=1e-5)
    np.testing.assert_allclose(t2.numpy(), np.full((b, 3), 2.0), atol=1e-3)
    # unweighted would be wrong
    s3, r3, _ = similarity_procrustes(_tf(x), _tf(y))
    assert np.abs(r3.numpy() - rot).max() > 1e-2


def test_matches_umeyama_on_noisy_and_reflected_targets(rng):
    b, k = 8, 21
    x = rng.normal(size=(b, k, 3)) * 40.0
    rot = Rotation.random(b, random_state=5).as_matrix()
    mirror = np.diag([-1.0, 1.0, 1.0])
    y = np.einsum("bij,bkj->bki", rot, x) * 0.01 + rng.normal(size=(b, k, 3)) * 0.05
    y[::2] = y[::2] @ mirror  # improper target for half of the batch: best proper rotation required
    s2, r2, t2 = similarity_procrustes(_tf(x), _tf(y))
    dets = np.linalg.det(r2.numpy())
    np.testing.assert_allclose(dets, 1.0, atol=1e-5)
    for i in range(b):
        s_ref, r_ref, t_ref = _umeyama_np(x[i], y[i])
        np.testing.assert_allclose(r2.numpy()[i], r_ref, atol=2e-4)
        np.testing.assert_allclose(s2.numpy()[i], s_ref, rtol=2e-4)
        np.testing.assert_allclose(t2.numpy()[i], t_ref, atol=2e-4)


def _grads(x, y):
    xt, yt = tf.Variable(_tf(x)), tf.Variable(_tf(y))
    with tf.GradientTape() as tape:
        s, r, t = similarity_procrustes(xt, yt)
        out = apply_similarity(xt, s, r, t)
        loss = tf.reduce_sum(tf.square(out - yt)) + tf.reduce_sum(r * tf.constant(np.arange(9.0).reshape(3, 3),
                                                                               tf.float32))
    return tape.gradient(loss, [xt, yt])


@pytest.mark.parametrize("case", ["identity", "half_turn", "square", "collinear", "coincident_target"])
def test_gradient_finite_on_degenerate_inputs(case, rng):
    if case == "identity":
        x = rng.normal(size=(1, 21, 3))
        y = x.copy()
    elif case == "half_turn":  # quaternion with w = 0
        x = rng.normal(size=(1, 21, 3))
        y = x @ np.diag([-1.0, -1.0, 1.0])
    elif case == "square":  # planar, two equal singular values (SVD gradient would divide by zero)
        x = np.array([[[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]])
        y = x.copy()
    elif case == "collinear":  # rotation about the line is undetermined
        x = np.linspace(0, 1, 6)[None, :, None] * np.array([1.0, 2.0, 3.0])
        y = x + 0.5
    else:  # all predicted joints at one point (network initialisation)
        x = rng.normal(size=(1, 21, 3))
        y = np.zeros_like(x)
    gx, gy = _grads(x, y)
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(gy.numpy()))


def test_gradient_matches_finite_differences(rng):
    x = rng.normal(size=(1, 8, 3))
    rot = Rotation.random(random_state=7).as_matrix()
    y = 0.7 * x @ rot.T + rng.normal(size=(1, 8, 3)) * 0.1
    weights = np.array([[0.0, 1, 2, 3, 4, 5, 6, 7]]).reshape(1, 8, 1) * np.array([1.0, -0.5, 0.25])

    def f(yv):
        s, r, t = similarity_procrustes(_tf(x), yv)
        return tf.reduce_sum(apply_similarity(_tf(x), s, r, t) * tf.constant(weights, tf.float32))

    yv = tf.Variable(_tf(y))
    with tf.GradientTape() as tape:
        val = f(yv)
    g = tape.gradient(val, yv).numpy()
    eps = 1e-2
    num = np.zeros_like(y)
    for idx in np.ndindex(y.shape):
        yp, ym = y.copy(), y.copy()
        yp[idx] += eps
        ym[idx] -= eps
        num[idx] = (f(_tf(yp)).numpy() - f(_tf(ym)).numpy()) / (2 * eps)
    np.testing.assert_allclose(g, num, atol=2e-2 * np.abs(num).max())


def test_shape_errors():
    with pytest.raises(ValueError, match="source"):
        similarity_procrustes(tf.zeros([2, 5, 2]), tf.zeros([2, 5, 3]))
    with pytest.raises(ValueError, match="target"):
        similarity_procrustes(tf.zeros([2, 5, 3]), tf.zeros([2, 4, 3]))


def test_gradient_correct_with_repeated_singular_values(rng):
    """A planar square has two equal singular values: the rotation is unique and smooth, but an SVD-based
    gradient divides by sigma_1^2 - sigma_2^2 (TF replaces it by 0, which is wrong). Ours must equal finite
    differences of an independent float64 NumPy Umeyama."""
    x = np.array([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    rot = Rotation.random(random_state=9).as_matrix()
    y = x @ rot.T
    w = np.arange(9.0).reshape(3, 3)

    def f_np(yv):
        return (_umeyama_np(x, yv)[1] * w).sum()

    num = np.zeros_like(y)
    for idx in np.ndindex(y.shape):
        yp, ym = y.copy(), y.copy()
        yp[idx] += 1e-6
        ym[idx] -= 1e-6
        num[idx] = (f_np(yp) - f_np(ym)) / 2e-6
    yv = tf.Variable(_tf(y[None]))
    with tf.GradientTape() as tape:
        _, r, _ = similarity_procrustes(_tf(x[None]), yv)
        val = tf.reduce_sum(r * _tf(w))
    g = tape.gradient(val, yv).numpy()[0]
    np.testing.assert_allclose(g, num, atol=1e-4 * np.abs(num).max())
