"""ChebConv against a dense NumPy Eq. (1); GraphUpsample / GraphMaxPool against a hand-made tree."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.graph import load_mesh_graph, mesh_adjacency, normalized_laplacian, rescaled_laplacian
from hsr_tf.layers.graph_conv import ChebConv, FromGraphNodes, GraphMaxPool, GraphUpsample, ToGraphNodes


def _dense_cheb(lt, x, kernel, bias, k):
    """Eq. (1) with explicit Chebyshev matrices T_k(L~) (dense)."""
    n = lt.shape[0]
    t = [np.eye(n), lt]
    for _ in range(2, k):
        t.append(2 * lt @ t[-1] - t[-2])
    f_in = x.shape[-1]
    theta = kernel.reshape(k, f_in, -1)
    return sum(np.einsum("nm,bmf,fo->bno", t[i], x, theta[i]) for i in range(k)) + bias


# (F_in, F_out): F_out >= F_in runs the recurrence on x (one matmul on the concatenated terms when F_in < F_out,
# a sum of K matmuls when equal), F_out < F_in applies theta first and sums by Clenshaw.
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("f_in,f_out", [(4, 5), (4, 4), (5, 2)])
def test_chebconv_matches_dense_eq1(k, f_in, f_out):
    faces = np.array([[0, 1, 2], [0, 2, 3], [2, 3, 4], [3, 4, 5], [1, 2, 4]], np.int32)
    lt, _ = rescaled_laplacian(normalized_laplacian(mesh_adjacency(faces)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, f_in)).astype(np.float32)
    layer = ChebConv(f_out, K=k, laplacian=lt)
    y = layer(x).numpy()
    layer.bias.assign(rng.normal(size=f_out).astype(np.float32))
    y = layer(x).numpy()
    ref = _dense_cheb(lt.toarray(), x.astype(np.float64), layer.kernel.numpy(), layer.bias.numpy(), k)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_chebconv_on_packaged_level_and_serialisation():
    graph = load_mesh_graph()
    layer = ChebConv(3, K=3, level=2)
    x = np.random.default_rng(1).normal(size=(2, graph.num_nodes(2), 2)).astype(np.float32)
    y = layer(x).numpy()
    ref = _dense_cheb(graph.rescaled_laplacian(2).toarray(), x, layer.kernel.numpy(), layer.bias.numpy(), 3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), y, atol=1e-6)
    with pytest.raises(ValueError, match="expected \\[B, 420"):
        ChebConv(3, level=2)(np.zeros((1, 10, 2), np.float32))


def _asymmetric_laplacian():
    """A non-symmetric 4 x 4 operator (rows scaled differently), as an unsorted spec dict: the gradient must
    use L^T, and the layer must sort the indices itself."""
    dense = np.array([[0.5, -0.3, 0.0, 0.2], [-0.1, 0.4, -0.6, 0.0], [0.0, -0.2, -0.5, 0.7], [0.3, 0.0, -0.4, 0.1]])
    rows, cols = np.nonzero(dense)
    order = np.random.default_rng(7).permutation(len(rows))
    spec = {"indices": np.stack([rows, cols], 1)[order].tolist(), "values": dense[rows, cols][order].tolist(),
            "num_nodes": 4}
    return dense.astype(np.float32).astype(np.float64), spec


@pytest.mark.parametrize("f_out", [4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_chebconv_gradient_matches_finite_differences(f_out, symmetric):
    if symmetric:
        faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
        lt, _ = rescaled_laplacian(normalized_laplacian(mesh_adjacency(faces)))
    else:
        _, lt = _asymmetric_laplacian()
    layer = ChebConv(f_out, K=3, laplacian=lt, dtype="float64")
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 4, 3)))
    layer(x)
    theoretical, numerical = tf.test.compute_gradient(lambda v: tf.reduce_sum(layer(v) ** 2), [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    analytic = tape.gradient(loss, layer.kernel).numpy()
    w0, eps, numeric = layer.kernel.numpy(), 1e-6, np.zeros_like(analytic)
    for idx in np.ndindex(*w0.shape):  # central differences of the loss in every kernel entry
        for sign in (1, -1):
            w = w0.copy()
            w[idx] += sign * eps
            layer.kernel.assign(w)
            numeric[idx] += sign * float(tf.reduce_sum(layer(x) ** 2)) / (2 * eps)
    layer.kernel.assign(w0)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("f_out", [5, 2])
def test_chebconv_asymmetric_operator_matches_dense(f_out):
    dense, spec = _asymmetric_laplacian()
    layer = ChebConv(f_out, K=4, laplacian=spec, dtype="float64")
    x = np.random.default_rng(4).normal(size=(3, 4, 3))
    y = layer(x).numpy()
    np.testing.assert_allclose(y, _dense_cheb(dense, x, layer.kernel.numpy(), layer.bias.numpy(), 4), atol=1e-10)
    clone = ChebConv.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), y, atol=1e-12)


def test_chebconv_bad_laplacian_names_the_argument():
    with pytest.raises(ValueError, match="laplacian: expected indices in \\[0, 3\\)"):
        ChebConv(2, laplacian={"indices": [[0, 0], [1, 3]], "values": [1.0, 1.0], "num_nodes": 3})
    with pytest.raises(ValueError, match="laplacian: expected one value per index pair"):
        ChebConv(2, laplacian={"indices": [[0, 0], [1, 1]], "values": [1.0], "num_nodes": 3})


@pytest.mark.parametrize("f_in,f_out", [(3, 8), (8, 3)])
def test_chebconv_mixed_bfloat16_close_to_float32(f_in, f_out):
    graph = load_mesh_graph()
    x = np.random.default_rng(5).normal(size=(2, graph.num_nodes(2), f_in)).astype(np.float32)
    ref_layer = ChebConv(f_out, K=3, level=2)
    ref = ref_layer(x).numpy()
    layer = ChebConv(f_out, K=3, level=2, dtype="mixed_bfloat16")
    layer(x)
    layer.set_weights(ref_layer.get_weights())
    with tf.GradientTape() as tape:
        y = layer(tf.constant(x))
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == tf.bfloat16 and layer.kernel.dtype == "float32"
    # bf16 keeps 8 mantissa bits: inputs, kernel and the K F_in-term sums each round to ~0.4 %.
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), ref, atol=0.03 * np.abs(ref).max())
    grad = tape.gradient(loss, layer.kernel)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_chebconv_saved_model_with_unknown_batch(tmp_path):
    graph = load_mesh_graph()
    layer = ChebConv(4, K=3, level=2)
    x = np.random.default_rng(6).normal(size=(3, graph.num_nodes(2), 6)).astype(np.float32)
    y = layer(x).numpy()
    module = tf.Module()
    module.layer = layer
    module.f = tf.function(lambda v: layer(v), input_signature=[tf.TensorSpec([None, graph.num_nodes(2), 6])])
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.f(tf.constant(x)).numpy(), y, atol=1e-6)
    np.testing.assert_allclose(loaded.f(tf.constant(x[:1])).numpy(), y[:1], atol=1e-6)


def test_upsample_and_pool_follow_a_hand_made_tree():
    # Coarse nodes A, B; fine level in tree order: [a1, a2 | b1, fake]; x per fine node.
    coarse = np.array([[[1.0, -2.0], [3.0, 4.0]]], np.float32)  # [1, 2, 2]
    up = GraphUpsample(1)(coarse).numpy()
    np.testing.assert_array_equal(up[0], [[1, -2], [1, -2], [3, 4], [3, 4]])
    np.testing.assert_array_equal(GraphUpsample(2)(coarse).numpy()[0, :4], [[1, -2]] * 4)
    fine = np.array([[[1.0, -5.0], [2.0, -7.0], [-3.0, -1.0], [0.0, 0.0]]], np.float32)
    plain = GraphMaxPool(1)(fine).numpy()
    np.testing.assert_array_equal(plain[0], [[2, -5], [0, 0]])
    masked = GraphMaxPool(1, real_mask=[True, True, True, False])(fine).numpy()
    np.testing.assert_array_equal(masked[0], [[2, -5], [-3, -1]])  # the fake zero is not taken
    two = GraphMaxPool(2, real_mask=[False] * 4 + [True, False, False, False])(
        np.concatenate([fine, fine - 10], 1)).numpy()
    np.testing.assert_array_equal(two[0], [[0, 0], [-9, -15]])  # all-fake group -> 0


def test_vertex_node_round_trip_on_packaged_graph():
    graph = load_mesh_graph()
    x = np.random.default_rng(3).normal(size=(2, graph.num_vertices, 3)).astype(np.float32)
    nodes = ToGraphNodes()(x).numpy()
    assert nodes.shape == (2, graph.num_nodes(0), 3)
    assert np.all(nodes[:, ~graph.real_mask(0)] == 0)
    np.testing.assert_array_equal(FromGraphNodes()(nodes).numpy(), x)
    # pooling 4 levels then upsampling gives every vertex its coarsest ancestor's value
    pooled = GraphMaxPool(4, real_mask=graph.real_mask(0))(nodes)
    back = FromGraphNodes()(GraphUpsample(4)(pooled)).numpy()
    pos = graph.vertex_positions()
    anc = pos // 16
    for v in (0, 500, 1304):
        group = pos[anc == anc[v]]
        np.testing.assert_allclose(back[0, v], x[0, graph.perms[0][group]].max(0))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: the -inf penalty in half precision
def test_masked_pool_gradient_goes_to_the_real_argmax_only(dtype):
    # groups of 4: [real, real, fake, fake] (max at node 1), [fake x 4] (-> 0, no gradient)
    x = tf.constant([[[1.0], [2.0], [9.0], [5.0], [7.0], [8.0], [3.0], [4.0]]], dtype)
    layer = GraphMaxPool(2, real_mask=[True, True, False, False] + [False] * 4, dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.constant([[[3.0], [5.0]]]))
    assert y.dtype == dtype
    np.testing.assert_array_equal(tf.cast(y, tf.float32).numpy().ravel(), [2.0, 0.0])
    np.testing.assert_array_equal(tf.cast(tape.gradient(loss, x), tf.float32).numpy().ravel(),
                                  [0, 3, 0, 0, 0, 0, 0, 0])


def test_chebconv_repeated_entries_are_summed():
    # as before the CSR change (tf.sparse.sparse_dense_matmul summed them): L = [[0.5, 0], [0, 0.3 + 0.4]]
    spec = {"indices": [[1, 1], [0, 0], [1, 1]], "values": [0.3, 0.5, 0.4], "num_nodes": 2}
    layer = ChebConv(1, K=2, laplacian=spec, use_bias=False, dtype="float64")
    x = np.array([[[2.0], [3.0]]])
    layer(x)
    layer.kernel.assign([[0.0], [1.0]])  # theta_0 = 0, theta_1 = 1: y = L x
    np.testing.assert_allclose(layer(x).numpy().ravel(), [1.0, 2.1], atol=1e-7)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        y = layer(xt)
    np.testing.assert_allclose(tape.gradient(y, xt).numpy().ravel(), [0.5, 0.7], atol=1e-7)
