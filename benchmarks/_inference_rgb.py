"""The RGB section of ``python -m benchmarks.inference --model=rgb`` (Ge et al.'s network, random weights).

Measured in one run, for the paper-size network (``PAPER_CONFIG``: 256 px, 256 features) or the CPU-sized one
(the network of experiments/flags/rgb_cpu_small.flags: 64 px, 32 features), or ``--rgb_network`` overrides:

* the exported SavedModel (hsr_tf.export, uint8 256 x 256 input, resized inside to the network's size):
  latency at B = 1 (best of repeats) and throughput at B = 32 (frames/s);
* the three parts the paper times (section 5.3: 19.9 ms per frame on a GTX 1080 = 12.6 ms stacked hourglass
  + 4.7 ms residual encoder and mesh Graph CNN + 2.6 ms pose regressor), each a tf.function of the Keras
  layers, at B = 1 (ms) and per frame at B = 32;
* FLOPs per frame counted by the TF profiler on the frozen B = 1 graph of the whole network (Conv2D, MatMul,
  element-wise...; the sparse L~ products of the Chebyshev convolutions are not counted by the profiler and are
  added analytically: 2 nnz(L~) F_in per product, K - 1 products per ChebConv), and the achieved GFLOP/s at
  B = 32 divided by the dense matmul GFLOP/s measured in the same run;
* training samples/s: a GradientTape step of phase 3 (L_fully, RMSprop) on synthetic targets at --rgb_train_batch.

Timings are minima over repeats; the machine's load is printed with them.

Legend: B batch, S network input size, V vertices, J joints.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks._timing import best_time

PAPER_MS = {"total": 19.9, "hourglass": 12.6, "encoder_gcn": 4.7, "pose_regressor": 2.6}
CPU_NETWORK = dict(image_size=64, filters=32, num_residual=1, gcn_fc=256, gcn_features=(32, 16),
                   regressor_features=(16, 32), regressor_hidden=128, mlp_hidden=256)


def _sparse_flops_per_frame(net) -> int:
    """2 nnz(L~) F_in for each sparse product of every ChebConv (K - 1 per layer), per frame."""
    from hsr_tf.layers.graph_conv import ChebConv

    total = 0
    for layer in net._flatten_layers():
        if isinstance(layer, ChebConv):
            nnz = layer.laplacian_nnz
            total += 2 * nnz * layer.f_in * (layer.K - 1)
    return total


def _profiler_flops(fn, spec) -> int:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(tf.function(fn).get_concrete_function(spec))
    opts = (tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
            .with_empty_output().build())
    prof = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=opts)
    return int(prof.total_float_ops)


def run(config_name: str, overrides: dict, batch: int, repeats: int, train_batch: int, train_steps: int,
        matmul_gflops: float, seed: int = 0) -> dict:
    """Measure one network; prints a block of lines and returns the figures."""
    import keras

    from hsr_tf import export as export_lib
    from hsr_tf import losses_rgb
    from hsr_tf.models.rgb_mesh_net import PAPER_CONFIG, RGBMeshNet

    keras.utils.set_random_seed(seed)
    cfg = dict(PAPER_CONFIG if config_name == "paper" else CPU_NETWORK, **overrides)
    net = RGBMeshNet("mesh", **cfg)
    s = net.image_size
    net(net.example_input(1))
    res = {"config": config_name, "network": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
           "params": int(sum(np.prod(v.shape) for v in net.trainable_variables))}
    print(f"RGB network '{config_name}': {json.dumps(res['network'])}, {res['params'] / 1e6:.2f} M parameters")

    # -- FLOPs per frame (profiler on the frozen B = 1 graph + the sparse products)
    spec = {"image": tf.TensorSpec([1, s, s, 3]), "camera": tf.TensorSpec([1, 4]),
            "root_depth": tf.TensorSpec([1]), "bone_scale": tf.TensorSpec([1])}
    try:
        prof = _profiler_flops(lambda x: {k: net(x, training=False)[k] for k in ("vertices", "joints")}, spec)
    except Exception as e:  # noqa: BLE001 (best-effort count; reported, not fatal)
        prof, res["profiler_error"] = 0, f"{type(e).__name__}: {e}"
    sparse = _sparse_flops_per_frame(net)
    flops = prof + sparse
    res.update(profiler_gflop_per_frame=prof / 1e9, sparse_gflop_per_frame=sparse / 1e9, gflop_per_frame=flops / 1e9)

    # -- the SavedModel
    rng = np.random.default_rng(seed)

    def inputs(b):
        return {"image": tf.constant(rng.integers(0, 256, (b, 256, 256, 3), dtype=np.uint8)),
                "camera": tf.constant(np.tile([[512.0, 512.0, 127.5, 127.5]], (b, 1)), tf.float32),
                "root_depth": tf.fill([b], 500.0), "bone_scale": tf.fill([b], 30.0),
                "is_left": tf.constant(np.arange(b) % 2 == 1)}

    d = os.path.join(tempfile.mkdtemp(prefix="hsr_bench_rgb_"), "sm")
    t0 = time.perf_counter()
    export_lib.export_rgb_saved_model(net, d)
    res["export_s"] = time.perf_counter() - t0
    served = tf.saved_model.load(d).signatures["serving_default"]
    x1, xb = inputs(1), inputs(batch)
    lat = best_time(lambda: served(**x1)["vertices"].numpy(), repeats)
    thr = best_time(lambda: served(**xb)["vertices"].numpy(), max(2, repeats // 2))
    res.update(latency_b1_ms=1e3 * lat, throughput_fps=batch / thr, achieved_gflops=flops * batch / thr / 1e9)
    res["efficiency_vs_matmul"] = res["achieved_gflops"] / matmul_gflops
    resize = "no resize" if s == 256 else f"resized to {s} inside"
    print(f"  SavedModel (uint8 256 px in, {resize}): latency B=1 {res['latency_b1_ms']:.1f} ms "
          f"({res['latency_b1_ms'] / PAPER_MS['total']:.2f} x the paper's {PAPER_MS['total']} ms on a GTX 1080) | "
          f"throughput B={batch} {res['throughput_fps']:.1f} frames/s | {flops / 1e9:.2f} GFLOP/frame "
          f"(profiler {prof / 1e9:.2f} + sparse {sparse / 1e9:.3f}) -> {res['achieved_gflops']:.1f} GFLOP/s = "
          f"{res['efficiency_vs_matmul']:.2f} x matmul")

    # -- the three parts of section 5.3, on the Keras layers
    def parts_inputs(b):
        img = tf.random.uniform([b, s, s, 3]) - 0.5
        hg = net.hourglass(img, training=False)
        latent = net.encoder(hg["features"], hg["heatmaps"], training=False)
        return img, hg, net.mesh_gcn(latent, training=False)

    f_hg = tf.function(lambda img: net.hourglass(img, training=False)["heatmaps"])
    f_gcn = tf.function(lambda f, h: net.mesh_gcn(net.encoder(f, h, training=False), training=False))
    f_pose = tf.function(lambda uvd: net.pose_regressor(uvd, training=False))
    parts = {}
    for b in (1, batch):
        img, hg, uvd = parts_inputs(b)
        for name, fn in (("hourglass", lambda: f_hg(img).numpy()),
                         ("encoder_gcn", lambda: f_gcn(hg["features"], hg["heatmaps"]).numpy()),
                         ("pose_regressor", lambda: f_pose(uvd).numpy())):
            parts[f"{name}_b{b}_ms_per_frame"] = 1e3 * best_time(fn, repeats if b == 1 else max(2, repeats // 2)) / b
    res["parts"] = parts
    print("  parts, ms per frame at B=1 | at B=%d (paper, GTX 1080):" % batch)
    for name in ("hourglass", "encoder_gcn", "pose_regressor"):
        print(f"    {name:15s} {parts[f'{name}_b1_ms_per_frame']:8.2f} | {parts[f'{name}_b{batch}_ms_per_frame']:8.2f}"
              f"   ({PAPER_MS[name]} ms; ours / paper at B=1: "
              f"{parts[f'{name}_b1_ms_per_frame'] / PAPER_MS[name]:.2f})")

    # -- training samples/s (phase 3: L_fully, RMSprop, every variable but the frozen pose regressor)
    if train_steps > 0:
        b = train_batch
        x = net.example_input(b)
        x["image"] = tf.random.uniform([b, s, s, 3])
        out0 = net(x, training=False)
        hm = net.heatmap_size
        target = {"heatmaps": tf.random.uniform([b, hm, hm, 21]) * 0.1, "vertices": out0["vertices"] + 3.0,
                  "joints": out0["joints"] + 3.0, "has_vertices": tf.ones([b]), **x}
        frozen = {id(v) for v in net.pose_regressor.trainable_variables}
        variables = [v for v in net.trainable_variables if id(v) not in frozen]
        opt = keras.optimizers.RMSprop(1e-4)
        cfg_loss = losses_rgb.RGBLossConfig()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = net(x, training=True)
                total, _ = losses_rgb.fully_supervised_loss(target, out, net.faces, cfg_loss, s)
            opt.apply_gradients(zip(tape.gradient(total, variables), variables))
            return total

        t0 = time.perf_counter()
        step().numpy()
        res["train_trace_s"] = time.perf_counter() - t0
        t = best_time(lambda: step().numpy(), train_steps)
        res["train_samples_per_s"], res["train_batch"] = b / t, b
        print(f"  training (phase 3, L_fully, RMSprop): {b / t:.2f} samples/s ({t:.2f} s per batch of {b}; first "
              f"call incl. tracing {res['train_trace_s']:.1f} s)")
    return res
