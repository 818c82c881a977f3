"""Training speed of the depth model on this machine: today's float32 path against the fast paths, in one run.

    python -m benchmarks.training [--variants=reference,fast_float32,fast_bfloat16] [--steps=3] [--batch=32]
                                  [--data=hands|random] [--shape_network=JSON] [--num_stages=2] [--hand_model=NPZ]
                                  [--json_out=FILE]

Each variant builds HandShapeNet (packaged hand model, random weights from the same seed: speed does not
depend on training) under its precision policy, traces one training step exactly as ``hsr_tf.train.loop``
does (GradientTape over the model and ``HandShapeLoss``, Adam with the loop's schedule) and times it on one batch:
``--data=hands`` (default) renders B held-out frames of the shipped depth model's training set and reads them as
training does (augmentation on; N = the set's points per frame), ``random`` uses Gaussian blobs of
``--num_points``. The ball query's padding fraction of the batch is printed (what ``drop_duplicates`` skips).
Variants:

* ``reference``: float32, ``training_path.REFERENCE`` (Keras BatchNorm, reduce_max, no projection, no compiled
  kernels, distance-matrix nearest vertex): the training step as it was before ``hsr_tf.layers.training_path``
  -- the baseline of every ratio;
* ``fast_float32``: float32, the fast training path (every switch of ``training_path.FAST``);
* ``reference_bfloat16`` / ``fast_bfloat16``: the same under ``mixed_bfloat16`` (shared MLPs and hidden head
  layers in bfloat16; geometry, hand model, Procrustes, palm frame and losses float32);
* ``fast_bfloat16_no_projection``, ``fast_bfloat16_no_maxpool``, ``fast_bfloat16_no_kernels`` (TensorFlow's
  fused ops instead of the compiled kernels, hence also no ``drop_duplicates``),
  ``fast_bfloat16_with_duplicates``, ``fast_bfloat16_no_slabs``, ``fast_bfloat16_no_folded``,
  ``fast_bfloat16_no_fused_products``, ``fast_bfloat16_no_fused_grads``, ``fast_bfloat16_no_pairs``: the fast
  bfloat16 path with one optimisation switched off (what each one is worth); ``fast_bfloat16_fused_global``: the
  fused products also on the global level (``fused_max_channels`` 1024 instead of 256);
  ``fast_bfloat16_max_grad_recompute``: the max layers' backward pass recomputing every
  block's product and dz (``HSR_TF_OPS_MAX_GRAD=recompute``) instead of the default that never forms them
  (``docs/ops.md``, "The max layer's backward pass").

Timing: after one call that traces, ``--steps`` rounds; each round times one step of every variant in turn,
so all variants see the same load on a shared machine. The minimum over rounds is reported (the least noisy
statistic there), with the median. Printed per variant: samples/s, the speed-up against ``reference`` from the
same run, and the achieved GFLOP/s divided by the dense matmul rate at the variant's precision (2048^3
float32 / bfloat16 matmul, measured in the same run, before and after the steps: the higher of the two).

FLOPs: the model's nominal training FLOPs, 3x the forward count of ``benchmarks.inference``'s analytic model
(dense layers + hand model), the same number for every variant: the projected first layer does fewer
multiply-adds, which shows as a higher rate (the usual "model FLOPs" convention).
"""
import contextlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.inference import analytic_flops_per_frame  # noqa: E402

