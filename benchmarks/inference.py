"""Inference and training speed of the depth model on this machine: compiled vs fallback PointNet++ ops.

    python -m benchmarks.inference [--shape_network=JSON] [--num_stages=2] [--train_steps=3] [--repeats=5]
    python -m benchmarks.inference --model=rgb [--rgb_configs=cpu,paper] [--rgb_train_batch=8]

(--model=rgb measures Ge et al.'s RGB network instead: see benchmarks/_inference_rgb.py.)

Builds HandShapeNet (random weights: speed does not depend on training) with the packaged hand model
(or --hand_model), exports it twice with hsr_tf.export (ops traced as 'compiled' and as 'fallback'),
reloads each SavedModel and measures, in one run:

* latency at B = 1 (best of --repeats calls after warm-up, ms) and throughput at B = 32 (frames/s),
* the model's FLOPs per frame and the achieved GFLOP/s at B = 32, divided by the GFLOP/s of a dense
  float32 matmul (2048 x 2048 x 2048, tf.function) measured in the same run -- goal >= 0.5,
* training throughput (samples/s, B = 32): GradientTape step of HandShapeNet + HandShapeLoss + Adam as
  in hsr_tf.train.loop, traced with each backend.

FLOP count: ``tf.compat.v1.profiler`` (float_operation) on the frozen graph of the compiled-ops concrete
function at B = 32, i.e. the ops TensorFlow's cost model knows (MatMul, Conv2D, BatchMatMul,
element-wise, reductions); the custom ops (FPS, ball query, grouping: index work, no multiply-adds of
note) count 0, and the graph it counts is traced with the shared MLPs' chunked inference loop switched off
(the profiler does not count inside loop bodies). It is cross-checked against an analytic count of the dense layers (2 * in * out per
point for every shared-MLP layer and head layer), printed beside it. The analytic count is the one used
for the efficiency ratio (the profiler also counts cheap element-wise ops, which would flatter the ratio).

Timings are the minimum over repeats (the least noisy statistic on a shared machine); the machine's load
is printed with them.
"""
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks._timing import best_time  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("hand_model", None, "Hand model .npz (default: the packaged asset).")
flags.DEFINE_string("shape_network", None, "JSON ShapeNetwork overrides (default: the paper-size network).")
flags.DEFINE_integer("num_stages", 2, "Shape-network stages.")
flags.DEFINE_integer("num_points", 1024, "Input points N.")
flags.DEFINE_integer("batch", 32, "Batch for throughput and training.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (minimum reported).")
flags.DEFINE_integer("train_steps", 3, "Timed training steps per backend (0 = skip training).")
flags.DEFINE_string("backends", "compiled,fallback", "Comma-separated backends to measure.")
flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
flags.DEFINE_integer("seed", 0, "Seed of weights and inputs.")
flags.DEFINE_enum("model", "depth", ["depth", "rgb"], "Network to measure: the depth model (this module's "
                  "docstring) or Ge et al.'s RGB network (benchmarks/_inference_rgb.py).")
flags.DEFINE_string("rgb_configs", "cpu,paper", "--model=rgb: comma-separated networks, 'cpu' (the CPU-sized "
                    "network of experiments/flags/rgb_cpu_small.flags, 64 px) and/or 'paper' (256 px, 256 features).")
flags.DEFINE_string("rgb_network", None, "--model=rgb: JSON overrides applied to every network of --rgb_configs.")
flags.DEFINE_integer("rgb_train_batch", 8, "--model=rgb: batch of the timed training steps.")


def matmul_gflops(n=2048, repeats=5):
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    t = best_time(lambda: f().numpy(), repeats)
    return 2.0 * n ** 3 / t / 1e9


def profiler_flops(concrete_fn) -> int:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete_fn)
    opts = (tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
            .with_empty_output().build())
    prof = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=opts)
    return int(prof.total_float_ops)


