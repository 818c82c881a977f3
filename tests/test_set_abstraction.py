"""Tests of the PointNet++ set-abstraction layers (hsr_tf.layers.set_abstraction)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import ops
from hsr_tf.layers.set_abstraction import GlobalSetAbstraction, SetAbstraction

BACKENDS = [pytest.param("compiled", marks=pytest.mark.skipif(
    not ops.compiled_available(), reason=f"compiled ops not available: {ops.fallback_reason()}")), "fallback"]


def np_fps(pts, m):
    sel, mind = [0], np.full(len(pts), np.inf, np.float32)
    for _ in range(1, m):
        d = pts - pts[sel[-1]]
        mind = np.minimum(mind, (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])
        sel.append(int(np.argmax(mind)))
    return np.array(sel)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouping", ["ball", "knn"])
@pytest.mark.parametrize("sampling", ["fps", "first"])
def test_sample_and_group_matches_numpy(backend, grouping, sampling, rng):
    b, n, m, s, r = 2, 200, 20, 12, 0.35
    xyz = rng.normal(size=(b, n, 3)).astype(np.float32)
    feat = rng.normal(size=(b, n, 4)).astype(np.float32)
    with ops.use_backend(backend):
        layer = SetAbstraction(m, r, s, [8], sampling=sampling, grouping=grouping, normalize_by_radius=True)
        new_xyz, grouped, _ = layer.sample_and_group(xyz, feat)
    assert grouped.shape == (b, m, s, 7)
    r2 = np.float32(r) * np.float32(r)
    for i in range(b):
        cidx = np_fps(xyz[i], m) if sampling == "fps" else np.arange(m)
        np.testing.assert_array_equal(new_xyz[i], xyz[i, cidx])
        for j in range(m):
            d = xyz[i] - xyz[i, cidx[j]]
            d2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
            if grouping == "ball":
                nb = np.nonzero(d2 < r2)[0][:s]  # the centroid itself is always inside
                nb = np.concatenate([nb, np.full(s - len(nb), nb[0])])
            else:
                nb = np.argsort(d2, kind="stable")[:s]
                nb = np.where(d2[nb] < r2, nb, cidx[j])  # out-of-ball -> the centroid itself
            expect = np.concatenate([(xyz[i, nb] - xyz[i, cidx[j]]) / np.float32(r), feat[i, nb]], -1)
            np.testing.assert_allclose(grouped[i, j], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grouping", ["ball", "knn"])
def test_points_outside_every_ball_do_not_matter(grouping, rng):
    xyz = rng.uniform(-1, 1, size=(1, 128, 3)).astype(np.float32)
    far = np.array([5.0, 5.0, 5.0], np.float32)
    xyz[0, -1] = far  # never a centroid with sampling='first' and M=16, and farther than r from all of them
    layer = SetAbstraction(16, 0.5, 32, [16, 16], sampling="first", grouping=grouping)
    _, a = layer(xyz, training=False)
    xyz2 = xyz.copy()
    xyz2[0, -1] = far * 3
    _, b = layer(xyz2, training=False)
    np.testing.assert_array_equal(a, b)
    xyz3 = xyz.copy()
    xyz3[0, 0] += 0.05  # a centroid moves: its neighbours' relative coordinates, hence features, change
    assert not np.array_equal(a, layer(xyz3, training=False)[1])


def test_shapes_config_and_jit_flag(rng):
    sa = SetAbstraction(32, 0.3, 16, [8, 16], grouping="knn", normalize_by_radius=True, use_xyz=False)
    cfg = sa.get_config()
    clone = SetAbstraction.from_config(cfg)
    assert clone.get_config() == cfg
    xyz = rng.normal(size=(3, 100, 3)).astype(np.float32)
    feat = rng.normal(size=(3, 100, 5)).astype(np.float32)
    new_xyz, new_feat = sa(xyz, feat)
    assert new_xyz.shape == (3, 32, 3) and new_feat.shape == (3, 32, 16)
    g = GlobalSetAbstraction([8, 24])
    assert GlobalSetAbstraction.from_config(g.get_config()).get_config() == g.get_config()
    assert g(new_xyz, new_feat).shape == (3, 24)
    assert GlobalSetAbstraction([8, 24])(xyz).shape == (3, 24)
    assert sa.supports_jit == (ops.backend() != "compiled")
    with ops.use_backend("fallback"):
        assert SetAbstraction(4, 0.1, 4, [4]).supports_jit


def test_global_is_max_over_points(rng):
    g = GlobalSetAbstraction([6], use_xyz=True)
    xyz = rng.normal(size=(2, 30, 3)).astype(np.float32)
    out = g(xyz, training=False).numpy()
    perm = rng.permutation(30)
    np.testing.assert_allclose(g(xyz[:, perm], training=False), out, rtol=1e-6)  # order invariant
    per_point = g.shared_mlp(xyz[:, None], training=False).numpy()[:, 0]  # [B,N,6]
    np.testing.assert_allclose(out, per_point.max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(npoint=0), "npoint"), (dict(nsample=0), "nsample"), (dict(radius=0.0), "radius"),
    (dict(mlp=[]), "mlp"), (dict(mlp=[8, -1]), "mlp"), (dict(sampling="random"), "sampling"),
    (dict(grouping="cube"), "grouping")])
def test_invalid_constructor_arguments(kwargs, match):
    args = dict(npoint=8, radius=0.2, nsample=4, mlp=[8])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SetAbstraction(**args)


def test_invalid_call_arguments(rng):
    sa = SetAbstraction(64, 0.2, 4, [8])
    with pytest.raises(ValueError, match="npoint"):
        sa(rng.normal(size=(1, 10, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"xyz must have shape \[B,N,3\]"):
        sa(rng.normal(size=(1, 100, 2)).astype(np.float32))
    with pytest.raises(ValueError, match="same N"):
        sa(rng.normal(size=(1, 100, 3)).astype(np.float32), rng.normal(size=(1, 99, 2)).astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layers_train_under_gradient_tape(backend, rng):
    """Regress each cloud's spread (a geometric property) from two SA levels + a global level."""
    b, n = 8, 128
    scale = rng.uniform(0.5, 2.0, size=(b, 1, 1)).astype(np.float32)
    xyz = (rng.normal(size=(b, n, 3)).astype(np.float32) * scale)
    target = scale[:, :, 0]
    with ops.use_backend(backend):
        sa1 = SetAbstraction(32, 0.8, 16, [16, 16])
        sa2 = SetAbstraction(8, 1.6, 16, [16, 32], grouping="knn")
        glob = GlobalSetAbstraction([32, 32])
        head = keras.layers.Dense(1)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                p1, f1 = sa1(x, training=True)
                p2, f2 = sa2(p1, f1, training=True)
                pred = head(glob(p2, f2, training=True))
                loss = tf.reduce_mean(tf.square(pred - y))
            vs = sa1.trainable_variables + sa2.trainable_variables + glob.trainable_variables + head.trainable_variables
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss

        opt = keras.optimizers.Adam(1e-2)
        losses = [float(step(xyz, target)) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), losses


