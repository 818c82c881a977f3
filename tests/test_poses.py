"""Tests of the pose library and the anatomical-angle conventions (data_prep.synth.poses)."""
import numpy as np
import pytest

from data_prep.synth import hands, poses
from hsr_tf.hand_model import skeleton as sk


@pytest.fixture(scope="module")
def library():
    return poses.pose_library()


@pytest.fixture(scope="module")
def subject():
    return hands.make_subjects(1, seed=11)[0]


def test_library_size_names_and_gestures(library):
    assert len(library) >= 1840 and library.angles.shape == (len(library), 21, 3)
    assert len(set(library.names)) == len(library.names)
    for name in ("open", "relaxed", "fist", "point", "pinch", "grasp", "ok", "one", "two", "three", "four",
                 "five", "thumbs_up", "victory", "claw", "rock", "spread"):
        assert name in library.names
        np.testing.assert_array_equal(library.angles[library.names.index(name)], poses.GESTURES[name])


def test_every_pose_within_limits(library):
    assert np.all(poses.within_limits(library.angles))
    lim = np.degrees(poses.JOINT_LIMITS)
    assert np.all(lim[..., 0] <= lim[..., 1])
    # literature ranges (degrees) for the long fingers
    for f in range(1, 5):
        mcp, pip, dip = sk.FINGER_JOINTS[f][:3]
        assert lim[mcp, 0].tolist() == [-20.0, 90.0]
        assert lim[pip, 0].tolist() == [0.0, 110.0]
        assert lim[dip, 0].tolist() == [0.0, 80.0]
    # wrist and tips never move
    fixed = [0] + sk.FINGER_TIPS.tolist()
    assert np.all(library.angles[:, fixed] == 0.0)


def test_within_limits_detects_violations(library):
    pose = library.angles[:1].copy()
    assert poses.within_limits(pose)[0]
    bad = pose.copy()
    bad[0, 6, poses.FLEX] = np.radians(115.0)  # index PIP past 110
    assert not poses.within_limits(bad)[0]
    bad = pose.copy()
    bad[0, 17, poses.ABD] = np.radians(20.0)  # pinky MCP radially past 12
    assert not poses.within_limits(bad)[0]
    bad = pose.copy()
    bad[0, 8, poses.FLEX] = 0.1  # a tip
    assert not poses.within_limits(bad)[0]
    assert poses.within_limits(poses.clip_to_limits(bad))[0]


def test_sampled_poses_are_coupled(library):
    sampled = np.array([n.startswith("sample_") for n in library.names])
    assert sampled.sum() > 1000
    a = np.degrees(library.angles[sampled])
    for f in range(1, 5):
        _, pip, dip = sk.FINGER_JOINTS[f][:3]
        bent = a[:, pip, 0] > 30
        ratio = np.median(a[bent, dip, 0] / a[bent, pip, 0])
        assert 0.55 < ratio < 0.78  # DIP ~ 2/3 PIP
        assert np.corrcoef(a[:, pip, 0], a[:, dip, 0])[0, 1] > 0.8
    # neighbouring fingers correlated
    for f in range(1, 4):
        r = np.corrcoef(a[:, sk.FINGER_ROOTS[f], 0], a[:, sk.FINGER_ROOTS[f + 1], 0])[0, 1]
        assert r > 0.5
    # poses are varied: the library covers most of each PIP range
    assert a[:, 6, 0].min() < 10 and a[:, 6, 0].max() > 100


def test_deterministic(library):
    again = poses.pose_library(seed=0)
    np.testing.assert_array_equal(again.angles, library.angles)
    other = poses.pose_library(seed=1)
    assert np.abs(other.angles - library.angles).max() > 0.1
    small = poses.pose_library(num_poses=100, seed=0)
    assert len(small) == 100 and np.all(poses.within_limits(small.angles))
    # any positive count is served (a small one is a prefix of the named gestures); zero and negatives are refused
    assert len(poses.pose_library(num_poses=3, seed=0)) == 3
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_poses"):
            poses.pose_library(num_poses=bad)


def test_theta_for_conventions(subject, library):
    theta = subject.theta_for(library)
    assert theta.shape == (len(library), 21, 3)
    assert np.all(theta[:, [0] + sk.FINGER_TIPS.tolist()] == 0.0)
    j = subject.rest_joints
    # a pure PIP flexion is a rotation by that angle about z x (bone direction): axis from the joints
    angles = np.zeros((1, 21, 3))
    angles[0, 10, poses.FLEX] = 0.7
    bone = (j[11] - j[10]) / np.linalg.norm(j[11] - j[10])
    axis = np.cross([0.0, 0.0, 1.0], bone)
    axis /= np.linalg.norm(axis)
    np.testing.assert_allclose(subject.theta_for(angles)[0, 10], 0.7 * axis, atol=1e-9)

    def tip_after(joint, component, degrees, tip):
        a = np.zeros((1, 21, 3))
        a[0, joint, component] = np.radians(degrees)
        return subject.pose(subject.theta_for(a)[0])[1][tip] - j[tip]

    assert tip_after(5, poses.FLEX, 30, 8)[2] < -10.0  # index flexion: tip towards the palm (-z)
    assert tip_after(5, poses.ABD, 15, 8)[0] > 5.0  # index abduction > 0: radial (+x)
    assert tip_after(17, poses.ABD, -15, 20)[0] < -5.0  # pinky abduction < 0: ulnar (-x)
    assert tip_after(1, poses.ABD, 30, 4)[2] < -10.0  # thumb palmar abduction: away from the palm (-z)
    assert tip_after(2, poses.FLEX, 40, 4)[0] < -5.0  # thumb flexion: across the palm (-x)


def test_small_libraries_are_the_first_named_gestures():
    # any positive count works; P < 22 takes the first P gestures in GESTURE_NAMES order, deterministically
    big = poses.pose_library(40, seed=3)
    for p in (1, 5, 21, 22):
        lib = poses.pose_library(p, seed=p)
        assert lib.names == list(poses.GESTURE_NAMES[:p]) and lib.angles.shape == (p, 21, 3)
        np.testing.assert_array_equal(lib.angles, big.angles[:p])  # a prefix of every larger library
    assert poses.pose_library(5).names == ["open", "relaxed", "fist", "point", "pinch"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_poses: expected a positive whole number"):
            poses.pose_library(bad)
