"""Meshes of several RGB runs on the same held-out frames, side by side (Ge et al. 2019, Fig. 6).

  python -m experiments.weak_mesh_figure --workdirs=runs/weak_demo/full,runs/weak_demo/no_pseudo_gt \
      --data_dir=data/weak_demo/target --out=docs/img/weak_fig6.png [--num_frames=4] [--size=160]

Each row is a test frame: its input image, then for the ground-truth mesh (when the shards have one) and each
run's predicted mesh, a shaded rendering seen from the input camera and one seen from the side (the mesh
turned 90 degrees about the vertical axis through its centroid). Shading: Lambert with a head light from the
normals of the rendered depth (hsr_tf.render, exact z-buffer), so surface noise shows as it would in Fig. 6.
"""
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Published RGB runs (W/checkpoints + W/model_config.json).")
flags.DEFINE_list("labels", None, "Column titles (default: the workdirs' base names).")
flags.DEFINE_string("data_dir", None, "RGB shards; frames of --split in file order.")
flags.DEFINE_string("split", "test", "Split to draw frames from.")
flags.DEFINE_integer("num_frames", 4, "Rows.", lower_bound=1)
flags.DEFINE_integer("first_frame", 0, "Index of the first frame drawn (file order).", lower_bound=0)
flags.DEFINE_integer("size", 160, "Side of each panel (px).", lower_bound=32)
flags.DEFINE_string("out", None, "Output PNG.")
flags.mark_flags_as_required(["workdirs", "data_dir", "out"])


def shade(depth, focal):
    """[H, W] mm (0 = empty), focal length (px) -> [H, W] grey in [0, 1]: Lambert shading of the depth map's
    normals under a head light (slopes in mm per mm: a pixel spans z / focal mm)."""
    z = depth.astype(np.float64)
    gy, gx = np.gradient(np.where(z > 0, z, np.nan))
    gx, gy = gx * focal / np.maximum(z, 1e-6), gy * focal / np.maximum(z, 1e-6)
    n = np.stack([-gx, gy, np.ones_like(z)], -1)  # image rows grow downwards; z away from the viewer
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    g = np.nan_to_num(np.clip(n[..., 2], 0, 1), nan=0.6)  # outline pixels without a full gradient: flat grey
    return np.where(z > 0, 0.15 + 0.85 * g, 1.0)


def views(vertices, faces, camera, image_size, size):
    """(front, side) shaded renders [size, size] of one mesh [V, 3] mm seen by the crop camera [4]."""
    from hsr_tf import render

    cam = render.scale_camera(np.asarray(camera, np.float32)[None], size / image_size)
    front = render.render_depth(vertices[None].astype(np.float32), faces, cam, size, size).numpy()[0]
    c = vertices.mean(0)
    rot = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # 90 degrees about y
    side_v = (vertices - c) @ rot.T + c
    side = render.render_depth(side_v[None].astype(np.float32), faces, cam, size, size).numpy()[0]
    f = float(cam[0, 0])
    return shade(front, f), shade(side, f)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hsr_tf.data import rgb_reader
    from hsr_tf.train import loop

    labels = FLAGS.labels or [os.path.basename(os.path.normpath(w)) for w in FLAGS.workdirs]
    if len(labels) != len(FLAGS.workdirs):
        raise app.UsageError(f"--labels: expected {len(FLAGS.workdirs)} titles, found {len(labels)}")
    nets = [loop.load_model_from_workdir(w)[0] for w in FLAGS.workdirs]
    s = nets[0].image_size
    n = FLAGS.first_frame + FLAGS.num_frames
    ds = rgb_reader.make_rgb_dataset(FLAGS.data_dir, FLAGS.split, n, image_size=s, augment=False, shuffle=False,
                                     heatmap_size=s // 4, heatmap_sigma=4.0 * s / 256.0)
    batch = next(iter(ds))
    sel = slice(FLAGS.first_frame, n)
    inputs = {k: batch[k][sel] for k in ("image", "camera", "root_depth", "bone_scale")}
    meshes = []
    if float(batch["has_vertices"][sel].numpy().min()) > 0:
        meshes.append(("ground truth", batch["vertices"][sel].numpy()))
    for label, net in zip(labels, nets):
        meshes.append((label, net(inputs, training=False)["vertices"].numpy()))
    faces = np.asarray(nets[0].faces, np.int32)
    rows, cols = len(inputs["image"]), 1 + 2 * len(meshes)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(inputs["image"][r].numpy())
        for m, (label, verts) in enumerate(meshes):
            front, side = views(verts[r], faces, inputs["camera"][r].numpy(), s, FLAGS.size)
            axes[r, 1 + 2 * m].imshow(front, cmap="gray", vmin=0, vmax=1)
            axes[r, 2 + 2 * m].imshow(side, cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r, 1 + 2 * m].set_title(f"{label}\n(camera)", fontsize=7)
                axes[r, 2 + 2 * m].set_title(f"{label}\n(side)", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    fig.savefig(FLAGS.out, dpi=100)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