def test_inference_folds_batch_norm_into_the_convolutions(rng):
    """The folded inference path equals conv -> BatchNorm(moving statistics) -> ReLU run layer by layer."""
    sa = SetAbstraction(npoint=8, radius=0.5, nsample=6, mlp=[5, 7])
    xyz = tf.constant(rng.normal(size=(2, 30, 3)).astype(np.float32))
    sa(xyz, training=True)
    mlp = sa.shared_mlp
    for bn in mlp.bns:  # non-trivial statistics and affine parameters
        c = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=c).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.2, 3.0, size=c).astype(np.float32))
        bn.gamma.assign(rng.normal(size=c).astype(np.float32))
        bn.beta.assign(rng.normal(size=c).astype(np.float32))
    x = rng.normal(size=(2, 8, 6, 3)).astype(np.float32)
    want = x
    for conv, bn in zip(mlp.convs, mlp.bns):
        z = np.einsum("bmsi,io->bmso", want, conv.kernel.numpy()[0, 0])
        z = (z - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        want = np.maximum(z * bn.gamma.numpy() + bn.beta.numpy(), 0.0)
    got = mlp(x, training=False).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # training mode still normalises with the batch's own statistics (a different function here)
    assert np.abs(mlp(x, training=True).numpy() - want).max() > 1e-2


@pytest.mark.parametrize("chunk_rows", [7, 24, 2048])
def test_chunked_pooled_inference_equals_layer_by_layer_max(rng, chunk_rows):
    """The chunked inference path (padding of the last chunk included) equals max over S of the plain layers."""
    sa = SetAbstraction(npoint=10, radius=0.5, nsample=6, mlp=[5, 7])
    xyz = tf.constant(rng.normal(size=(3, 30, 3)).astype(np.float32))
    sa(xyz, training=True)
    mlp = sa.shared_mlp
    for bn in mlp.bns:
        c = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=c).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.2, 3.0, size=c).astype(np.float32))
    mlp.chunk_rows = chunk_rows  # 7 // 6 = 1 group per chunk; 24 // 6 = 4, so 30 groups leave a padded chunk
    x = rng.normal(size=(3, 10, 6, 3)).astype(np.float32)
    want = np.asarray(mlp(x, training=False)).max(axis=2)
    got = tf.function(lambda t: mlp.pooled(t, training=False))(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # B = 1 through the global level (one group, fewer than a chunk's worth)
    g = GlobalSetAbstraction([6, 9])
    g(xyz, training=True)
    g.shared_mlp.chunk_rows = chunk_rows
    one = xyz[:1]
    want_g = np.asarray(g.shared_mlp(one[:, None], training=False))[:, 0].max(axis=1)
    np.testing.assert_allclose(g(one, training=False).numpy(), want_g, rtol=1e-5, atol=1e-6)
