"""Speed of the RGB network's graph layers (hsr_tf.layers.graph_conv): before/after the CSR node-major ChebConv.

    python -m benchmarks.graph_conv [--batches=1,32] [--policies=float32,mixed_bfloat16] [--repeats=7]

Two stacks at the paper's widths (Ge et al. Fig. 4 and section 4.2, K = 3), on the packaged hand-mesh graph:

* mesh GCN: [B, M_4, 64] -> up x4 -> ChebConv 64 -> 64 -> 32 (level 2) -> up x4 -> ChebConv 32 -> 32 -> 3
  (level 0), ReLU between the convolutions (batch norm left out: it is the same in both paths);
* pose regressor: [B, M_0, 3] -> ChebConv 3 -> 32 -> 32 (level 0) -> pool /4 -> ChebConv 32 -> 64 -> 64
  (level 2) -> pool /4 (over real nodes).

Each runs with the library's ChebConv ("new": CSR sparse x dense on a node-major [M, B F] layout, Clenshaw's
sum when F_out < F_in) and with the previous implementation ("old", reimplemented below on the same weights:
tf.sparse.sparse_dense_matmul on an [M, F B] layout, transposes of single scalars, L~ in the compute dtype).
Both paths' outputs are compared first. Times are the minimum over --repeats of wall time and of process CPU
time (the CPU time is the steadier figure on a shared, loaded machine), old and new interleaved in each repeat
so that both see the same load. GFLOP/s = each path's own multiply-add count (dense: 2 M K F_in F_out per
frame; sparse: 2 nnz(L~) C per product, K - 1 products, C = F_in, or F_out on the Clenshaw path; backward
counted as 2 x the dense and 1 x the sparse forward) / wall time, divided by the rate of a dense float32
2048 x 2048 matmul measured in the same run. A per-layer table (B = --layer_batch, fwd + bwd) shows where the
time goes, up/down-sampling included. Last, the whole CPU-sized RGB network's forward + backward
(--whole_net_batch), old vs new.

Legend: B batch, M_l nodes of level l (M_0 = 1680, M_2 = 420, M_4 = 105), F features, K Chebyshev order.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from hsr_tf.graph import load_mesh_graph  # noqa: E402
from hsr_tf.layers.graph_conv import ChebConv, GraphMaxPool, GraphUpsample  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["1", "32"], "batch sizes B")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies")
flags.DEFINE_integer("repeats", 7, "timed runs per measurement (the minimum is reported)")
flags.DEFINE_integer("layer_batch", 32, "B of the per-layer table (0: no table)")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_integer("whole_net_batch", 32, "B of the whole CPU-sized RGB network's forward + backward, old vs new "
                     "ChebConv (0: skip)")


def legacy_chebconv(layer, x):
    """The ChebConv.call of before this change (same maths, same weights): [B, M, F_in] -> [B, M, F_out].

    Also usable as ``ChebConv.call`` itself (``layer`` is then ``self``).
    """
    lap = tf.sparse.SparseTensor(layer._lap_indices, tf.constant(layer._lap_values, x.dtype),
                                 (layer.num_nodes, layer.num_nodes))
    b, m, f_in, k_terms = tf.shape(x)[0], layer.num_nodes, layer.f_in, layer.K
    x0 = tf.reshape(tf.transpose(x, [1, 2, 0]), [m, -1])                     # [M, F_in * B]
    terms = [x0]
    if k_terms > 1:
        terms.append(tf.sparse.sparse_dense_matmul(lap, x0))
    for _ in range(2, k_terms):
        terms.append(2.0 * tf.sparse.sparse_dense_matmul(lap, terms[-1]) - terms[-2])
    t = tf.reshape(tf.stack(terms, 0), [k_terms, m, f_in, b])
    t = tf.reshape(tf.transpose(t, [3, 1, 0, 2]), [b, m, k_terms * f_in])
    y = tf.matmul(t, tf.cast(layer.kernel, t.dtype))
    return y + tf.cast(layer.bias, y.dtype)


def build_stacks(graph):
    """{'mesh': (input [M, F], [layers]), 'pose': ...}; layers are called in order (ReLU marked by 'relu')."""
    mesh = [GraphUpsample(2), ChebConv(64, 3, level=2), "relu", ChebConv(32, 3, level=2), "relu", GraphUpsample(2),
            ChebConv(32, 3, level=0), "relu", ChebConv(3, 3, level=0)]
    pose = [ChebConv(32, 3, level=0), ChebConv(32, 3, level=0), GraphMaxPool(2, real_mask=graph.real_mask(0)),
            ChebConv(64, 3, level=2), ChebConv(64, 3, level=2), GraphMaxPool(2, real_mask=graph.real_mask(2))]
    return {"mesh": ((graph.num_nodes(4), 64), mesh), "pose": ((graph.num_nodes(0), 3), pose)}


def run_stack(layers, x, legacy):
    for layer in layers:
        if layer == "relu":
            x = tf.nn.relu(x)
        elif legacy and isinstance(layer, ChebConv):
            x = legacy_chebconv(layer, x)
        else:
            x = layer(x)
    return x


def stack_flops(layers, legacy):
    """(forward, forward + backward) multiply-adds x 2 per frame of the ChebConvs, by each path's algorithm."""
    fwd = total = 0
    for layer in layers:
        if isinstance(layer, ChebConv):
            dense = 2 * layer.num_nodes * layer.K * layer.f_in * layer.filters
            width = layer.f_in if legacy or layer.filters >= layer.f_in else layer.filters
            sparse = 2 * len(layer._lap_values) * width * (layer.K - 1)
            fwd += dense + sparse
            total += 3 * dense + 2 * sparse
    return fwd, total


