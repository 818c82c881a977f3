"""Renderer speed: forward and forward + backward at 32x32 and 256x256, B = 32, against open3d ray casting of
the same meshes in the same run. ``python -m benchmarks.render [--sizes=32,256] [--repeats=3]``."""
import time

import numpy as np
import open3d as o3d
import tensorflow as tf
from absl import app, flags

from hsr_tf import render
from hsr_tf.hand_model import HandModel

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["32", "256"], "image sizes (square)")
flags.DEFINE_integer("batch", 32, "batch size")
flags.DEFINE_integer("repeats", 3, "timed repeats")


def _timed(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(_):
    model = HandModel.load()
    faces = np.asarray(model.faces, np.int32)
    rng = np.random.default_rng(0)
    verts = model.mean_shape[None] - model.mean_shape.mean(0) + np.stack(
        [rng.uniform(-20, 20, FLAGS.batch), rng.uniform(-20, 20, FLAGS.batch), rng.uniform(400, 600, FLAGS.batch)], 1)[:, None]
    verts = tf.constant(verts.astype(np.float32))
    print(f"backend={render.backend()} B={FLAGS.batch} faces={len(faces)}")
    for size in map(int, FLAGS.sizes):
        cam = tf.constant(np.tile([[size * 2.2, size * 2.2, size / 2 - 0.5, size / 2 - 0.5]], [FLAGS.batch, 1]), tf.float32)
        fwd = tf.function(lambda v: render.render_depth(v, faces, cam, size, size))

        @tf.function
        def fwd_bwd(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                loss = tf.reduce_sum(render.render_depth(v, faces, cam, size, size))
            return tape.gradient(loss, v)

        t_f = _timed(lambda: fwd(verts).numpy(), FLAGS.repeats)
        t_fb = _timed(lambda: fwd_bwd(verts).numpy(), FLAGS.repeats)
        r, c = np.indices((size, size)).astype(np.float32)
        k = cam.numpy()[0]
        d = np.stack([(c - k[2]) / k[0], (k[3] - r) / k[1], np.ones_like(c)], -1)
        rays = o3d.core.Tensor(np.concatenate([np.zeros_like(d), d], -1).astype(np.float32))
        vn = verts.numpy()

        def o3d_all():
            for b in range(FLAGS.batch):
                sc = o3d.t.geometry.RaycastingScene()
                sc.add_triangles(o3d.core.Tensor(vn[b]), o3d.core.Tensor(faces.astype(np.uint32)))
                sc.cast_rays(rays)["t_hit"].numpy()

        t_o = _timed(o3d_all, FLAGS.repeats)
        print(f"{size}x{size}: forward {t_f * 1e3:.1f} ms, forward+backward {t_fb * 1e3:.1f} ms, "
              f"open3d ray cast (forward only, incl. scene build) {t_o * 1e3:.1f} ms; "
              f"forward / open3d = {t_f / t_o:.2f}, forward+backward / open3d = {t_fb / t_o:.2f}")


if __name__ == "__main__":
    app.run(main)