VARIANTS = {
    # name: (precision policy, training-path overrides of FAST, or None for REFERENCE)
    "reference": ("float32", None),
    "fast_float32": ("float32", {}),
    "reference_bfloat16": ("mixed_bfloat16", None),
    "fast_bfloat16": ("mixed_bfloat16", {}),
    "fast_bfloat16_no_projection": ("mixed_bfloat16", {"project_then_group": False}),
    "fast_bfloat16_no_maxpool": ("mixed_bfloat16", {"max_pool": False}),
    "fast_bfloat16_no_kernels": ("mixed_bfloat16", {"fused_kernels": False}),
    "fast_bfloat16_with_duplicates": ("mixed_bfloat16", {"drop_duplicates": False}),
    "fast_bfloat16_no_slabs": ("mixed_bfloat16", {"slab_weight_grad": False}),
    "fast_bfloat16_no_folded": ("mixed_bfloat16", {"folded_first_layer": False}),
    "fast_bfloat16_no_fused_products": ("mixed_bfloat16", {"fused_products": False}),
    "fast_bfloat16_no_fused_grads": ("mixed_bfloat16", {"fused_product_grads": False}),
    "fast_bfloat16_no_pairs": ("mixed_bfloat16", {"fused_pairs": False}),
    "fast_bfloat16_fused_global": ("mixed_bfloat16", {"fused_max_channels": 1024}),
    "fast_bfloat16_max_grad_recompute": ("mixed_bfloat16", {}),
}
# Variants that differ in the compiled kernels' run-time switches, set while their steps run (the kernels read
# them at every call).
VARIANT_ENVIRONMENT = {
    "fast_bfloat16_max_grad_recompute": {"HSR_TF_OPS_MAX_GRAD": "recompute"},
}


@contextlib.contextmanager
def variant_environment(name):
    """Sets the variant's kernel switches (``VARIANT_ENVIRONMENT``) for the duration of the block."""
    saved = {k: os.environ.get(k) for k in VARIANT_ENVIRONMENT.get(name, {})}
    os.environ.update(VARIANT_ENVIRONMENT.get(name, {}))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["reference", "fast_float32", "fast_bfloat16"],
                  f"Variants to time, from {sorted(VARIANTS)}; 'reference' is always included (the baseline).")
flags.DEFINE_integer("steps", 3, "Timed rounds (one step of every variant per round).", lower_bound=1)
flags.DEFINE_enum("data", "hands", ["hands", "random"],
                  "Input clouds: 'hands' renders held-out frames of the shipped depth model's training set (default "
                  "views) and reads them as training does (augmentation on); 'random': Gaussian blobs (their sparse "
                  "neighbourhoods pad far more ball-query slots than hands do, which flatters drop_duplicates).")
flags.DEFINE_string("profile", "", "After the timing, trace one step of this variant with the TensorFlow profiler "
                    "and print the seconds its ops took per op type (summed over threads; ops overlap).")
# --shape_network, --num_stages, --num_points, --batch, --seed, --hand_model and --json_out are the flags of
# benchmarks.inference (imported above for its FLOP count); its other flags are not used here.