def best(fns, repeats):
    """{name: fn} -> {name: (min wall s, min CPU s)}, the functions interleaved in every repeat."""
    for fn in fns.values():
        fn()
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (min(wall[k]), min(cpu[k])) for k in fns}


def matmul_gflops(repeats, n=2048):
    a = tf.random.stateless_normal([n, n], seed=[1, 2])
    f = tf.function(lambda: tf.matmul(a, a))
    wall, _ = best({"mm": lambda: f().numpy()}, repeats)["mm"]
    return 2 * n ** 3 / wall / 1e9


def make_fns(layers, x, variables):
    """Forward and forward + backward (gradients of sum(y^2) w.r.t. x and every variable) tf.functions."""
    out = {}
    for legacy in (False, True):
        tag = "old" if legacy else "new"
        fwd = tf.function(lambda legacy=legacy: run_stack(layers, x, legacy))

        def step(legacy=legacy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.cast(run_stack(layers, x, legacy), tf.float32) ** 2)
            return tape.gradient(loss, [x] + variables)

        bwd = tf.function(step)
        out[f"{tag} fwd"] = lambda f=fwd: f().numpy()
        out[f"{tag} fwd+bwd"] = lambda f=bwd: [g.numpy() for g in f()]
        out[f"_{tag}"] = fwd
    return out


def main(argv):
    del argv
    graph = load_mesh_graph()
    load = os.getloadavg()
    mm = matmul_gflops(FLAGS.repeats)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} (1 min); dense float32 "
          f"matmul {mm:.1f} GFLOP/s (same run)")
    for policy in FLAGS.policies:
        keras.mixed_precision.set_dtype_policy(policy)
        keras.utils.set_random_seed(FLAGS.seed)
        stacks = build_stacks(graph)
        for bsz in (int(b) for b in FLAGS.batches):
            for name, ((m, f), layers) in stacks.items():
                x = tf.cast(tf.random.stateless_normal([bsz, m, f], seed=[FLAGS.seed, bsz]),
                            keras.config.dtype_policy().compute_dtype)
                run_stack(layers, x, False)  # builds the layers
                variables = [v.value for layer in layers if not isinstance(layer, str)
                             for v in layer.trainable_weights]
                fns = make_fns(layers, x, variables)
                new, old = fns.pop("_new")().numpy(), fns.pop("_old")().numpy()
                diff = float(np.max(np.abs(new.astype(np.float32) - old.astype(np.float32))))
                scale = float(np.max(np.abs(old.astype(np.float32))))
                times = best(fns, FLAGS.repeats)
                print(f"\n{policy} B={bsz} {name} stack (max |new - old| = {diff:.2e}, max |old| = {scale:.2e})")
                for tag in ("old", "new"):
                    fl_f, fl_b = stack_flops(layers, tag == "old")
                    (wf, cf), (wb, cb) = times[f"{tag} fwd"], times[f"{tag} fwd+bwd"]
                    gf, gb = fl_f * bsz / wf / 1e9, fl_b * bsz / wb / 1e9
                    print(f"  {tag}: fwd {1e3 * wf:8.2f} ms (CPU {1e3 * cf:8.2f}, {1e3 * wf / bsz:7.3f} ms/frame, "
                          f"{gf:5.2f} GFLOP/s = {gf / mm:.3f} x matmul)   fwd+bwd {1e3 * wb:8.2f} ms (CPU "
                          f"{1e3 * cb:8.2f}, {1e3 * wb / bsz:7.3f} ms/frame, {gb:5.2f} GFLOP/s = "
                          f"{gb / mm:.3f} x matmul)")
                ratio_f = times["old fwd"][0] / times["new fwd"][0]
                ratio_b = times["old fwd+bwd"][0] / times["new fwd+bwd"][0]
                print(f"  old / new wall: fwd {ratio_f:.2f} x, fwd+bwd {ratio_b:.2f} x; CPU: fwd "
                      f"{times['old fwd'][1] / times['new fwd'][1]:.2f} x, fwd+bwd "
                      f"{times['old fwd+bwd'][1] / times['new fwd+bwd'][1]:.2f} x")
            if FLAGS.layer_batch and bsz == int(FLAGS.batches[-1]):
                per_layer_table(stacks, FLAGS.layer_batch, FLAGS.repeats)
    if FLAGS.whole_net_batch:
        keras.mixed_precision.set_dtype_policy("float32")
        whole_net(FLAGS.whole_net_batch, FLAGS.repeats, FLAGS.seed)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (1 min)")


