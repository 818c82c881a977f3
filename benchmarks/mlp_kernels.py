"""Fused BatchNorm + ReLU (+ max) training kernels against TensorFlow's fused ops, in one run.

    python -m benchmarks.mlp_kernels [--rows=1048576] [--channels=128] [--group=64] [--repeats=5]

Times forward + backward (gradients of z, gamma and beta) of ``hsr_tf.ops.mlp_train.batch_norm_relu`` on an
[R, C] activation, the shape of the paper-size first level's last layer at B = 32, with the compiled kernels
(``compiled=True``) and with the reference (``FusedBatchNormV3`` + ReLU, + ``MaxPool`` over groups), in float32
and bfloat16, without and with the max over groups of ``--group`` rows. Prints the best of ``--repeats`` per
case, the speed-up of the kernels over the reference measured in the same run, and the kernels' bytes moved per
second (their passes: forward reads z twice and writes h, backward reads dh and z twice and writes dz; with the
max, forward reads z twice and backward reads z once and writes dz).
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 1 << 20, "R, rows of the activation.", lower_bound=1)
flags.DEFINE_integer("channels", 128, "C, channels.", lower_bound=1)
flags.DEFINE_integer("group", 64, "Rows per group of the max variant (must divide --rows).", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed calls per case (the best is reported).", lower_bound=1)


def time_case(z, group_size, compiled):
    from hsr_tf.ops import mlp_train

    gamma = tf.ones([z.shape[1]])
    beta = tf.zeros([z.shape[1]])
    rows = z.shape[0] // (group_size or 1)
    # A fixed upstream gradient, so that only the op pair is timed (no [R, C] fill or cast of its own).
    upstream = tf.cast(tf.random.stateless_normal([rows, z.shape[1]], seed=[3, 4]), z.dtype)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([z, gamma, beta])
            out, _, _ = mlp_train.batch_norm_relu(z, gamma, beta, 1e-3, group_size=group_size, compiled=compiled)
        dz, dgamma, _ = tape.gradient(out, [z, gamma, beta], output_gradients=upstream)
        return tf.cast(dz[0, 0], tf.float32) + dgamma[0]

    step().numpy()
    best = np.inf
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        step().numpy()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv):
    del argv
    from hsr_tf.ops import mlp_train

    if not mlp_train.kernels_available():
        raise app.UsageError("the compiled kernels are not available here (pure-TF ops backend or a GPU visible)")
    if FLAGS.rows % FLAGS.group:
        raise app.UsageError(f"--group ({FLAGS.group}) must divide --rows ({FLAGS.rows})")
    r, c = FLAGS.rows, FLAGS.channels
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"z [{r}, {c}], groups of {FLAGS.group} rows; forward + backward, best of {FLAGS.repeats}")
    for dtype in (tf.float32, tf.bfloat16):
        z = tf.cast(tf.random.stateless_normal([r, c], seed=[1, 2]), dtype)
        for group_size in (None, FLAGS.group):
            ref = time_case(z, group_size, compiled=False)
            fused = time_case(z, group_size, compiled=True)
            passes = 4 if group_size else 8  # [R, C] tensors read or written by the kernels, forward + backward
            gbps = passes * r * c * dtype.size / fused / 1e9
            print(f"{dtype.name:8s} {'max over groups' if group_size else 'no max':15s} reference {ref * 1e3:7.1f} ms"
                  f" | kernels {fused * 1e3:7.1f} ms = {ref / fused:4.2f}x faster, {gbps:5.1f} GB/s moved")


if __name__ == "__main__":
    app.run(main)
