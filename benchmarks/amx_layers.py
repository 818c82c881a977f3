"""A shared-MLP layer's training pass with the AMX products against the two-step path, in one run.

    python -m benchmarks.amx_layers [--scale=1.0] [--repeats=5]

For the four layer shapes of the paper-size network's first two levels at B = 32 (rows after the ball query's
padding copies are dropped: ~690K and ~218K; groups of 42 rows; row weights 1-3) and the global level's two
(4K rows; the training path keeps these on the two-step path: ``TrainingPath.fused_max_channels``), times one
forward + backward pass (gradients of h, kernel, gamma and beta for a fixed upstream gradient) of

* ``two-step``: ``tf.matmul`` in bfloat16, then the fused BatchNorm + ReLU (+ max) kernels, the kernel gradient
  summed over 16 slabs (the fast path without ``fused_products``);
* ``amx``: ``mlp_train.matmul_batch_norm_relu`` with the TensorFlow backward products (``fused_product_grads``
  off);
* ``amx+grads``: the same with the fused backward pass (the default);
* ``rows-packed``: ``amx+grads`` with every kernel kept in VNNI rows (``HSR_TF_OPS_AMX_PACKING=rows`` during the
  call), the packing before kernels of K >= 128 were laid out tile by tile; compare it with ``amx+grads``;
* ``max-recompute`` (max layers): ``amx+grads`` with the backward pass that recomputes every block's z and dz
  (``HSR_TF_OPS_MAX_GRAD=recompute``) instead of the default that forms neither (``docs/ops.md``).

Then, for the layers that the training path joins (``fused_pairs``: the first level's folded 3 -> 64 layer with
its 64 -> 64 -> 128 pair, the second level's 128 -> 128 -> 256 pair), one forward + backward pass of

* ``separate``: the layers as separate calls (``mlp_train.linear_relu``, two ``matmul_batch_norm_relu`` with the
  fused backward pass; ``fused_pairs`` off);
* ``joined``: ``mlp_pair.linear_relu_pair_max`` / ``mlp_pair.matmul_batch_norm_relu_max_pair`` (the default).

Prints the best of ``--repeats`` per case and each one's speed-up over ``two-step`` (``separate``) measured in the
same run (cases interleaved per repeat). Needs the compiled ops and a CPU with AMX-BF16 or AVX512-BF16 (the
"amx" cases then run on its dot products, ``mlp_train.bf16_products_backend``; ``rows-packed`` reads the other
packing there too).
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("scale", 1.0, "Fraction of the paper-size rows (smaller for a quick look).", lower_bound=1e-3)
flags.DEFINE_integer("repeats", 5, "Timed rounds (the best per case is reported).", lower_bound=1)

#: (name, rows, input channels, output channels, max over groups)
SHAPES = (("level 1, hidden 64 -> 64", 690_000, 64, 64, False),
          ("level 1, max 64 -> 128", 690_000, 64, 128, True),
          ("level 2, hidden 128 -> 128", 218_000, 128, 128, False),
          ("level 2, max 128 -> 256", 218_000, 128, 256, True),
          ("global, hidden 256 -> 512", 4_096, 256, 512, False),
          ("global, max 512 -> 1024", 4_096, 512, 1024, True))
GROUP = 42
#: (name, rows, input channels (3: a folded first layer), the layers' output channels)
UNITS = (("level 1, 3 -> 64 -> 64 -> 128", 690_000, 3, (64, 64, 128)),
         ("level 2, 128 -> 128 -> 256", 218_000, 128, (128, 256)))


def build_cases(rows, cin, c, pooled, seed):
    """{case: traced forward + backward function} for one layer shape."""
    from hsr_tf.layers import training_path
    from hsr_tf.ops import mlp_train

    rng = np.random.default_rng(seed)
    rows = rows // GROUP * GROUP
    h = tf.constant(np.maximum(rng.normal(size=(rows, cin)), 0).astype(np.float32), tf.bfloat16)
    kernel = tf.constant((rng.normal(size=(cin, c)) * 0.2).astype(np.float32))
    gamma = tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32))
    beta = tf.constant((rng.normal(size=c) * 0.3).astype(np.float32))
    weights = tf.constant(rng.integers(1, 4, size=rows).astype(np.float32))
    splits = tf.range(0, rows + 1, GROUP, dtype=tf.int32) if pooled else None
    upstream = tf.cast(tf.random.stateless_normal([rows // GROUP if pooled else rows, c], seed=[1, 2]), tf.bfloat16)

    def two_step():  # the training path's product (16 slabs for the kernel gradient), then the kernels
        return mlp_train.batch_norm_relu(training_path.rows_matmul(h, kernel), gamma, beta, 1e-3, row_splits=splits,
                                         weights=weights, compiled=True)[0]

    def fused(product_grad):
        return lambda: mlp_train.matmul_batch_norm_relu(h, kernel, gamma, beta, 1e-3, weights=weights,
                                                        row_splits=splits, slabs=training_path.WEIGHT_GRAD_SLABS,
                                                        product_grad=product_grad)[0]

    def traced(forward):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([h, kernel, gamma, beta])
                out = forward()
            # The upstream gradient fed in directly: no [R, C] loss of its own in the timing.
            grads = tape.gradient(out, [h, kernel, gamma, beta], output_gradients=upstream)
            return tf.add_n([tf.reduce_sum(tf.cast(g[:1], tf.float32)) for g in grads])
        return step

    def with_switch(name, value):  # the ops read their switches at every call
        def run():
            os.environ[name] = value
            try:
                return with_tiles()
            finally:
                del os.environ[name]
        return run

    with_tiles = traced(fused(True))
    cases = {"two-step": traced(two_step), "amx": traced(fused(False)), "amx+grads": with_tiles,
             "rows-packed": with_switch("HSR_TF_OPS_AMX_PACKING", "rows")}
    if pooled:
        cases["max-recompute"] = with_switch("HSR_TF_OPS_MAX_GRAD", "recompute")
    return cases


def build_unit_cases(rows, cin, channels, seed):
    """{"separate", "joined": traced forward + backward function} for the layers of UNITS."""
    from hsr_tf.ops import mlp_pair, mlp_train

    rng = np.random.default_rng(seed)
    rows = rows // GROUP * GROUP
    widths = (cin,) + channels
    params = []
    for a, b in zip(widths[:-1], widths[1:]):
        params += [tf.constant((rng.normal(size=(a, b)) * (1.0 if a < 32 else 0.2)).astype(np.float32)),
                   tf.constant(rng.uniform(0.5, 1.5, b).astype(np.float32)),
                   tf.constant((rng.normal(size=b) * 0.3).astype(np.float32))]
    folded = cin < 32  # (kernel0, bias0) of the folded layer; its third entry is unused
    if folded:
        rows_in = tf.constant(rng.normal(size=(rows, cin)).astype(np.float32))
    else:
        rows_in = tf.constant(np.maximum(rng.normal(size=(rows, cin)), 0).astype(np.float32), tf.bfloat16)
    weights = tf.constant(rng.integers(1, 4, size=rows).astype(np.float32))
    splits = tf.range(0, rows + 1, GROUP, dtype=tf.int32)
    upstream = tf.cast(tf.random.stateless_normal([rows // GROUP, channels[-1]], seed=[1, 2]), tf.bfloat16)
    k1, g1, b1, k2, g2, b2 = params[-6:]

    def separate():
        h = mlp_train.linear_relu(rows_in, params[0], params[2], tf.bfloat16) if folded else rows_in
        h, _, _ = mlp_train.matmul_batch_norm_relu(h, k1, g1, b1, 1e-3, weights=weights)
        return mlp_train.matmul_batch_norm_relu(h, k2, g2, b2, 1e-3, weights=weights, row_splits=splits)[0]

    def joined():
        if folded:
            return mlp_pair.linear_relu_pair_max(rows_in, params[0], params[2], k1, g1, b1, 1e-3, k2, g2, b2, 1e-3,
                                                 splits, weights=weights)[0]
        return mlp_pair.matmul_batch_norm_relu_max_pair(rows_in, k1, g1, b1, 1e-3, k2, g2, b2, 1e-3, splits,
                                                        weights=weights)[0]

    def traced(forward):
        @tf.function
        def step():
            sources = params if folded else [rows_in] + params
            with tf.GradientTape() as tape:
                tape.watch(sources)
                out = forward()
            grads = tape.gradient(out, sources, output_gradients=upstream)
            return tf.add_n([tf.reduce_sum(tf.cast(g[:1], tf.float32)) for g in grads if g is not None])
        return step

    return {"separate": traced(separate), "joined": traced(joined)}


def _time(cases, repeats):
    """Best seconds per case, cases interleaved per round."""
    for fn in cases.values():
        fn().numpy()  # trace and warm up
    best = {k: np.inf for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn().numpy()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # one tf.function per case: the retracing warning does not apply
    from hsr_tf.ops import mlp_train

    if not mlp_train.bf16_products_available():
        raise app.UsageError("needs the compiled ops and a CPU with AMX-BF16 or AVX512-BF16 "
                             "(mlp_train.bf16_products_available() is False)")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"rows x {FLAGS.scale}", flush=True)
    for name, rows, cin, c, pooled in SHAPES:
        best = _time(build_cases(max(GROUP, int(rows * FLAGS.scale)), cin, c, pooled, seed=0), FLAGS.repeats)
        base = best["two-step"]
        print(f"{name:28s} " + " | ".join(f"{k} {1e3 * t:6.1f} ms ({base / t:4.2f}x)" for k, t in best.items()),
              flush=True)
    for name, rows, cin, channels in UNITS:
        best = _time(build_unit_cases(max(GROUP, int(rows * FLAGS.scale)), cin, channels, seed=0), FLAGS.repeats)
        base = best["separate"]
        print(f"{name:30s} " + " | ".join(f"{k} {1e3 * t:6.1f} ms ({base / t:4.2f}x)" for k, t in best.items()),
              flush=True)


if __name__ == "__main__":
    app.run(main)
