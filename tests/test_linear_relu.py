"""The compiled linear + bias + ReLU op on few input channels, and the folded first layer of the training path.

``mlp_train.linear_relu`` (``HsrLinearRelu`` and its gradients) is compared with ``relu(u @ kernel + bias)`` in
float64 NumPy; ``training_path.linear_batch_norm_relu_train`` (BatchNorm moments from the inputs' K x K
moments) with BatchNorm applied to the materialised ``u @ kernel``, including row weights against the batch
with every copy present.
"""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.layers import training_path
from hsr_tf.ops import mlp_train

pytestmark = pytest.mark.skipif(not mlp_train.kernels_available(),
                                reason="compiled ops unavailable or a GPU is visible")


def _run(u, kernel, bias, upstream, dtype, compiled):
    with tf.GradientTape() as tape:
        tape.watch([u, kernel, bias])
        h = mlp_train.linear_relu(u, kernel, bias, dtype, compiled=compiled)
        loss = tf.reduce_sum(tf.cast(h, tf.float32) * upstream)
    return [tf.cast(t, tf.float32).numpy() for t in [h] + tape.gradient(loss, [u, kernel, bias])]


def _numpy(u, kernel, bias, upstream):
    """Forward and the three gradients in float64."""
    u, kernel, bias, up = (np.asarray(t, np.float64) for t in (u, kernel, bias, upstream))
    pre = u @ kernel + bias
    dy = up * (pre > 0)
    return [np.maximum(pre, 0), dy @ kernel.T, u.T @ dy, dy.sum(0)]


def _inputs(rng, rows, k, c):
    u = tf.constant(rng.normal(size=(rows, k)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(k, c)).astype(np.float32))
    bias = tf.constant((rng.normal(size=c) * 0.5).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(rows, c)).astype(np.float32))
    return u, kernel, bias, upstream


@pytest.mark.parametrize("rows,k,c", [(7, 3, 64), (1500, 3, 128), (1500, 3, 20), (600, 5, 33), (600, 5, 64), (3, 1, 16)])
def test_float32_matches_numpy(rows, k, c, rng):
    """Every output channel count (multiples of 64 take the AVX-512 loops where the CPU has them; multiple of the
    16 dot-product lanes or not), blocks of rows, K = 1..5 (K > 4: the generic loops)."""
    u, kernel, bias, up = _inputs(rng, rows, k, c)
    got = _run(u, kernel, bias, up, tf.float32, True)
    for name, g, e in zip(["h", "du", "dkernel", "dbias"], got, _numpy(u, kernel, bias, up)):
        np.testing.assert_allclose(g, e, rtol=0, atol=2e-6 * max(1.0, np.abs(e).max()), err_msg=name)


def test_bfloat16_result_is_the_rounded_float32_one(rng):
    """The bfloat16 result is the float32 one rounded once; the gradients see the bfloat16 upstream gradient."""
    u, kernel, bias, up = _inputs(rng, 900, 3, 64)
    h32 = mlp_train.linear_relu(u, kernel, bias, tf.float32, compiled=True)
    h16 = mlp_train.linear_relu(u, kernel, bias, tf.bfloat16, compiled=True)
    assert h16.dtype == tf.bfloat16
    np.testing.assert_array_equal(tf.cast(h16, tf.float32).numpy(), tf.cast(tf.cast(h32, tf.bfloat16), tf.float32))
    got = _run(u, kernel, bias, up, tf.bfloat16, True)
    exact = _numpy(u, kernel, bias, tf.cast(tf.cast(up, tf.bfloat16), tf.float32).numpy())
    for name, g, e in zip(["du", "dkernel", "dbias"], got[1:], exact[1:]):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max(), err_msg=name)
    # The reference implementation (TensorFlow ops) computes the same function.
    ref = _run(u, kernel, bias, up, tf.bfloat16, False)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-2 * np.abs(ref[0]).max())


def test_input_gradient_is_not_run_when_the_rows_are_data(rng):
    """In a traced training step whose rows are data, the input-gradient op is pruned from the graph."""
    u, kernel, bias, up = _inputs(rng, 50, 3, 16)
    kernel = tf.Variable(kernel)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(mlp_train.linear_relu(u, kernel, bias, compiled=True) * up)
        return loss, tape.gradient(loss, kernel)

    graph = step.get_concrete_function().graph
    # tf.function runs only the ops its outputs depend on: walk back from them.
    needed, todo = set(), [t.op for t in graph.outputs]
    while todo:
        op = todo.pop()
        if op.name not in needed:
            needed.add(op.name)
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    types = {graph.get_operation_by_name(name).type for name in needed}
    assert {"HsrLinearRelu", "HsrLinearReluGrad"} <= types and "HsrLinearReluInputGrad" not in types, types
    assert "HsrLinearReluInputGrad" in {op.type for op in graph.get_operations()}  # built, then pruned
    np.testing.assert_allclose(step()[1], _numpy(u, kernel, bias, up)[2], rtol=1e-5, atol=1e-5)


def test_bad_arguments(rng):
    u, kernel, bias, _ = _inputs(rng, 10, 3, 8)
    with pytest.raises(ValueError, match=r"u must have shape \[R, K\] with 1 <= K <= 16"):
        mlp_train.linear_relu(tf.zeros([4, 17]), tf.zeros([17, 8]), bias, compiled=True)
    with pytest.raises(ValueError, match=r"kernel must have shape \[3, C\]"):
        mlp_train.linear_relu(u, tf.zeros([4, 8]), bias, compiled=True)
    with pytest.raises(ValueError, match=r"bias must have shape \[8\]"):
        mlp_train.linear_relu(u, kernel, tf.zeros([7]), compiled=True)
    from hsr_tf.ops import compiled
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"the incoming gradient must have shape \[10, 8\]"):
        compiled.load().hsr_linear_relu_grad(tf.zeros([9, 8]), u, kernel, bias)


