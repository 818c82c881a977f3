"""Benchmark: HandModelLayer forward + backward vs ``smplx.lbs.lbs`` (PyTorch, CPU), same arrays.

    python -m benchmarks.hand_model [--batch=32] [--threads=2] [--rounds=7] [--iters=20]

Both sides get the same model arrays (the packaged asset by default), the same beta [B, S] and
theta [B, J, 3], and compute the vertices and the gradient of ``sum(vertices * g)`` with respect to
beta and theta. Intra-op threads are set to ``--threads`` on both (inter-op 1). Rounds alternate
between the libraries; the median over rounds of the per-iteration time is reported, with the ratio
smplx / ours (> 1 means we are faster), and the max |vertex difference|. The minimum over
rounds is printed too: on a shared machine it is the figure least affected by other processes.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("batch", 32, "batch size B")
flags.DEFINE_integer("threads", 2, "intra-op threads for both TensorFlow and PyTorch")
flags.DEFINE_integer("rounds", 15, "alternating timing rounds")
flags.DEFINE_integer("iters", 20, "iterations per round")
flags.DEFINE_string("model_path", None, "hand model .npz (default: the packaged asset)")
flags.DEFINE_boolean("xla", True, "also time the layer under tf.function(jit_compile=True)")
flags.DEFINE_integer("seed", 0, "random seed for beta/theta")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import torch
    from smplx.lbs import lbs
    torch.set_num_threads(FLAGS.threads)
    torch.set_num_interop_threads(1)

    from hsr_tf.hand_model.layer import HandModelLayer
    from hsr_tf.hand_model.model import HandModel

    model = HandModel.load(FLAGS.model_path)
    layer = HandModelLayer(model)
    rng = np.random.default_rng(FLAGS.seed)
    b, s, j, v = FLAGS.batch, model.num_betas, model.num_joints, model.num_vertices
    beta = rng.normal(size=(b, s)).astype(np.float32)
    theta = rng.normal(scale=0.4, size=(b, j, 3)).astype(np.float32)
    g = rng.normal(size=(b, v, 3)).astype(np.float32)

    beta_tf, theta_tf, g_tf = tf.constant(beta), tf.constant(theta), tf.constant(g)

    def tf_step(bt, th, gg):
        with tf.GradientTape() as tape:
            tape.watch([bt, th])
            verts = layer(bt, th)["vertices"]
            loss = tf.reduce_sum(verts * gg)
        gb, gt = tape.gradient(loss, [bt, th])
        return verts, gb, gt

    tf_fns = {"tf.function": tf.function(tf_step)}
    if FLAGS.xla:
        tf_fns["tf.function+XLA"] = tf.function(tf_step, jit_compile=True)

    t_args = dict(
        v_template=torch.tensor(model.mean_shape),
        shapedirs=torch.tensor(np.ascontiguousarray(model.shape_basis.transpose(1, 2, 0))),  # [V, 3, S]
        posedirs=torch.tensor(model.pose_basis.reshape(model.num_pose_features, v * 3)),  # [P, V*3]
        J_regressor=torch.tensor(model.joint_regressor),
        parents=torch.tensor(model.parents.astype(np.int64)),
        lbs_weights=torch.tensor(model.skinning_weights),
    )
    beta_t = torch.tensor(beta, requires_grad=True)
    theta_t = torch.tensor(theta.reshape(b, j * 3), requires_grad=True)
    g_t = torch.tensor(g)

    def torch_step():
        beta_t.grad = None
        theta_t.grad = None
        verts, _ = lbs(beta_t, theta_t, **t_args)
        (verts * g_t).sum().backward()
        return verts

    # correctness: same vertices and gradients
    ours, gb, gt = tf_fns["tf.function"](beta_tf, theta_tf, g_tf)
    theirs = torch_step()
    vdiff = float(np.abs(ours.numpy() - theirs.detach().numpy()).max())
    gdiff_b = float(np.abs(gb.numpy() - beta_t.grad.numpy()).max() / np.abs(beta_t.grad.numpy()).max())
    gdiff_t = float(np.abs(gt.numpy().reshape(b, -1) - theta_t.grad.numpy()).max()
                    / np.abs(theta_t.grad.numpy()).max())
    print(f"model: V={v} J={j} S={s} P={model.num_pose_features}; B={b}; threads={FLAGS.threads}")
    print(f"max |vertices ours - smplx| = {vdiff:.2e} mm; relative max grad diff beta {gdiff_b:.1e}, theta {gdiff_t:.1e}")

    for fn in tf_fns.values():  # warm up / trace
        for _ in range(3):
            fn(beta_tf, theta_tf, g_tf)
    for _ in range(3):
        torch_step()

    times = {name: [] for name in list(tf_fns) + ["smplx"]}
    for _ in range(FLAGS.rounds):
        for name, fn in tf_fns.items():
            t0 = time.perf_counter()
            for _ in range(FLAGS.iters):
                out = fn(beta_tf, theta_tf, g_tf)
            _ = out[0].numpy()
            times[name].append((time.perf_counter() - t0) / FLAGS.iters)
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
            torch_step()
        times["smplx"].append((time.perf_counter() - t0) / FLAGS.iters)
    med = {k: float(np.median(t)) * 1e3 for k, t in times.items()}
    best = {k: float(np.min(t)) * 1e3 for k, t in times.items()}
    for name in times:
        print(f"{name:>16}: median {med[name]:8.2f} ms, min {best[name]:8.2f} ms / forward+backward "
              f"({FLAGS.rounds} rounds x {FLAGS.iters})")
    for name in tf_fns:
        print(f"ratio smplx / {name}: median {med['smplx'] / med[name]:.2f}x, min {best['smplx'] / best[name]:.2f}x")


if __name__ == "__main__":
    app.run(main)
