"""Mixed precision: auto's choice from CPU flags / GPU capability, float32 geometry under a bfloat16 policy,
and loss scaling under float16 in the training loop."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import precision
from hsr_tf.train import loop

from _hand_model_toy import make_toy_model

SMALL = dict(sa1_npoint=32, sa1_nsample=8, sa1_mlp=[32, 32], sa2_npoint=16, sa2_nsample=8, sa2_mlp=[64],
             global_mlp=[128], head_hidden=64, sa1_radius=0.2, sa2_radius=0.4)


@pytest.fixture
def policy():
    """Set a global policy inside the test; float32 is restored afterwards whatever happens."""
    yield precision.set_policy
    keras.mixed_precision.set_global_policy("float32")


def test_auto_reads_cpu_flags_and_gpu_capability(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(str(info)) == {"fpu", "sse", "avx2", "fma", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()
    assert precision.auto_precision({"avx2", "fma"}, gpu_caps=[])[0] == "float32"
    assert precision.auto_precision({"avx2", "amx_bf16"}, gpu_caps=[])[0] == "mixed_bfloat16"
    assert precision.auto_precision({"avx512_bf16"}, gpu_caps=[])[0] == "mixed_bfloat16"
    # A GPU decides, whatever the CPU: Ampere and later have bfloat16, Turing does not.
    assert precision.auto_precision({"avx2"}, gpu_caps=[(9, 0)])[0] == "mixed_bfloat16"
    assert precision.auto_precision({"amx_bf16"}, gpu_caps=[(7, 5)])[0] == "float32"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve("bfloat16")
    assert precision.resolve("mixed_float16") == "mixed_float16"
    assert precision.resolve("auto") in ("float32", "mixed_bfloat16")


def _model_and_points():
    from hsr_tf.models import HandShapeNet

    toy, _, _ = make_toy_model(np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    net = HandShapeNet(toy, num_stages=2, shape_network=SMALL)
    pts = tf.constant(np.random.default_rng(1).normal(size=(4, 128, 3)) * 0.3, tf.float32)
    return net, pts


@pytest.mark.slow  # ~110 s on the shared 2-core machine (two HandShapeNets, an eager backward pass)
def test_bfloat16_policy_keeps_geometry_float32_and_matches_float32(policy):
    ref, pts = _model_and_points()
    ref_out = ref(pts, training=False)
    policy("mixed_bfloat16")
    net, _ = _model_and_points()
    net(pts, training=False)
    net.set_weights(ref.get_weights())
    # The MLPs compute in bfloat16; containers running the ops, the heads' last layers, the hand model
    # layer and the joint regression compute in float32; every variable is float32.
    sa1 = net.stage_networks[0].sa1
    assert sa1.shared_mlp.convs[0].compute_dtype == "bfloat16"
    assert net.stage_networks[0].theta_head.hidden.compute_dtype == "bfloat16"
    for layer in (net, net.stage_networks[0], sa1, net.stage_networks[0].sa_global, net.hand_model_layer,
                  net.joint_regression, net.stage_networks[0].theta_head.out):
        assert layer.compute_dtype == "float32", layer.name
    assert {v.dtype for v in net.variables} == {"float32"}
    out = net(pts, training=False)
    assert {k: v.dtype for k, v in out.items()} == {k: tf.float32 for k in out}
    # Same weights: bfloat16 MLPs (8-bit mantissa) move the outputs by a little, not by a lot.
    for key in ("joints_input", "vertices", "dataset_joints"):
        a, b = out[key].numpy(), ref_out[key].numpy()
        scale = np.abs(b).max()
        assert np.abs(a - b).max() < 0.05 * scale, key
        assert np.abs(a - b).max() > 0, f"{key}: identical outputs, the MLPs did not run in bfloat16"
    # A training step: gradients reach every variable in float32 and are finite.
    from hsr_tf.losses import HandShapeLoss

    loss = HandShapeLoss(net.mean_shape())
    batch = {"joints": tf.random.normal([4, 21, 3], stddev=0.3, seed=2), "scale": tf.fill([4], 150.0),
             "vertices": tf.random.normal([4, net.hand_model_layer.num_vertices, 3], stddev=0.3, seed=3),
             "points": pts}
    with tf.GradientTape() as tape:
        total, _ = loss(net(pts, training=True), batch, 0)
    assert total.dtype == tf.float32
    grads = tape.gradient(total, net.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 and np.all(np.isfinite(g.numpy())) for g in grads)


class LinearNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")

    def call(self, points, training=False):
        return {"y": self.dense(points)}


def _tiny_loss(batch, outputs, epoch):
    # Gradient 1e-8 per kernel entry: below float16's smallest subnormal (6e-8), so it vanishes in a float16
    # backward pass unless the loss is scaled first.
    y = tf.cast(outputs["y"], tf.float32)
    return 1e-8 * tf.reduce_mean(y), {}


def _one_step(tmp_path, wrap):
    keras.utils.set_random_seed(0)
    model = LinearNet()
    data = {"points": np.ones((8, 4), np.float32)}
    cfg = loop.TrainConfig(workdir=str(tmp_path), steps_per_epoch=1, num_epochs=1, summary_every=1, progress=False)
    tr = loop.Trainer(model, _tiny_loss, lambda e: tf.data.Dataset.from_tensor_slices(data).batch(8), cfg)
    assert isinstance(tr.optimizer, keras.optimizers.LossScaleOptimizer)  # what make_optimizer gives float16
    # Plain SGD (lr 1) so that the update equals the gradient; wrapped like make_optimizer does, or not.
    sgd = keras.optimizers.SGD(learning_rate=1.0)
    tr.optimizer = precision.wrap_optimizer(sgd) if wrap else sgd
    tr.train()
    return tr, model.dense.kernel.numpy()


def test_float16_training_scales_the_loss(policy, tmp_path):
    policy("mixed_float16")
    tr, kernel = _one_step(tmp_path / "scaled", wrap=True)
    assert tr.model.dense.compute_dtype == "float16" and tr.model.dense.kernel.dtype == "float32"
    # d loss / d w = 1e-8 * mean(x) = 1e-8 for every weight, recovered through the scaled float16 backward pass.
    np.testing.assert_allclose(kernel, -1e-8, rtol=1e-2)
    # The same step without the loss scale: the float16 gradient underflows to zero and nothing moves.
    _, unscaled = _one_step(tmp_path / "plain", wrap=False)
    np.testing.assert_array_equal(unscaled, 0.0)


def test_float32_policy_uses_the_plain_optimizer():
    keras.mixed_precision.set_global_policy("float32")
    opt = loop.make_optimizer(loop.TrainConfig(workdir="/tmp/unused", steps_per_epoch=3))
    assert isinstance(opt, keras.optimizers.Adam)
