"""Palm frame: derotation puts the palm of a rotated hand into the canonical (neutral) frame."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from hsr_tf.hand_model.palm_frame import from_palm_frame, palm_frame, palm_frame_np, to_palm_frame
from hsr_tf.hand_model.skeleton import PALM_JOINTS, forward_kinematics_np

from _hand_model_toy import rest_joints_toy


def _posed_hands(rng, b):
    """Toy neutral hand with bent fingers (palm unchanged), rigidly rotated and moved; returns
    (canonical joints [b, 21, 3], input-frame joints, rotations, translations)."""
    rest = rest_joints_toy()
    theta = np.zeros((b, 21, 3))
    theta[:, 2:, 0] = rng.uniform(0.0, 1.2, (b, 19))  # flex finger joints; MCP/CMC bends keep the palm
    for root in (1, 5, 9, 13, 17):
        theta[:, root] = 0.0
    _, canon = forward_kinematics_np(theta, rest)
    rot = Rotation.random(b, random_state=11).as_matrix()
    shift = rng.normal(size=(b, 3)) * 50.0
    moved = np.einsum("bij,bkj->bki", rot, canon) + shift[:, None]
    return canon, moved, rot, shift


def test_template_derotation_is_exact(rng):
    canon, moved, rot, _ = _posed_hands(rng, 5)
    template = rest_joints_toy()
    r, origin = palm_frame(tf.constant(moved, tf.float32), template, method="template")
    np.testing.assert_allclose(r.numpy(), rot, atol=1e-5)
    derot = to_palm_frame(tf.constant(moved, tf.float32), r, origin).numpy()
    # palm joints land on the template's palm, centred on its palm centroid
    palm_t = template[PALM_JOINTS] - template[PALM_JOINTS].mean(0)
    np.testing.assert_allclose(derot[:, PALM_JOINTS], np.broadcast_to(palm_t, (5, 6, 3)), atol=2e-3)
    # every joint lands on the canonical hand (fingers included), and the inverse maps back
    np.testing.assert_allclose(derot, canon - template[PALM_JOINTS].mean(0), atol=2e-3)
    back = from_palm_frame(tf.constant(derot, tf.float32), r, origin).numpy()
    np.testing.assert_allclose(back, moved, atol=2e-3)


def test_axes_method_is_rotation_invariant_and_near_neutral(rng):
    canon, moved, rot, _ = _posed_hands(rng, 4)
    r_moved, o_moved = palm_frame(tf.constant(moved, tf.float32), method="axes")
    r_canon, o_canon = palm_frame(tf.constant(canon, tf.float32), method="axes")
    np.testing.assert_allclose(r_moved.numpy(), np.einsum("bij,bjk->bik", rot, r_canon.numpy()), atol=1e-5)
    d_moved = to_palm_frame(tf.constant(moved, tf.float32), r_moved, o_moved).numpy()
    d_canon = to_palm_frame(tf.constant(canon, tf.float32), r_canon, o_canon).numpy()
    np.testing.assert_allclose(d_moved, d_canon, atol=2e-3)
    # on the neutral hand the axes frame is close to the identity (fingers +y, thumb +x)
    angle = np.linalg.norm(Rotation.from_matrix(r_canon.numpy()).as_rotvec(), axis=-1)
    assert np.all(angle < np.deg2rad(10.0)), np.rad2deg(angle)
    assert np.all(np.abs(np.linalg.det(r_moved.numpy()) - 1.0) < 1e-5)
    r_np, o_np = palm_frame_np(moved)
    np.testing.assert_allclose(r_np, r_moved.numpy(), atol=1e-5)
    np.testing.assert_allclose(o_np, o_moved.numpy(), atol=1e-3)


def test_errors():
    with pytest.raises(ValueError, match="joints"):
        palm_frame(tf.zeros([2, 20, 3]), method="axes")
    with pytest.raises(ValueError, match="template_joints"):
        palm_frame(tf.zeros([2, 21, 3]), None, method="template")
    with pytest.raises(ValueError, match="method"):
        palm_frame(tf.zeros([2, 21, 3]), method="obb")
