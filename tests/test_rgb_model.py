"""RGB network: uvd <-> camera mm, model variants, IK of the direct-LBS baseline, a few training steps."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.geometry import uvd as uvd_lib
from hsr_tf.hand_model import HandModel
from hsr_tf.hand_model.layer import HandModelLayer
from hsr_tf.models.rgb_mesh_net import PoseRegressorModel, RGBMeshNet

SMALL = dict(image_size=64, filters=16, num_residual=1, gcn_fc=32, gcn_features=(8, 8), regressor_features=(4, 8),
             regressor_hidden=16, mlp_hidden=16)


def test_uvd_round_trip_and_hand_computed_values():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(2, 50, 3)).astype(np.float32) * 40 + [0, 0, 500]
    cam = np.array([[300, 310, 60, 70], [250, 240, 64, 62]], np.float32)
    zr, s = np.array([480, 520], np.float32), np.array([28, 33], np.float32)
    uvd = uvd_lib.camera_to_uvd(xyz, cam, zr, s).numpy()
    np.testing.assert_allclose(uvd[0, :, 0], 60 + 300 * xyz[0, :, 0] / xyz[0, :, 2], rtol=1e-5)
    np.testing.assert_allclose(uvd[0, :, 1], 70 - 310 * xyz[0, :, 1] / xyz[0, :, 2], rtol=1e-5)
    np.testing.assert_allclose(uvd[1, :, 2], (xyz[1, :, 2] - 520) / 33, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(uvd_lib.uvd_to_camera(uvd, cam, zr, s).numpy(), xyz, rtol=1e-5, atol=1e-3)
    n = uvd_lib.camera_to_normalized_uvd(xyz, cam, zr, s, 128)
    np.testing.assert_allclose(uvd_lib.normalized_uvd_to_camera(n, cam, zr, s, 128).numpy(), xyz, atol=1e-3)
    # the outer pixel edges map to -1 / +1
    np.testing.assert_allclose(uvd_lib.normalize_uv(np.array([-0.5, 127.5]), 128).numpy(), [-1, 1])
    joints = np.zeros((1, 21, 3), np.float32)
    joints[0, 10] = [3, 4, 0]
    assert float(uvd_lib.bone_scale_from_joints(joints)[0]) == pytest.approx(5.0)


@pytest.mark.parametrize("variant", ["mesh", "hand_model", "baseline1"])
def test_variants_outputs_and_serialisation(variant):
    net = RGBMeshNet(variant, **SMALL)
    x = net.example_input(2)
    out = net(x)
    assert out["heatmaps"].shape == (2, 16, 16, 21) and out["heatmaps_all"].shape == (2, 2, 16, 16, 21)
    assert out["joints"].shape == (2, 21, 3) and out["joints_uv"].shape == (2, 21, 2)
    if variant != "baseline1":
        assert out["vertices"].shape == (2, 1305, 3)
        # vertices and uvd are the same points
        back = uvd_lib.normalized_uvd_to_camera(out["uvd"], x["camera"], x["root_depth"], x["bone_scale"], 64)
        np.testing.assert_allclose(back.numpy(), out["vertices"].numpy(), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(out["joints_uv"].numpy(),
                               uvd_lib.camera_to_uvd(out["joints"], x["camera"], x["root_depth"],
                                                     x["bone_scale"]).numpy()[..., :2], atol=1e-2)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    clone(x)
    assert len(clone.variables) == len(net.variables)
    for a, b in zip(clone.variables, net.variables):
        a.assign(b)
    np.testing.assert_allclose(clone(x)["joints"].numpy(), out["joints"].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="image"):
        net({**x, "image": tf.zeros([2, 32, 32, 3])})


def test_hand_model_variant_places_the_root_at_the_given_depth():
    net = RGBMeshNet("hand_model", **SMALL)
    x = net.example_input(2)
    out = net(x)
    np.testing.assert_allclose(out["joints"].numpy()[:, 0, 2], 500.0, atol=1e-3)
    np.testing.assert_allclose(uvd_lib.bone_scale_from_joints(out["joints"]).numpy(), 30.0, rtol=1e-4)


def test_direct_lbs_ik_recovers_template_joints():
    from hsr_tf.models.ik import InverseKinematicsLBS

    model = HandModel.load()
    layer = HandModelLayer(model)
    rng = np.random.default_rng(1)
    theta = rng.normal(scale=0.25, size=(3, 21, 3)).astype(np.float32)
    theta[:, 0] = rng.normal(scale=1.0, size=(3, 3))
    posed = layer(np.zeros((3, model.num_betas), np.float32), theta)
    target = posed["joints"].numpy() * 1.1 + np.array([10, -20, 450], np.float32)  # scaled and moved
    ik = InverseKinematicsLBS()
    out = ik(target)
    err = np.linalg.norm(out["joints"].numpy() - target, axis=-1)
    assert err.max() < 0.5, err.max()
    # and the vertices follow (same pose up to twist about bones, which moves surface points little)
    expect = posed["vertices"].numpy() * 1.1 + np.array([10, -20, 450], np.float32)
    assert np.median(np.linalg.norm(out["vertices"].numpy() - expect, axis=-1)) < 6.0


def _batch(net, b=4, seed=0):
    rng = np.random.default_rng(seed)
    x = net.example_input(b)
    x["image"] = tf.constant(rng.random((b, 64, 64, 3)).astype(np.float32))
    model = HandModel.load()
    verts = model.mean_shape[None] + rng.normal(scale=2, size=(b, 1305, 3)).astype(np.float32)
    verts = verts + np.array([0, 0, 500], np.float32)
    joints = np.einsum("jv,bvc->bjc", model.joint_regressor, verts).astype(np.float32)
    return {**x, "vertices": tf.constant(verts), "joints": tf.constant(joints), "has_vertices": tf.ones([b]),
            "heatmaps": tf.constant(rng.random((b, 16, 16, 21)).astype(np.float32)),
            "root_depth": tf.constant(joints[:, 0, 2]), "bone_scale": uvd_lib.bone_scale_from_joints(joints)}


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from hsr_tf import losses_rgb
    from hsr_tf.train import loop

    keras.utils.set_random_seed(0)
    net = RGBMeshNet("mesh", **SMALL)
    batch = _batch(net)
    cfg = losses_rgb.RGBLossConfig()
    faces = HandModel.load().faces

    def loss_fn(b, outputs, epoch):
        return losses_rgb.fully_supervised_loss(b, outputs, faces, cfg, 64)

    def variables_fn(m):
        return [v for name, part in m.sub_networks().items() if name != "pose_regressor"
                for v in part.trainable_variables]

    ds = tf.data.Dataset.from_tensors(batch).repeat(12)
    tc = loop.TrainConfig(workdir=str(tmp_path / "w"), steps_per_epoch=12, max_steps=12, learning_rate=1e-3,
                          optimizer="rmsprop", progress=False, checkpoint_every=100)
    trainer = loop.Trainer(net, loss_fn, lambda e: ds, tc, input_key=("image", "camera", "root_depth", "bone_scale"),
                           variables_fn=variables_fn)
    reg_before = [v.numpy().copy() for v in net.pose_regressor.trainable_variables]
    trainer.train()
    losses = [h["loss"] for h in trainer.history]
    assert losses[-1] < 0.8 * losses[0], losses  # measured 30.1 -> 21.2 over 12 steps
    assert isinstance(trainer.optimizer, keras.optimizers.RMSprop)
    for a, v in zip(reg_before, net.pose_regressor.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())  # frozen outside the selection
    # the checkpoint reloads through the generic example input
    loop.save_model_config(net, tc.workdir)
    again, _ = loop.load_model_from_workdir(tc.workdir)
    x = {k: batch[k] for k in ("image", "camera", "root_depth", "bone_scale")}
    np.testing.assert_allclose(again(x)["vertices"].numpy(), net(x)["vertices"].numpy(), atol=1e-3)


def test_pose_regressor_phase_fits_gt_meshes():
    keras.utils.set_random_seed(0)
    net = RGBMeshNet("mesh", **SMALL)
    stage = PoseRegressorModel(net.pose_regressor, 64)
    batch = _batch(net, b=8)
    opt = keras.optimizers.RMSprop(1e-3)
    from hsr_tf import losses_rgb
    inputs = {k: batch[k] for k in ("vertices", "camera", "root_depth", "bone_scale")}
    first = None
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = losses_rgb.pose_loss(stage(inputs, training=True)["joints"], batch["joints"], batch["bone_scale"])
        grads = tape.gradient(loss, stage.trainable_variables)
        opt.apply_gradients(zip(grads, stage.trainable_variables))
        first = first if first is not None else float(loss)
    assert float(loss) < 0.7 * first
