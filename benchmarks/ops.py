"""Benchmark of the hsr_tf PointNet++ ops: compiled kernels vs the pure-TF fallback vs peers.

    python -m benchmarks.ops [--batch 32] [--repeats 10] [--group_channels 16]

For B clouds of points uniform in the cube [-0.5, 0.5]^3 (a normalised hand's extent), times
  * FPS 1024 -> 512 and 512 -> 128,
  * ball query 512 x 64 in 1024 points (r = 0.15) and 128 x 64 in 512 points (r = 0.3), centroids from FPS,
  * group_points forward + backward (features [B,1024,C], indices [B,512,64]),
each as: compiled op (in tf.function), fallback in tf.function, fallback with XLA (jit_compile=True), and
peers on the same inputs looped over the batch: vanilla FPS from `fpsample` (start index 0) and
`scipy.spatial.cKDTree` (tree build + query_ball_point). Best wall time of --repeats runs after warm-up
(the minimum is the least noisy statistic on a shared machine);
ratios are "other / compiled" (> 1 means the compiled op is faster). Outputs are checked for equality first.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from hsr_tf import ops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "batch size B")
flags.DEFINE_integer("repeats", 10, "timed runs per measurement (the best is reported)")
flags.DEFINE_integer("group_channels", 16, "feature channels C for group_points")
flags.DEFINE_integer("seed", 0, "random seed")


def timeit(fn, repeats):
    fn()
    fn()  # warm-up (tracing, compilation, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.min(times))


def fetch(x):
    return tf.nest.map_structure(lambda t: t.numpy(), x)


def backend_fns(make):
    """make() -> python function using hsr_tf.ops; returns {name: callable} per backend."""
    fns = {}
    if ops.compiled_available():
        with ops.use_backend("compiled"):
            f = tf.function(make())
            f.get_concrete_function()
        fns["compiled"] = f
    with ops.use_backend("fallback"):
        f = tf.function(make())
        f.get_concrete_function()
        fns["fallback"] = f
        f = tf.function(make(), jit_compile=True)
        f.get_concrete_function()
        fns["fallback_xla"] = f
    return fns


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    b, reps = FLAGS.batch, FLAGS.repeats
    clouds = {n: rng.uniform(-0.5, 0.5, size=(b, n, 3)).astype(np.float32) for n in (1024, 512)}
    tcl = {n: tf.constant(c) for n, c in clouds.items()}
    rows = []

    try:
        import fpsample
    except ImportError:
        fpsample = None
        print("fpsample not installed: FPS peer skipped")

    for n, m in [(1024, 512), (512, 128)]:
        fns = backend_fns(lambda m=m, n=n: (lambda: ops.farthest_point_sample(tcl[n], m)))
        ref = fetch(fns["fallback"]())
        for k, f in fns.items():
            assert np.array_equal(fetch(f()), ref), f"FPS {k} differs from the fallback"
        res = {k: timeit(lambda f=f: fetch(f()), reps) for k, f in fns.items()}
        if fpsample is not None:
            pts = clouds[n]
            peer = lambda pts=pts, m=m: [fpsample.fps_sampling(pts[i], m, start_idx=0) for i in range(b)]
            assert np.array_equal(np.stack(peer()), ref), "fpsample disagrees"
            res["peer"] = timeit(peer, reps)
        rows.append((f"FPS {n}->{m}", "fpsample.fps_sampling", res))

    for n, m, r in [(1024, 512, 0.15), (512, 128, 0.3)]:
        cen_np = np.take_along_axis(clouds[n], fetch(ops.farthest_point_sample(clouds[n], m))[..., None], 1)
        cen = tf.constant(cen_np)
        fns = backend_fns(lambda n=n, r=r, cen=cen: (lambda: ops.ball_query(tcl[n], cen, r, 64)))
        ref = fetch(fns["fallback"]())
        for k, f in fns.items():
            got = fetch(f())
            if not np.array_equal(got, ref):
                print(f"  note: ball query {k} differs from the fallback in {(got != ref).sum()} entries (ties)")

        def peer(n=n, r=r, cen_np=cen_np):
            return [cKDTree(clouds[n][i]).query_ball_point(cen_np[i], r) for i in range(b)]

        lists = peer()[0]  # same neighbour sets (first 64 in index order) for the first cloud
        for j in range(m):
            inside = sorted(lists[j])[:64]
            assert set(inside) <= set(ref[0, j].tolist()) or not inside
        res = {k: timeit(lambda f=f: fetch(f()), reps) for k, f in fns.items()}
        res["peer"] = timeit(peer, reps)
        rows.append((f"ball query {m}x64 in {n} (r={r})", "cKDTree build+query_ball_point", res))

    c = FLAGS.group_channels
    feat = tf.constant(rng.normal(size=(b, 1024, c)).astype(np.float32))
    idx = tf.constant(rng.integers(0, 1024, size=(b, 512, 64)).astype(np.int32))
    up = tf.constant(rng.normal(size=(b, 512, 64, c)).astype(np.float32))

    def make_group():
        def f():
            with tf.GradientTape() as tape:
                tape.watch(feat)
                out = ops.group_points(feat, idx)
            return out, tape.gradient(out, feat, output_gradients=up)
        return f

    fns = backend_fns(make_group)
    ref = fetch(fns["fallback"]())
    for k, f in fns.items():
        got = fetch(f())
        assert np.array_equal(got[0], ref[0]) and np.allclose(got[1], ref[1], atol=1e-4), k
    res = {k: timeit(lambda f=f: fetch(f()), reps) for k, f in fns.items()}
    rows.append((f"group_points fwd+bwd [{b},1024,{c}] x [{b},512,64]", "-", res))

    print(f"\nhsr_tf.ops benchmark: B={b}, best of {reps} runs, ms (CPU: {os.cpu_count()} cores, "
          f"TF {tf.__version__}, backend at import: {ops.backend()})")
    head = f"{'op':44s} {'compiled':>9s} {'fallback':>9s} {'fb+XLA':>9s} {'peer':>9s}  {'fb/c':>6s} {'xla/c':>6s} {'peer/c':>6s}  peer"
    print(head)
    print("-" * len(head))
    for name, peer_name, res in rows:
        cmp_ = res.get("compiled", float("nan"))
        cells = [res.get(k, float("nan")) for k in ("compiled", "fallback", "fallback_xla", "peer")]
        ratios = [x / cmp_ for x in cells[1:]]
        print(f"{name:44s} " + " ".join(f"{x:9.2f}" for x in cells) + "  " +
              " ".join(f"{x:6.1f}" for x in ratios) + f"  {peer_name}")


if __name__ == "__main__":
    app.run(main)