def matmul_gflops(dtype, n=2048, repeats=3):
    """GFLOP/s of an n^3 matmul in ``dtype`` (best of ``repeats`` after a warm-up call)."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    f = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1], tf.float32)))
    f().numpy()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f().numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def make_batch(rng, bsz, n, num_vertices):
    """Hand-sized normalised clouds (std 0.25/0.3/0.1 normalised units) and random targets."""
    points = (rng.normal(size=(bsz, n, 3)) * [0.25, 0.3, 0.1]).astype(np.float32)
    return {"points": tf.constant(points), "joints": tf.constant(rng.normal(size=(bsz, 21, 3)).astype(np.float32) * .3),
            "scale": tf.fill([bsz], 150.0),
            "vertices": tf.constant(rng.normal(size=(bsz, num_vertices, 3)).astype(np.float32) * .3)}


def hand_batch(bsz, workdir, seed):
    """A training batch of ``bsz`` rendered hands: held-out frames of the shipped depth model's training set
    (``experiments.heldout``), read by ``hsr_tf.data.reader.make_dataset`` with augmentation."""
    from experiments import heldout, model_spec
    from hsr_tf.data import reader

    config = heldout.read_manifest_file(model_spec.training_manifest_path("pretrained:depth"))
    per_subject = -(-bsz // len(heldout.test_subjects(config)))
    slots = heldout.heldout_slots(config, per_subject)[:bsz]
    data_dir = os.path.join(workdir, "hands")
    heldout.render_heldout(data_dir, heldout.with_views(config, "default"), slots)
    ds = reader.make_dataset(data_dir, "test", batch_size=bsz, shuffle=False, augment=True, seed=seed)
    return next(iter(ds))


def duplicate_fractions(points, cfg):
    """Fractions of the two set-abstraction levels' ball-query slots that are padding copies (what
    ``drop_duplicates`` skips), for the first stage's input ``points`` [B, N, 3] (the second stage sees the
    cloud rigidly moved into the palm frame: the same neighbourhoods)."""
    from hsr_tf import ops

    def level(xyz, i):
        centres = tf.gather(xyz, ops.farthest_point_sample(xyz, cfg[f"sa{i}_npoint"]), batch_dims=1)
        idx = ops.ball_query(xyz, centres, cfg[f"sa{i}_radius"], cfg[f"sa{i}_nsample"])
        copies = tf.reduce_sum(tf.cast(tf.equal(idx[:, :, 1:], idx[:, :, :1]), tf.float32))
        return centres, float(copies) / float(tf.size(idx))

    centres, first = level(tf.convert_to_tensor(points, tf.float32), 1)
    return first, level(centres, 2)[1]


def profile_step(step, batch, top=20):
    """Runs ``step(batch)`` once under the TensorFlow profiler; returns [(op type, seconds)], most expensive
    first: the durations of the executor's op events (``tf_Compute`` lines of the host plane), summed per type
    (an op's duration is its wall time, whatever threads it used; ops of the two inter-op threads overlap)."""
    import collections
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="hsr_bench_profile_")
    tf.profiler.experimental.start(logdir)
    step(batch).numpy()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as fh:
        space.ParseFromString(fh.read())
    per_type = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):
                for ev in line.events:
                    per_type[plane.event_metadata[ev.metadata_id].name.rpartition(":")[2]] += ev.duration_ps * 1e-12
    # The executor's envelope around every op, and thread-pool shards of ops already counted.
    per_type.pop("Process", None)
    per_type.pop("ParallelFor", None)
    return per_type.most_common(top)


def build_step(name, overrides, hand_model, batch, workdir):
    """(traced training step of variant ``name``, its model); the policy and path are set while tracing."""
    import dataclasses

    import keras
    from hsr_tf import precision
    from hsr_tf.layers import training_path
    from hsr_tf.losses import HandShapeLoss
    from hsr_tf.models import HandShapeNet
    from hsr_tf.train import loop

    policy, path_overrides = VARIANTS[name]
    path = training_path.REFERENCE if path_overrides is None else dataclasses.replace(training_path.FAST,
                                                                                      **path_overrides)
    precision.set_policy(policy)
    try:
        keras.utils.set_random_seed(FLAGS.seed)
        model = HandShapeNet(hand_model=hand_model, num_stages=FLAGS.num_stages, shape_network=overrides or None)
        model(batch["points"][:1], training=False)
        loss = HandShapeLoss(model.mean_shape())
        opt = loop.make_optimizer(loop.TrainConfig(workdir=workdir, steps_per_epoch=1000))
        variables = model.trainable_variables

        @tf.function
        def step(b):
            with tf.GradientTape() as tape:
                out = model(b["points"], training=True)
                total, _ = loss(out, b, tf.constant(0, tf.int32))
            grads = tape.gradient(total, variables)
            opt.apply_gradients(zip(grads, variables))
            return total

        with training_path.use(path), variant_environment(name):
            t0 = time.perf_counter()
            first_loss = float(step(batch).numpy())
            trace_s = time.perf_counter() - t0
    finally:
        precision.set_policy("float32")
    return step, trace_s, first_loss