def _batch_norm(layers_c, rng):
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    bn.build((None, layers_c))
    bn.gamma.assign(rng.uniform(0.5, 1.5, layers_c).astype(np.float32) * rng.choice([-1, 1], layers_c))
    bn.beta.assign((rng.normal(size=layers_c) * 0.3).astype(np.float32))
    bn.moving_mean.assign(rng.normal(size=layers_c).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, layers_c).astype(np.float32))
    return bn


@pytest.mark.parametrize("compiled", [True, False])
def test_folded_first_layer_equals_batch_norm_of_the_product(compiled, rng):
    """Outputs, gradients (u, kernel, gamma, beta) and moving statistics equal BatchNorm + ReLU applied to the
    materialised u @ kernel (the fused kernels' batch_norm_relu in float32), with row weights equal to the batch
    with every copy present."""
    rows, c = 400, 24
    u = tf.constant((rng.normal(size=(rows, 3)) * [0.3, 0.5, 0.2] + [0.1, -0.2, 0.05]).astype(np.float32))
    counts = rng.integers(1, 4, size=rows)
    kernel = tf.constant(rng.normal(size=(3, c)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(rows, c)).astype(np.float32))
    bn = _batch_norm(c, rng)
    state = [v.numpy() for v in bn.variables]

    def folded(uu, weights, up):
        for v, s in zip(bn.variables, state):
            v.assign(s)
        with tf.GradientTape() as tape:
            tape.watch([uu, kernel])
            with training_path.use(training_path.FAST if compiled else dataclasses_no_kernels()):
                h = training_path.linear_batch_norm_relu_train(uu, kernel, bn, weights=weights)
            loss = tf.reduce_sum(h * up)
        grads = tape.gradient(loss, [uu, kernel, bn.gamma, bn.beta])
        return [h.numpy()] + [g.numpy() for g in grads] + [bn.moving_mean.numpy(), bn.moving_variance.numpy()]

    def materialised(uu, up):
        for v, s in zip(bn.variables, state):
            v.assign(s)
        with tf.GradientTape() as tape:
            tape.watch([uu, kernel])
            with training_path.use(training_path.FAST):
                h = training_path.batch_norm_relu_train(tf.matmul(uu, kernel), bn)
            loss = tf.reduce_sum(h * up)
        grads = tape.gradient(loss, [uu, kernel, bn.gamma, bn.beta])
        return [h.numpy()] + [g.numpy() for g in grads] + [bn.moving_mean.numpy(), bn.moving_variance.numpy()]

    names = ["h", "du", "dkernel", "dgamma", "dbeta", "moving_mean", "moving_variance"]
    got, ref = folded(u, None, upstream), materialised(u, upstream)
    for name, g, r in zip(names, got, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * max(1.0, np.abs(r).max()), err_msg=name)
    assert not np.allclose(got[5], state[2])  # the moving mean moved
    # Weighted rows: the batch with every copy present (the gradient of a kept row summed over its copies).
    got = folded(u, tf.constant(counts.astype(np.float32)), upstream)
    expanded = materialised(tf.repeat(u, counts, axis=0),
                            tf.repeat(upstream, counts, axis=0) / np.repeat(counts, counts)[:, None].astype(np.float32))
    owner = np.repeat(np.arange(rows), counts)
    expanded[0] = expanded[0][np.searchsorted(owner, np.arange(rows))]
    expanded[1] = tf.math.segment_sum(expanded[1], owner).numpy()
    for name, g, r in zip(names, got, expanded):
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * max(1.0, np.abs(r).max()), err_msg=name)


def dataclasses_no_kernels():
    import dataclasses
    return dataclasses.replace(training_path.FAST, fused_kernels=False)


def test_set_abstraction_trains_its_first_layer_folded(rng):
    """The first level's training graph runs the folded first layer (no [R, C] product of its 3-channel rows);
    with the switch off it does not."""
    from hsr_tf.layers.set_abstraction import SetAbstraction
    sa = SetAbstraction(8, 0.8, 6, [16, 32])
    xyz = tf.constant(rng.normal(size=(2, 40, 3)).astype(np.float32))
    sa(xyz, training=False)
    for path, expected in ((training_path.FAST, True), (training_path.REFERENCE, False)):
        with training_path.use(path):
            graph = tf.function(lambda: sa(xyz, training=True)).get_concrete_function().graph
        assert ("HsrLinearRelu" in {op.type for op in graph.get_operations()}) == expected


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_instruction_sets_give_the_same_results(isa):
    """The AVX2 and baseline builds of the linear + ReLU loops agree with NumPy."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from tests import test_linear_relu as t
        rng = np.random.default_rng(4)
        u, kernel, bias, up = t._inputs(rng, 700, 3, 40)
        got = t._run(u, kernel, bias, up, tf.float32, True)
        for g, e in zip(got, t._numpy(u, kernel, bias, up)):
            np.testing.assert_allclose(g, e, rtol=0, atol=2e-6 * max(1.0, np.abs(e).max()))
        print("checked")
    """)
    env = dict(os.environ, HSR_TF_OPS_MLP_ISA=isa, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "checked" in res.stdout, res.stderr[-3000:]