def whole_net(bsz, repeats, seed):
    """The CPU-sized RGBMeshNet (benchmarks._inference_rgb.CPU_NETWORK, mesh variant, float32): forward + backward
    of every trainable variable (loss: sum of squared vertices and joints, no optimizer), old vs new ChebConv."""
    from benchmarks._inference_rgb import CPU_NETWORK
    from hsr_tf.models.rgb_mesh_net import RGBMeshNet

    keras.utils.set_random_seed(seed)
    net = RGBMeshNet("mesh", **CPU_NETWORK)
    inputs = net.example_input(bsz)
    inputs["image"] = tf.random.stateless_uniform(inputs["image"].shape, seed=[seed, 3])
    net(inputs)
    new_call = ChebConv.call

    def traced(legacy):
        # The old path is swapped in only while this function is traced.
        ChebConv.call = legacy_chebconv if legacy else new_call

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = net(inputs, training=True)
                loss = 1e-6 * (tf.reduce_sum(out["vertices"] ** 2) + tf.reduce_sum(out["joints"] ** 2))
            return [g for g in tape.gradient(loss, net.trainable_variables) if g is not None]

        try:
            step.get_concrete_function()
        finally:
            ChebConv.call = new_call
        return lambda: [g.numpy() for g in step()]

    times = best({"old": traced(True), "new": traced(False)}, repeats)
    print(f"\nwhole CPU-sized RGB network (mesh variant, 64 px), B={bsz}, forward + backward, float32")
    for tag in ("old", "new"):
        wall, cpu = times[tag]
        print(f"  {tag}: {1e3 * wall:8.1f} ms (CPU {1e3 * cpu:8.1f}), {bsz / wall:6.1f} samples/s")
    print(f"  old / new wall: {times['old'][0] / times['new'][0]:.2f} x")


def per_layer_table(stacks, bsz, repeats):
    """Forward + backward wall ms of every layer alone (new path; old too for ChebConv) at batch ``bsz``."""
    print(f"\n  per layer, B={bsz}, fwd+bwd wall ms (CPU ms)")
    for name, ((m, f), layers) in stacks.items():
        x = tf.cast(tf.random.stateless_normal([bsz, m, f], seed=[0, 1]), keras.config.dtype_policy().compute_dtype)
        for layer in layers:
            if layer == "relu":
                x = tf.nn.relu(x)
                continue
            variables = [v.value for v in layer.trainable_weights]
            fns = make_fns([layer], x, variables)
            fns = {k: v for k, v in fns.items() if "fwd+bwd" in k and (k.startswith("new") or
                                                                      isinstance(layer, ChebConv))}
            times = best(fns, repeats)
            desc = (f"ChebConv L{layer.level} {layer.f_in}->{layer.filters}" if isinstance(layer, ChebConv)
                    else f"{type(layer).__name__}({layer.levels}) {tuple(x.shape[1:])}")
            cells = "   ".join(f"{k.split()[0]} {1e3 * w:7.2f} ({1e3 * c:7.2f})" for k, (w, c) in times.items())
            print(f"  {name:4s} {desc:34s} {cells}")
            x = layer(x)


if __name__ == "__main__":
    app.run(main)
