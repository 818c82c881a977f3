"""HandShapeNet: construction, output contract, geometric consistency, serialization, overfitting."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from hsr_tf.hand_model.palm_frame import palm_frame
from hsr_tf.hand_model import HandModelLayer
from hsr_tf.losses import HandShapeLoss
from hsr_tf.models import HandShapeNet, outputs_to_camera_mm

from _hand_model_toy import make_toy_model

SMALL = dict(sa1_npoint=32, sa1_nsample=8, sa1_mlp=[32, 32], sa2_npoint=16, sa2_nsample=8, sa2_mlp=[64],
             global_mlp=[128], head_hidden=64, sa1_radius=0.2, sa2_radius=0.4)
N_POINTS = 128


@pytest.fixture(scope="module")
def toy():
    model, _, _ = make_toy_model(np.random.default_rng(0))
    return model


def _points(b=2, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(b, N_POINTS, 3)) * 0.3, tf.float32)


@pytest.mark.parametrize("stages,regression,transform,jd,palm", [(2, True, "procrustes", 21, "template"),
                                                                  (1, False, "procrustes", 21, "template"),
                                                                  (2, True, "regress", 14, "axes"),
                                                                  (1, True, "regress", 16, "template")])
def test_output_contract(toy, stages, regression, transform, jd, palm):
    net = HandShapeNet(toy, num_stages=stages, use_joint_regression=regression, transform=transform,
                       num_dataset_joints=jd, palm_method=palm, shape_network=SMALL)
    out = net(_points(3), training=False)
    v, s = toy.mean_shape.shape[0], toy.shape_basis.shape[0]
    want = {"vertices": (3, v, 3), "joints": (3, 21, 3), "joints_input": (3, 21, 3), "rest_vertices": (3, v, 3),
            "beta": (3, s), "theta": (3, 21, 3), "scale": (3,), "rotation": (3, 3, 3), "translation": (3, 3),
            "dataset_joints": (3, jd, 3)}
    for k in range(1, stages + 1):
        for key in ("vertices", "joints", "joints_input", "rest_vertices", "beta", "theta", "scale", "rotation",
                    "translation"):
            want[f"stage{k}_{key}"] = want[key]
    if stages == 2:
        want.update(palm_rotation=(3, 3, 3), palm_origin=(3, 3), stage2_points=(3, N_POINTS, 3))
    if regression:
        want["regression_joints"] = (3, jd, 3)
    assert {k: tuple(t.shape) for k, t in out.items()} == want
    assert all(np.all(np.isfinite(t.numpy())) for t in out.values())
    np.testing.assert_allclose(out["theta"].numpy()[:, 0], 0.0)  # predict_root_rotation=False
    np.testing.assert_allclose(np.linalg.det(out["rotation"].numpy()), 1.0, atol=1e-4)


def test_outputs_are_the_hand_model_under_the_reported_similarity(toy):
    """vertices = scale * rotation @ HandModel(beta, theta) + translation, for both stages, and the
    stage-2 input is the input derotated by the palm frame of the stage-1 joints."""
    net = HandShapeNet(toy, num_stages=2, shape_network=SMALL)
    pts = _points(2, seed=3)
    out = {k: v.numpy() for k, v in net(pts, training=False).items()}
    layer = HandModelLayer(toy)
    for pre in ("stage1_", "stage2_"):
        hm = layer(tf.constant(out[pre + "beta"]), tf.constant(out[pre + "theta"]))
        for key in ("vertices", "joints"):
            want = out[pre + "scale"][:, None, None] * np.einsum("bij,bvj->bvi", out[pre + "rotation"],
                                                               hm[key].numpy()) + out[pre + "translation"][:, None]
            np.testing.assert_allclose(out[pre + key], want, atol=1e-4)
        np.testing.assert_allclose(out[pre + "rest_vertices"], hm["rest_vertices"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["vertices"], out["stage2_vertices"])
    template = layer(tf.zeros([1, toy.shape_basis.shape[0]]), tf.zeros([1, 21, 3]))["joints"][0]
    rot_p, origin = palm_frame(tf.constant(out["stage1_joints"]), template)
    np.testing.assert_allclose(out["palm_rotation"], rot_p.numpy(), atol=1e-5)
    derot = np.einsum("bni,bij->bnj", pts.numpy() - origin.numpy()[:, None], rot_p.numpy())
    np.testing.assert_allclose(out["stage2_points"], derot, atol=1e-5)


def test_procrustes_stage_aligns_model_joints_to_predicted_joints(toy):
    """With transform='procrustes' the transform is the least-squares similarity: perturbing it
    cannot lower the joint misfit."""
    net = HandShapeNet(toy, num_stages=1, shape_network=SMALL)
    out = {k: v.numpy() for k, v in net(_points(2, seed=5), training=False).items()}
    base = ((out["joints"] - out["joints_input"]) ** 2).sum()
    for scale in (0.98, 1.02):
        centre = out["joints"].mean(1, keepdims=True)
        moved = (out["joints"] - centre) * scale + centre
        assert ((moved - out["joints_input"]) ** 2).sum() >= base
    small_rot = Rotation.from_rotvec([0.0, 0.02, 0.0]).as_matrix()
    centre = out["joints"].mean(1, keepdims=True)
    rotated = (out["joints"] - centre) @ small_rot.T + centre
    assert ((rotated - out["joints_input"]) ** 2).sum() >= base


def test_joint_regression_starts_as_the_model_regressor(toy):
    net = HandShapeNet(toy, num_stages=1, shape_network=SMALL)
    out = net(_points(2), training=False)
    want = np.einsum("jv,bvc->bjc", toy.joint_regressor, out["vertices"].numpy())
    np.testing.assert_allclose(out["dataset_joints"].numpy(), want, atol=1e-5)
    assert not net.joint_regression.dense.use_bias
    net14 = HandShapeNet(toy, num_stages=1, num_dataset_joints=14, joint_regression_bias=True, shape_network=SMALL)
    net14(_points(1))
    assert tuple(net14.joint_regression.dense.kernel.shape) == (toy.mean_shape.shape[0] * 3, 42)
    assert net14.joint_regression.dense.use_bias


def test_every_trainable_weight_gets_a_finite_gradient(toy):
    for transform in ("procrustes", "regress"):
        net = HandShapeNet(toy, num_stages=2, transform=transform, shape_network=SMALL)
        pts = _points(2, seed=1)
        net(pts)
        with tf.GradientTape() as tape:
            out = net(pts, training=True)
            loss = sum(tf.reduce_sum(tf.square(out[k])) for k in ("vertices", "stage1_vertices", "dataset_joints",
                                                                  "joints_input", "stage1_joints_input"))
        grads = tape.gradient(loss, net.trainable_variables)
        missing = [v.path for v, g in zip(net.trainable_variables, grads) if g is None]
        assert not missing, missing
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_keras_round_trip_identical_outputs(toy, tmp_path):
    net = HandShapeNet(toy, num_stages=2, shape_network=SMALL, num_dataset_joints=14)
    pts = _points(2, seed=2)
    out = net(pts, training=False)
    path = os.path.join(tmp_path, "net.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, HandShapeNet)
    assert loaded.get_config() == net.get_config()
    out2 = loaded(pts, training=False)
    assert set(out2) == set(out)
    for k in out:
        np.testing.assert_array_equal(out2[k].numpy(), out[k].numpy(), err_msg=k)


def test_outputs_to_camera_mm(toy):
    net = HandShapeNet(toy, num_stages=1, shape_network=SMALL)
    out = net(_points(2), training=False)
    batch = {"center": tf.constant([[10.0, 20, 500], [0, 0, 300]]), "scale": tf.constant([150.0, 100.0]),
             "rotation": tf.eye(3, batch_shape=[2]), "aug_matrix": tf.eye(3, batch_shape=[2]),
             "aug_shift": tf.zeros([2, 3])}
    mm = outputs_to_camera_mm(out, batch)
    assert "vertices" in mm and "dataset_joints" in mm and "beta" not in mm
    want = out["joints"].numpy() * np.array([150.0, 100.0])[:, None, None] + batch["center"].numpy()[:, None]
    np.testing.assert_allclose(mm["joints"].numpy(), want, rtol=1e-5, atol=1e-3)
    mm2 = outputs_to_camera_mm(out, center=batch["center"], scale=[150.0, 100.0])
    np.testing.assert_allclose(mm2["joints"].numpy(), want, rtol=1e-5, atol=1e-3)
    rot = Rotation.random(2, random_state=0).as_matrix()
    mm3 = outputs_to_camera_mm(out, center=batch["center"], scale=[150.0, 100.0], rotation=rot)
    want3 = np.einsum("bij,bnj->bni", rot, out["vertices"].numpy()) * np.array([150.0, 100.0])[:, None, None] \
        + batch["center"].numpy()[:, None]
    np.testing.assert_allclose(mm3["vertices"].numpy(), want3, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="center"):
        outputs_to_camera_mm(out)


def test_config_errors(toy):
    with pytest.raises(ValueError, match="num_stages"):
        HandShapeNet(toy, num_stages=3)
    with pytest.raises(ValueError, match="transform"):
        HandShapeNet(toy, transform="svd")
    with pytest.raises(ValueError, match="shape_network"):
        HandShapeNet(toy, shape_network={"sa3_npoint": 4})
    with pytest.raises(ValueError, match="num_dataset_joints"):
        HandShapeNet(toy, use_joint_regression=False, num_dataset_joints=14)
    net = HandShapeNet(toy, num_stages=1, shape_network=SMALL)
    with pytest.raises(ValueError, match="points"):
        net(tf.zeros([2, N_POINTS, 2]))


def _toy_frames(toy, b, seed):
    """Frames made by the toy hand model itself: random pose/shape/rotation, 150 mm normalisation."""
    rng = np.random.default_rng(seed)
    layer = HandModelLayer(toy)
    theta = rng.normal(size=(b, 21, 3)) * 0.2
    beta = rng.normal(size=(b, toy.shape_basis.shape[0])) * 0.5
    hm = layer(tf.constant(beta, tf.float32), tf.constant(theta, tf.float32))
    rot = Rotation.random(b, random_state=seed).as_matrix()
    verts = np.einsum("bij,bvj->bvi", rot, hm["vertices"].numpy()) / 150.0
    joints = np.einsum("bij,bvj->bvi", rot, hm["joints"].numpy()) / 150.0
    centre = verts.mean(1, keepdims=True)
    verts, joints = verts - centre, joints - centre
    idx = rng.integers(0, verts.shape[1], (b, N_POINTS))
    pts = np.take_along_axis(verts, idx[..., None], 1) + rng.normal(size=(b, N_POINTS, 3)) * 0.003
    data = dict(points=pts, joints=joints, vertices=verts, scale=np.full(b, 150.0))
    return {k: tf.constant(v, tf.float32) for k, v in data.items()}


def _overfit(net, loss_fn, batch, steps, lr):
    opt = keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total, _ = loss_fn(net(batch["points"], training=True), batch)
        grads = tape.gradient(total, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return total

    losses = [float(step()) for _ in range(steps)]
    return losses


def test_overfitting_a_few_frames_reduces_the_loss_by_90_percent(toy):
    keras.utils.set_random_seed(0)
    batch = _toy_frames(toy, 4, seed=7)
    net = HandShapeNet(toy, num_stages=2, shape_network=SMALL)
    losses = _overfit(net, HandShapeLoss(net.mean_shape()), batch, steps=80, lr=3e-3)
    first, last = losses[0], float(np.mean(losses[-5:]))
    assert last < 0.1 * first, (first, last)


ASSET = os.path.join(os.path.dirname(__file__), "..", "hsr_tf", "assets", "hand_model.npz")
CPU_NET = dict(sa1_npoint=256, sa1_nsample=32, sa1_mlp=[32, 32, 64], sa2_npoint=64, sa2_nsample=32,
               sa2_mlp=[64, 64, 128], global_mlp=[128, 256, 512], head_hidden=256)


def _packaged_frames(model, b, seed):
    rng = np.random.default_rng(seed)
    layer = HandModelLayer(model)
    theta = rng.normal(size=(b, 21, 3)) * 0.2
    beta = rng.normal(size=(b, model.shape_basis.shape[0])) * 0.5
    hm = layer(tf.constant(beta, tf.float32), tf.constant(theta, tf.float32))
    rot = Rotation.random(b, random_state=seed).as_matrix()
    verts = np.einsum("bij,bvj->bvi", rot, hm["vertices"].numpy()) / 150.0
    joints = np.einsum("bij,bvj->bvi", rot, hm["joints"].numpy()) / 150.0
    centre = verts.mean(1, keepdims=True)
    idx = rng.integers(0, verts.shape[1], (b, 1024))
    pts = np.take_along_axis(verts - centre, idx[..., None], 1)
    data = dict(points=pts, joints=joints - centre, vertices=verts - centre, scale=np.full(b, 150.0))
    return {k: tf.constant(v, tf.float32) for k, v in data.items()}


@pytest.mark.skipif(not os.path.exists(ASSET), reason="packaged hand model not built")
def test_paper_size_network_with_packaged_model():
    """The paper's sizes: 1305 vertices, SA(512, 64) -> SA(128, 64) -> 1024-d, 1024 input points."""
    from hsr_tf.hand_model import HandModel

    model = HandModel.load()
    net = HandShapeNet(model)
    out = net(tf.zeros([1, 1024, 3]) + tf.random.normal([1, 1024, 3], seed=1) * 0.3, training=False)
    assert tuple(out["vertices"].shape) == (1, 1305, 3) and tuple(out["dataset_joints"].shape) == (1, 21, 3)
    assert tuple(out["beta"].shape) == (1, model.shape_basis.shape[0])
    sn = net.stage_networks[0]
    assert (sn.sa1.npoint, sn.sa1.nsample, sn.sa2.npoint, sn.sa2.nsample) == (512, 64, 128, 64)
    assert sn.sa_global.mlp[-1] == 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(ASSET), reason="packaged hand model not built")
def test_overfit_with_packaged_model():
    """Packaged 1305-vertex hand model, 1024-point frames, both stages, Procrustes, joint regression, a
    CPU-sized shape network (the paper-size one takes ~16 s per step on this machine)."""
    from hsr_tf.hand_model import HandModel

    model = HandModel.load()
    keras.utils.set_random_seed(0)
    batch = _packaged_frames(model, 4, seed=1)
    net = HandShapeNet(model, shape_network=CPU_NET)
    losses = _overfit(net, HandShapeLoss(model.mean_shape), batch, steps=150, lr=3e-3)
    assert float(np.mean(losses[-5:])) < 0.1 * losses[0], (losses[0], losses[-5:])
