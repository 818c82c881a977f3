"""Augmentation (paper III-E-1): distributions, seeding, and rigid consistency of points/joints/vertices."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hsr_tf.data import augment


def test_euler_convention_matches_scipy(rng):
    ang = rng.uniform(-1, 1, (20, 3)).astype(np.float32)
    ours = augment.euler_to_matrix(ang).numpy()
    ref = Rotation.from_euler("xyz", ang).as_matrix()  # extrinsic x, y, z = Rz Ry Rx
    assert np.allclose(ours, ref, atol=1e-5)


def test_sampled_parameters_follow_the_paper_ranges():
    cfg = augment.AugmentConfig()
    m, t = augment.sample_augmentation(4000, [1, 2], cfg)
    m, t = m.numpy().astype(np.float64), t.numpy()
    # M = S R with S = diag(sx, sy, 1): row norms are the scales
    s = np.linalg.norm(m, axis=2)
    assert np.allclose(s[:, 2], 1.0, atol=1e-5)
    assert s[:, :2].min() >= 1 / 1.2 - 1e-5 and s[:, :2].max() <= 1.2 + 1e-5
    assert abs(s[:, 0].mean() - (1 / 1.2 + 1.2) / 2) < 0.01 and abs(np.corrcoef(s[:, 0], s[:, 1])[0, 1]) < 0.05
    r = m / s[:, :, None]
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-4)
    eul = Rotation.from_matrix(r).as_euler("xyz")
    assert np.all(np.abs(eul[:, :2]) <= math.pi / 6 + 1e-4)
    assert np.all(np.abs(eul[:, 2]) <= math.pi / 2 + 1e-4) and eul[:, 2].min() < -1.4 and eul[:, 2].max() > 1.4
    assert abs(t.std() - 0.0125) < 0.0008 and abs(t.mean()) < 0.001
    # literal reading of the print: third angle in [0, pi/2]
    m2, _ = augment.sample_augmentation(2000, [3, 4], augment.AugmentConfig(rot_z=(0.0, math.pi / 2)))
    m2 = m2.numpy().astype(np.float64)
    eul2 = Rotation.from_matrix(m2 / np.linalg.norm(m2, axis=2)[:, :, None]).as_euler("xyz")
    assert eul2[:, 2].min() >= -1e-4 and eul2[:, 2].max() <= math.pi / 2 + 1e-4


def test_seeded():
    a = augment.sample_augmentation(8, [5, 6])[0].numpy()
    b = augment.sample_augmentation(8, [5, 6])[0].numpy()
    c = augment.sample_augmentation(8, [5, 7])[0].numpy()
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_points_joints_vertices_transform_consistently(rng):
    batch = {"points": rng.normal(size=(6, 100, 3)).astype(np.float32) * 0.5,
             "joints": rng.normal(size=(6, 21, 3)).astype(np.float32) * 0.5,
             "vertices": rng.normal(size=(6, 40, 3)).astype(np.float32) * 0.5,
             "center": np.zeros((6, 3), np.float32)}
    out = augment.augment_batch(batch, [9, 9])
    assert np.array_equal(out["center"], batch["center"])
    m = out["aug_matrix"].numpy().astype(np.float64)
    t = out["aug_shift"].numpy().astype(np.float64)
    s = np.linalg.norm(m, axis=2)
    allx = np.concatenate([batch[k] for k in ("points", "joints", "vertices")], axis=1).astype(np.float64)
    ally = np.concatenate([out[k].numpy() for k in ("points", "joints", "vertices")], axis=1).astype(np.float64)
    for b in range(6):
        # undo the known anisotropic scaling: what remains must be rigid (pairwise distances preserved)
        rigid = (ally[b] - t[b]) / s[b]
        dx = np.linalg.norm(allx[b][:, None] - allx[b][None], axis=-1)
        dy = np.linalg.norm(rigid[:, None] - rigid[None], axis=-1)
        assert np.allclose(dx, dy, atol=1e-4)
    inv = augment.invert_transform(ally.astype(np.float32), m.astype(np.float32), t.astype(np.float32)).numpy()
    assert np.allclose(inv, allx, atol=1e-5)
    # composition: augmenting twice records the composed transform
    out2 = augment.augment_batch(out, [1, 2])
    inv2 = augment.invert_transform(out2["points"], out2["aug_matrix"], out2["aug_shift"]).numpy()
    assert np.allclose(inv2, batch["points"], atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="rot_z"):
        augment.AugmentConfig(rot_z=(1.0, 0.0))
    with pytest.raises(ValueError, match="points"):
        augment.augment_batch({"joints": np.zeros((1, 21, 3), np.float32)}, [0, 0])