def main(argv):
    del argv
    import tempfile

    from absl import logging
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    from hsr_tf.hand_model import HandModel
    from hsr_tf.models import SHAPE_NETWORK_DEFAULTS
    from hsr_tf.ops import mlp_train

    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; expected some of {sorted(VARIANTS)}")
    names = ["reference"] + [v for v in FLAGS.variants if v != "reference"]
    overrides = json.loads(FLAGS.shape_network) if FLAGS.shape_network else {}
    cfg = dict(SHAPE_NETWORK_DEFAULTS, **overrides)
    hm = HandModel.load(FLAGS.hand_model)
    bsz, n = FLAGS.batch, FLAGS.num_points
    workdir = tempfile.mkdtemp(prefix="hsr_bench_train_")
    if FLAGS.data == "hands":
        batch = hand_batch(bsz, workdir, FLAGS.seed)
        n = int(batch["points"].shape[1])
    else:
        batch = make_batch(np.random.default_rng(FLAGS.seed), bsz, n, hm.mean_shape.shape[0])
    dup = duplicate_fractions(batch["points"], cfg)
    flops_step = 3 * analytic_flops_per_frame(cfg, FLAGS.num_stages, n, hm.mean_shape.shape[0],
                                              hm.shape_basis.shape[0]) * bsz
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; network "
          f"{'paper-size' if not overrides else 'overrides ' + json.dumps(overrides)}, {FLAGS.num_stages} stage(s), "
          f"B = {bsz}, N = {n}; nominal training FLOPs per step {flops_step / 1e9:.1f} GFLOP; input {FLAGS.data} "
          f"(padding copies among the ball-query slots: level 1 {dup[0]:.0%}, level 2 {dup[1]:.0%}); compiled "
          f"bfloat16 products: {mlp_train.bf16_products_backend() or 'none (TensorFlow products)'}", flush=True)
    dtypes = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}
    mm = {p: matmul_gflops(d) for p, d in dtypes.items()}
    steps, results = {}, {}
    for name in names:
        steps[name], trace_s, first_loss = build_step(name, overrides, hm, batch, workdir)
        results[name] = {"policy": VARIANTS[name][0], "trace_s": trace_s, "first_loss": first_loss, "times": []}
        print(f"[{name}] traced + first step {trace_s:.1f} s (loss {first_loss:.4g})", flush=True)
    for r in range(FLAGS.steps):
        for name in names:
            with variant_environment(name):
                t0 = time.perf_counter()
                steps[name](batch).numpy()
                results[name]["times"].append(time.perf_counter() - t0)
        # Per round, so that an interrupted run on a loaded machine still leaves figures.
        print(f"round {r + 1}: " + ", ".join(f"{n} {results[n]['times'][-1]:.2f} s" for n in names)
              + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
    for p, d in dtypes.items():
        mm[p] = max(mm[p], matmul_gflops(d))
    print(f"load average {os.getloadavg()[0]:.2f}; dense matmul 2048^3: float32 {mm['float32']:.1f} GFLOP/s, "
          f"bfloat16 {mm['mixed_bfloat16']:.1f} GFLOP/s")
    base = min(results["reference"]["times"])
    for name in names:
        r = results[name]
        t = min(r["times"])
        r.update(seconds_per_step=t, median_seconds_per_step=float(np.median(r["times"])),
                 samples_per_s=bsz / t, speedup_vs_reference=base / t, gflops=flops_step / t / 1e9)
        r["fraction_of_matmul"] = r["gflops"] / mm[r["policy"]]
        print(f"{name:28s} {r['samples_per_s']:7.2f} samples/s ({t:6.2f} s/step, median {r['median_seconds_per_step']:.2f})"
              f" | {r['speedup_vs_reference']:5.2f}x reference | {r['gflops']:6.1f} GFLOP/s = "
              f"{r['fraction_of_matmul']:.2f}x the {r['policy'].replace('mixed_', '')} matmul")
    if FLAGS.profile:
        if FLAGS.profile not in steps:
            raise app.UsageError(f"--profile: expected one of the timed variants {names}, found {FLAGS.profile!r}")
        print(f"[{FLAGS.profile}] op types by seconds (summed over threads) in one profiled step:")
        with variant_environment(FLAGS.profile):
            profiled = profile_step(steps[FLAGS.profile], batch)
        for op_type, seconds in profiled:
            print(f"  {seconds:7.3f} s  {op_type}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as fh:
            json.dump({"matmul_gflops": mm, "flops_per_step": flops_step, "batch": bsz, "shape_network": cfg,
                       "num_stages": FLAGS.num_stages, "variants": results}, fh, indent=2)


if __name__ == "__main__":
    app.run(main)
