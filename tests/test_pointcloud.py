"""Point-cloud sampling and normalisation (NumPy front end)."""
import numpy as np
import pytest

from hsr_tf.geometry import pointcloud as pc


def test_sample_without_replacement_when_enough(rng):
    pts = rng.normal(size=(5000, 3))
    s, idx = pc.sample_points(pts, 1024, rng)
    assert s.shape == (1024, 3) and len(np.unique(idx)) == 1024
    assert np.array_equal(s, pts[idx])


def test_sample_keeps_all_then_repeats_when_few(rng):
    pts = rng.normal(size=(300, 3))
    s, idx = pc.sample_points(pts, 1024, rng)
    assert s.shape == (1024, 3)
    assert set(idx.tolist()) == set(range(300))  # every point kept
    counts = np.bincount(idx, minlength=300)
    assert counts.sum() == 1024 and counts.min() >= 1


def test_sample_is_seeded(rng):
    pts = rng.normal(size=(2000, 3))
    a = pc.sample_points(pts, 64, np.random.default_rng(5))[1]
    b = pc.sample_points(pts, 64, np.random.default_rng(5))[1]
    assert np.array_equal(a, b)


def test_empty_cloud_raises():
    with pytest.raises(pc.EmptyPointCloudError, match="found 0"):
        pc.sample_points(np.zeros((0, 3)), 1024, 0)
    with pytest.raises(pc.EmptyPointCloudError):
        pc.compute_normalization(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        pc.sample_points(np.zeros((10, 2)), 4, 0)


@pytest.mark.parametrize("center_mode", ["mean", "bbox"])
@pytest.mark.parametrize("scale_mode", ["fixed", "max_dist"])
@pytest.mark.parametrize("obb", [False, True])
def test_normalise_denormalise_identity(rng, center_mode, scale_mode, obb):
    pts = rng.normal(size=(700, 3)) * [60, 30, 10] + [30, -20, 500]
    n, norm = pc.normalize(pts, center_mode=center_mode, scale_mode=scale_mode, obb=obb)
    assert np.allclose(norm.invert(n), pts, atol=1e-3)
    assert np.allclose(pc.denormalize(n[None], norm.center[None], np.array([norm.scale]), norm.rotation[None])[0],
                       pts, atol=1e-3)
    if scale_mode == "max_dist":
        assert np.isclose(np.linalg.norm(n, axis=1).max(), 1.0, atol=1e-5)
    else:
        assert norm.scale == 150.0
    if center_mode == "mean":
        assert np.allclose(n.mean(axis=0), 0.0, atol=1e-5)
    else:
        assert np.allclose(0.5 * (n.min(axis=0) + n.max(axis=0)), 0.0, atol=1e-5)


def test_obb_aligns_principal_axes(rng):
    # an elongated cloud rotated by a known rotation: OBB must undo it (up to axis signs)
    from scipy.spatial.transform import Rotation
    base = rng.normal(size=(4000, 3)) * [80, 30, 5]
    rot = Rotation.from_euler("xyz", [0.3, -0.5, 1.1]).as_matrix()
    pts = base @ rot.T + 400
    r = pc.obb_rotation(pts)
    assert np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(np.abs(r.T @ rot), np.eye(3), atol=0.05)
    n, _ = pc.normalize(pts, obb=True, scale_mode="fixed")
    var = n.var(axis=0)
    assert var[0] > var[1] > var[2]