def analytic_flops_per_frame(cfg: dict, num_stages: int, num_points: int, num_vertices: int, num_betas: int,
                             num_joints: int = 21, num_dataset_joints: int = 21, joint_regression: bool = True) -> int:
    """2 * (inputs x outputs) multiply-adds of every dense layer, per frame (see module docstring)."""
    def mlp(c_in, widths, points):
        total, c = 0, c_in
        for w in widths:
            total += 2 * c * w * points
            c = w
        return total, c

    per_stage = 0
    f1, c1 = mlp(3, cfg["sa1_mlp"], cfg["sa1_npoint"] * cfg["sa1_nsample"])
    f2, c2 = mlp(3 + c1, cfg["sa2_mlp"], cfg["sa2_npoint"] * cfg["sa2_nsample"])
    f3, c3 = mlp(3 + c2, cfg["global_mlp"], cfg["sa2_npoint"])
    per_stage += f1 + f2 + f3
    h = cfg["head_hidden"]
    for out in (num_joints * 3, num_betas, num_joints * 3):  # theta, beta, J_input heads
        per_stage += 2 * c3 * h + 2 * h * out
    # Hand model layer (shape blend, pose blend, skinning): dense products over the vertices.
    v3 = num_vertices * 3
    per_stage += 2 * num_betas * v3 + 2 * 9 * (num_joints - 1) * v3 + 2 * num_vertices * num_joints * 12 + 2 * 9 * num_vertices
    total = num_stages * per_stage
    if joint_regression:
        total += 2 * v3 * num_dataset_joints * 3
    return int(total)


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    import keras
    from hsr_tf import export as export_lib
    from hsr_tf import ops
    from hsr_tf.hand_model import HandModel
    from hsr_tf.layers import set_abstraction
    from hsr_tf.losses import HandShapeLoss
    from hsr_tf.models import SHAPE_NETWORK_DEFAULTS, HandShapeNet
    from hsr_tf.train import loop

    if FLAGS.model == "rgb":
        return main_rgb()
    backends = [b for b in FLAGS.backends.split(",") if b]
    if "compiled" in backends and not ops.compiled_available():
        print(f"compiled ops unavailable ({ops.fallback_reason()}); measuring the fallback only")
        backends = [b for b in backends if b != "compiled"]
    keras.utils.set_random_seed(FLAGS.seed)
    overrides = json.loads(FLAGS.shape_network) if FLAGS.shape_network else {}
    cfg = dict(SHAPE_NETWORK_DEFAULTS, **overrides)
    hm = HandModel.load(FLAGS.hand_model)
    model = HandShapeNet(hand_model=hm, num_stages=FLAGS.num_stages, shape_network=overrides or None)
    n, bsz = FLAGS.num_points, FLAGS.batch
    rng = np.random.default_rng(FLAGS.seed)
    # Hand-sized clouds in camera mm (the SavedModel normalises them).
    x1 = (rng.normal(size=(1, n, 3)) * [35, 45, 15] + [0, 0, 450]).astype(np.float32)
    xb = (rng.normal(size=(bsz, n, 3)) * [35, 45, 15] + [0, 0, 450]).astype(np.float32)
    model(tf.constant(xb[:1] / 150.0))
    load = os.getloadavg()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} (1 min); "
          f"network {'paper-size' if not overrides else 'overrides ' + json.dumps(overrides)}, "
          f"{FLAGS.num_stages} stage(s), N = {n}, V = {hm.mean_shape.shape[0]}")
    results = {"load_avg_1min": load[0], "shape_network": cfg, "num_stages": FLAGS.num_stages, "batch": bsz}
    mm = matmul_gflops()
    results["matmul_gflops"] = mm
    print(f"dense matmul 2048^3 float32: {mm:.1f} GFLOP/s")
    analytic = analytic_flops_per_frame(cfg, FLAGS.num_stages, n, hm.mean_shape.shape[0], hm.shape_basis.shape[0])
    results["analytic_gflop_per_frame"] = analytic / 1e9

    tmp = tempfile.mkdtemp(prefix="hsr_bench_")
    for be in backends:
        d = os.path.join(tmp, be)
        t0 = time.perf_counter()
        with ops.use_backend(be):
            export_lib.export_saved_model(model, d, model.faces, num_points=n)
        t_export = time.perf_counter() - t0
        served = tf.saved_model.load(d).signatures["serving_default"]
        c1, cb = tf.constant(x1), tf.constant(xb)
        lat = best_time(lambda: served(points=c1)["vertices"].numpy(), FLAGS.repeats)
        thr_t = best_time(lambda: served(points=cb)["vertices"].numpy(), max(2, FLAGS.repeats // 2))
        r = {"export_s": t_export, "latency_b1_ms": 1e3 * lat, "throughput_b32_fps": bsz / thr_t,
             "achieved_gflops_b32": analytic * bsz / thr_t / 1e9}
        r["efficiency_vs_matmul"] = r["achieved_gflops_b32"] / mm
        if be == "compiled" or "compiled" not in backends:
            # The profiler does not look inside the chunk loop of the shared MLPs' inference path, so the
            # graph it counts is traced with that loop switched off (the same layers, unchunked).
            mlps = [lyr for lyr in model._flatten_layers() if isinstance(lyr, set_abstraction._SharedMLP)]
            saved_rows = [lyr.chunk_rows for lyr in mlps]
            for lyr in mlps:
                lyr.chunk_rows = 0
            with ops.use_backend(be):
                conc = tf.function(lambda p: model(p, training=False)).get_concrete_function(
                    tf.TensorSpec([bsz, n, 3], tf.float32))
            for lyr, rows in zip(mlps, saved_rows):
                lyr.chunk_rows = rows
            try:
                results["profiler_gflop_per_frame"] = profiler_flops(conc) / bsz / 1e9
            except Exception as e:  # noqa: BLE001 (the profiler is best-effort; the analytic count is primary)
                results["profiler_error"] = f"{type(e).__name__}: {e}"
        results[be] = r
        print(f"[{be:8s}] SavedModel latency B=1: {r['latency_b1_ms']:.1f} ms | throughput B={bsz}: "
              f"{r['throughput_b32_fps']:.1f} frames/s | {r['achieved_gflops_b32']:.1f} GFLOP/s = "
              f"{r['efficiency_vs_matmul']:.2f} x matmul")
    print(f"FLOPs per frame: analytic (dense layers + hand model) {results['analytic_gflop_per_frame']:.3f} GFLOP; "
          f"tf profiler {results.get('profiler_gflop_per_frame', float('nan')):.3f} GFLOP")

    if FLAGS.train_steps > 0:
        loss = HandShapeLoss(model.mean_shape())
        batch = {"points": tf.constant(xb / 150.0 - xb.mean(1, keepdims=True) / 150.0),
                 "joints": tf.random.normal([bsz, 21, 3], stddev=0.3), "scale": tf.fill([bsz], 150.0),
                 "vertices": tf.random.normal([bsz, hm.mean_shape.shape[0], 3], stddev=0.3)}
        for be in backends:
            opt = loop.make_optimizer(loop.TrainConfig(workdir=tmp, steps_per_epoch=1000))

            def step():
                with tf.GradientTape() as tape:
                    out = model(batch["points"], training=True)
                    total, _ = loss(out, batch, 0)
                grads = tape.gradient(total, model.trainable_variables)
                opt.apply_gradients(zip(grads, model.trainable_variables))
                return total

            with ops.use_backend(be):
                f = tf.function(step)
                t0 = time.perf_counter()
                f().numpy()
                trace = time.perf_counter() - t0
            t = best_time(lambda: f().numpy(), FLAGS.train_steps)
            results[be]["train_samples_per_s"] = bsz / t
            results[be]["train_trace_s"] = trace
            print(f"[{be:8s}] training: {bsz / t:.1f} samples/s ({t:.2f} s per batch of {bsz}; first call "
                  f"incl. tracing {trace:.1f} s)")
    if len(backends) == 2:
        c, f = results["compiled"], results["fallback"]
        print(f"compiled / fallback: latency {f['latency_b1_ms'] / c['latency_b1_ms']:.2f}x faster, throughput "
              f"{c['throughput_b32_fps'] / f['throughput_b32_fps']:.2f}x"
              + (f", training {c['train_samples_per_s'] / f['train_samples_per_s']:.2f}x"
                 if "train_samples_per_s" in c else ""))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as fh:
            json.dump(results, fh, indent=2)


def main_rgb():
    """--model=rgb: see benchmarks/_inference_rgb.py."""
    from benchmarks import _inference_rgb

    load = os.getloadavg()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} (1 min); RGB network "
          f"(Ge et al.), random weights")
    mm = matmul_gflops()
    print(f"dense matmul 2048^3 float32: {mm:.1f} GFLOP/s")
    results = {"model": "rgb", "load_avg_1min": load[0], "matmul_gflops": mm, "batch": FLAGS.batch}
    overrides = json.loads(FLAGS.rgb_network) if FLAGS.rgb_network else {}
    for name in [c for c in FLAGS.rgb_configs.split(",") if c]:
        if name not in ("cpu", "paper"):
            raise app.UsageError(f"--rgb_configs: expected 'cpu' and/or 'paper', found {name!r}")
        results[name] = _inference_rgb.run(name, overrides, FLAGS.batch, FLAGS.repeats, FLAGS.rgb_train_batch,
                                           FLAGS.train_steps, mm, FLAGS.seed)
    results["load_avg_1min_end"] = os.getloadavg()[0]
    print(f"load average at the end {results['load_avg_1min_end']:.2f} (1 min)")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    app.run(main)
