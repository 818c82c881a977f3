"""Tests of hsr_tf.hand_model.fitting on data with a known answer (no generator needed)."""
import numpy as np
import tensorflow as tf

from _hand_model_toy import make_toy_model
from hsr_tf.hand_model import fitting
from hsr_tf.hand_model.layer import ChainPlan, pose_and_skin
from hsr_tf.hand_model.skeleton import PARENTS


def test_pca_recovers_low_rank_shapes_and_projects(rng):
    v = 40
    mean = rng.normal(size=(v, 3)) * 20
    dirs = np.linalg.qr(rng.normal(size=(v * 3, 3)))[0].T  # 3 orthonormal directions
    coeff = rng.normal(size=(30, 3)) * [9.0, 4.0, 1.0]
    x = mean + (coeff @ dirs).reshape(30, v, 3)
    res = fitting.pca_shape_space(x, 3)
    np.testing.assert_allclose(res["cumulative"][-1], 1.0, atol=1e-9)
    assert res["explained"][0] > res["explained"][1] > res["explained"][2]
    recon = res["mean"] + np.tensordot(res["betas"], res["basis"], axes=(1, 0))
    np.testing.assert_allclose(recon, x, atol=1e-8)
    # betas have unit variance over the subjects (basis scaled by the standard deviation)
    np.testing.assert_allclose(res["betas"].std(axis=0, ddof=1), 1.0, atol=1e-9)
    # basis directions are mutually orthogonal
    flat = res["basis"].reshape(3, -1)
    gram = flat @ flat.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-8)


def test_joint_regressor_recovers_convex_combinations(rng):
    n, v, j = 12, 60, 4
    base = rng.normal(size=(v, 3)) * 30
    verts = base + rng.normal(size=(n, v, 3)) * 3
    true = np.zeros((j, v))
    for k in range(j):
        # a joint in the middle of a cluster of 3 vertices near a chosen one
        centre = np.argsort(np.linalg.norm(base - base[k * 10], axis=1))[:3]
        true[k, centre] = rng.dirichlet(np.ones(3))
    joints = np.einsum("jv,nvc->njc", true, verts)
    reg = fitting.fit_joint_regressor(verts, joints, num_candidates=8)
    assert reg.min() >= 0
    np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.einsum("jv,nvc->njc", reg, verts), joints, atol=1e-3)


def test_masks_follow_the_skeleton():
    seg = np.array([0, 5, 6, 7, 9])
    cand = fitting.candidate_bones(seg, PARENTS)
    assert set(np.flatnonzero(cand[1])) == {0, 5, 6}
    assert set(np.flatnonzero(cand[0])) == {0, 1, 5, 9, 13, 17}
    assert set(np.flatnonzero(cand[3])) == {6, 7}  # the tip joint 8 carries no bone
    support = fitting.pose_blend_support(cand, PARENTS, seg)
    assert not support[0].any()
    assert set(np.flatnonzero(support[6])) == {0, 1, 2, 3}  # vertices skinnable to bones 5, 6, 7 (palm too)
    assert set(np.flatnonzero(support[10])) == {0, 4}  # palm and the middle-finger vertex, no index vertex
    assert set(np.flatnonzero(support[5])) == {0, 1, 2, 3}  # palm and index vertices, not the middle one


def test_nearest_bones_stay_on_the_vertex_finger():
    joints = np.zeros((21, 3))
    for f, x in enumerate([40.0, 20.0, 0.0, -20.0, -40.0]):
        for k, j in enumerate(range(1 + 4 * f, 5 + 4 * f)):
            joints[j] = (x, 60.0 + 25.0 * k, 0.0)
    # a vertex of the index proximal segment lying right next to the middle finger's bone
    verts = np.array([[1.0, 70.0, 0.0], [10.0, 40.0, 0.0]])
    dist = fitting.bone_distances(verts, joints, PARENTS)
    assert dist[0, 9] < dist[0, 5]  # the middle-finger bone is closer
    cand = fitting.candidate_bones(np.array([5, 0]), PARENTS, dist, nearest=3)
    assert not cand[0, 9:].any()  # ...but it is another finger's
    assert cand[1, 9] and cand[1, 5]  # the palm vertex may follow nearby finger roots
    init = fitting.initial_weights(cand, dist)
    np.testing.assert_allclose(init.sum(axis=1), 1.0)
    assert np.all(init[~cand] == 0)


def test_skinning_and_blend_fit_reproduces_lbs_data(rng):
    """Posed meshes made by a known LBS model: the fit must reproduce them (train and new poses)."""
    model, _, bone = make_toy_model(rng, per_bone=2, pose_scale=1.0)
    plan = ChainPlan(PARENTS)
    n_subj = 3
    rest = model.mean_shape[None] + rng.normal(scale=1.0, size=(n_subj,) + model.mean_shape.shape)
    rest_joints = np.einsum("jv,nvc->njc", model.joint_regressor, rest)
    cand = fitting.candidate_bones(bone, PARENTS)
    support = fitting.pose_blend_support(cand, PARENTS, bone)
    # the true blend shapes live where the fit allows them
    true_blend = (model.pose_basis * np.repeat(support[1:], 9, axis=0)[:, :, None]).reshape(180, -1)

    def make(m):
        sidx = rng.integers(0, n_subj, m)
        theta = rng.normal(scale=0.4, size=(m, 21, 3))
        theta[:, 0] = 0.0
        verts, _ = pose_and_skin(plan, tf.constant(rest[sidx], tf.float32), tf.constant(rest_joints[sidx], tf.float32),
                                 tf.constant(theta, tf.float32),
                                 tf.constant(true_blend, tf.float32),
                                 tf.constant(model.skinning_weights))
        return sidx, theta, verts.numpy()

    sidx, theta, target = make(300)
    init = 0.5 * fitting.initial_weights(cand, vertex_segment=bone) + 0.5 * cand / cand.sum(axis=1, keepdims=True)
    w, p, hist = fitting.fit_skinning_and_blends(rest, rest_joints, sidx, theta, target, PARENTS, cand, support, init,
                                                 steps=600, batch_size=32, learning_rate=0.05, decay_rate=0.9,
                                                 decay_steps=100, seed=0, log_every=100, log_fn=lambda s: None)
    assert w.min() >= 0
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert hist[-1][1] < 0.25 * hist[0][1]
    s2, th2, tgt2 = make(50)
    pred, _ = pose_and_skin(plan, tf.constant(rest[s2], tf.float32), tf.constant(rest_joints[s2], tf.float32),
                            tf.constant(th2, tf.float32), tf.constant(p.reshape(180, -1), tf.float32),
                            tf.constant(w, tf.float32))
    before, _ = pose_and_skin(plan, tf.constant(rest[s2], tf.float32), tf.constant(rest_joints[s2], tf.float32),
                              tf.constant(th2, tf.float32), tf.zeros([180, w.shape[0] * 3]),
                              tf.constant(init, tf.float32))
    err_fit = fitting.vertex_error_stats(pred.numpy(), tgt2)["mean_mm"]
    err_init = fitting.vertex_error_stats(before.numpy(), tgt2)["mean_mm"]
    assert err_fit < 0.2 * err_init, (err_fit, err_init)
    assert err_fit < 0.2
    assert np.abs(w - model.skinning_weights).max() < 0.1
