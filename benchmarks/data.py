"""Data pipeline benchmark: synthetic rendering rate, reader rate with augmentation, and a contact sheet.

  python -m benchmarks.data [--num_subjects=4 --poses_per_subject=60 --views_per_pose=3] [--num_workers=0]
      [--out_dir=benchmarks/out] [--reader_batches=200 --batch_size=32]

1. Renders a small dataset (default 4 x 60 x 3 = 720 frames, Kinect noise, depth crops stored) with all cores into
   a temporary directory and reports frames/s (wall clock of the whole generation, process start-up included) and
   the extrapolated time of the full 50 x 1840 x 3 configuration.
2. Reads the rendered train shards with hsr_tf.data.reader (shuffle, batch, augmentation, repeat) and reports
   frames/s after a warm-up.
3. Times the depth model's training step on one reader batch (HandShapeNet, paper-size shape network and the
   demo's small one from experiments/flags/demo.flags; tf.function GradientTape step with HandShapeLoss and Adam,
   like hsr_tf/train/loop.py) and reports its frames/s and reader_fps / train_fps (the issue asks for >= 5).
4. Writes ``{out_dir}/data_contact_sheet.png``: stored depth crops with the ground-truth joints (projected through
   the stored uvd and crop window) and bones drawn on top, and ``{out_dir}/data_benchmark.json`` with the figures.
"""
import json
import os
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_subjects", 4, "Subjects rendered for the rate measurement.")
flags.DEFINE_integer("poses_per_subject", 60, "Poses per subject.")
flags.DEFINE_integer("views_per_pose", 3, "Views per pose.")
flags.DEFINE_integer("num_workers", 0, "Render workers (0 = all cores).")
flags.DEFINE_enum("noise", "kinect", ["kinect", "none"], "Noise model for the rendering run.")
flags.DEFINE_string("out_dir", "benchmarks/out", "Where the PNG and JSON go.")
flags.DEFINE_string("data_dir", None, "Render into this directory (default: a temporary one, deleted).")
flags.DEFINE_integer("reader_batches", 200, "Batches timed for the reader.")
flags.DEFINE_integer("batch_size", 32, "Reader batch size.")
flags.DEFINE_integer("sheet_frames", 24, "Frames on the contact sheet.")
flags.DEFINE_list("train_models", ["paper", "demo"], "Models whose train step is timed ('paper', 'demo'; empty: none).")
flags.DEFINE_integer("train_steps", 5, "Timed train steps per model (after 2 warm-up steps, tracing included there).")

# The demo's small shape network (experiments/flags/demo.flags, --shape_network).
DEMO_SHAPE_NETWORK = {"sa1_npoint": 128, "sa1_nsample": 16, "sa1_mlp": [32, 32, 64], "sa2_npoint": 32,
                      "sa2_nsample": 16, "sa2_mlp": [64, 64, 128], "global_mlp": [128, 256], "head_hidden": 128}

FULL_FRAMES = 50 * 1840 * 3


def contact_sheet(data_dir, path, num_frames, seed=0):
    """Draw stored depth crops with ground-truth joints; returns the number of frames drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hsr_tf.data import shards
    from hsr_tf.hand_model.skeleton import PARENTS

    files = shards.list_shards(data_dir, "train") + shards.list_shards(data_dir, "test")
    frames = []
    for f in files:
        d = shards.load_shard(f, ["depth", "crop_window", "uvd", "subject", "pose", "view", "joints"])
        for i in range(len(d["depth"])):
            frames.append({k: v[i] for k, v in d.items()} | {"split": shards.read_attrs(f)["split"]})
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(frames), size=min(num_frames, len(frames)), replace=False)
    cols = 6
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.8))
    colors = ["k", "r", "orange", "g", "b", "m"]
    for ax, i in zip(np.ravel(axes), pick):
        fr = frames[i]
        depth = fr["depth"].astype(np.float32)
        size = depth.shape[0]
        u0, v0, u1, v1 = fr["crop_window"]
        valid = depth > 0
        shown = np.where(valid, depth, np.nan)
        lo, hi = (np.nanmin(shown), np.nanmax(shown)) if valid.any() else (0, 1)
        ax.imshow(shown, cmap="viridis_r", vmin=lo, vmax=hi)
        ju = (fr["uvd"][:, 0] - u0 + 0.5) * size / (u1 - u0) - 0.5
        jv = (fr["uvd"][:, 1] - v0 + 0.5) * size / (v1 - v0) - 0.5
        for j, p in enumerate(PARENTS):
            if p >= 0:
                finger = (j - 1) // 4 + 1
                ax.plot([ju[p], ju[j]], [jv[p], jv[j]], "-", color=colors[finger], lw=1.2)
        ax.scatter(ju, jv, s=6, c="w", edgecolors="k", linewidths=0.4, zorder=3)
        ax.set_title(f"{fr['split']} s{fr['subject']} p{fr['pose']} v{fr['view']} z={fr['joints'][0, 2]:.0f}",
                     fontsize=7)
        ax.set_xlim(-0.5, size - 0.5)  # joints outside the crop must not rescale the panel
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in np.ravel(axes)[len(pick):]:
        ax.axis("off")
    fig.suptitle("synthetic depth crops (300 mm cube) + GT joints (thumb red, index orange, middle green, "
                 "ring blue, pinky magenta)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return len(pick)


def train_step_rate(batch, which: str, steps: int):
    """Frames/s of the depth model's training step on ``batch`` (a reader batch, reused every step).

    Two-stage HandShapeNet with joint regression and Procrustes (the defaults), ``which`` = 'paper'
    (SHAPE_NETWORK_DEFAULTS) or 'demo' (DEMO_SHAPE_NETWORK); HandShapeLoss with the paper's defaults; Adam 1e-3.
    """
    import keras
    import tensorflow as tf

    from hsr_tf.losses import HandShapeLoss
    from hsr_tf.models import HandShapeNet

    if which not in ("paper", "demo"):
        raise ValueError(f"train_models: expected 'paper' or 'demo', found {which!r}")
    keras.utils.set_random_seed(0)
    model = HandShapeNet(num_dataset_joints=int(batch["joints"].shape[1]),
                         shape_network=DEMO_SHAPE_NETWORK if which == "demo" else None)
    loss = HandShapeLoss(model.mean_shape())
    optimizer = keras.optimizers.Adam(1e-3)
    model(batch["points"], training=False)
    optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def step(b):
        with tf.GradientTape() as tape:
            outputs = model(b["points"], training=True)
            total, _ = loss(outputs, b, tf.constant(0, tf.int32))
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total

    for _ in range(2):
        step(batch).numpy()
    t0 = time.time()
    for _ in range(steps):
        total = step(batch)
    total.numpy()
    seconds = time.time() - t0
    rate = steps * int(batch["points"].shape[0]) / seconds
    return {"model": which, "steps": steps, "seconds": seconds, "frames_per_s": rate,
            "params": int(sum(int(tf.size(v)) for v in model.trainable_variables)), "final_loss": float(total)}


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from data_prep.synth import render
    from hsr_tf.geometry.camera import Camera

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    tmp = None
    data_dir = FLAGS.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hsr_bench_data_")
        data_dir = tmp.name
    workers = FLAGS.num_workers or os.cpu_count()
    config = render.DatasetConfig(
        num_subjects=FLAGS.num_subjects, poses_per_subject=FLAGS.poses_per_subject,
        views_per_pose=FLAGS.views_per_pose, seed=0, frames_per_shard=128,
        frame=render.FrameConfig(camera=Camera.preset("nyu"), noise=FLAGS.noise, depth_crop_size=96))
    t0 = time.time()
    summary = render.generate(data_dir, config, num_workers=workers, progress=False)
    render_s = time.time() - t0
    render_rate = summary["frames"] / render_s
    print(f"render: {summary['frames']} frames in {render_s:.1f} s with {workers} workers -> {render_rate:.1f} "
          f"frames/s ({summary['written']} written, skipped {summary['skipped']})")
    print(f"  full {FULL_FRAMES} frames extrapolated: {FULL_FRAMES / render_rate / 60:.0f} min on {workers} cores")

    import tensorflow as tf  # noqa: F401  (after the fork-based rendering pool)

    from hsr_tf.data import reader

    ds = reader.make_dataset(data_dir, "train", batch_size=FLAGS.batch_size, shuffle=True, augment=True,
                             repeat=True, seed=0, drop_remainder=True)
    it = iter(ds)
    for _ in range(10):
        next(it)
    t0 = time.time()
    for _ in range(FLAGS.reader_batches):
        b = next(it)
    _ = b["points"].numpy()
    read_s = time.time() - t0
    read_rate = FLAGS.reader_batches * FLAGS.batch_size / read_s
    print(f"reader (shuffle + augment, batch {FLAGS.batch_size}): {read_rate:.0f} frames/s "
          f"({FLAGS.reader_batches} batches in {read_s:.2f} s)")
    train = []
    for which in FLAGS.train_models:
        r = train_step_rate(b, which, FLAGS.train_steps)
        r["reader_over_train"] = read_rate / r["frames_per_s"]
        train.append(r)
        print(f"train step ({which} HandShapeNet, {r['params']} params, batch {FLAGS.batch_size}): "
              f"{r['frames_per_s']:.1f} frames/s ({r['steps']} steps in {r['seconds']:.1f} s); "
              f"reader / train = {r['reader_over_train']:.1f}x (issue 4 asks >= 5x)")
    sheet = os.path.join(FLAGS.out_dir, "data_contact_sheet.png")
    n = contact_sheet(data_dir, sheet, FLAGS.sheet_frames)
    print(f"contact sheet: {sheet} ({n} frames)")
    result = {"render_frames": summary["frames"], "render_seconds": render_s, "render_frames_per_s": render_rate,
              "render_workers": workers, "skipped": summary["skipped"],
              "full_config_minutes_extrapolated": FULL_FRAMES / render_rate / 60,
              "reader_frames_per_s": read_rate, "reader_batch_size": FLAGS.batch_size,
              "train_steps": train, "cpu_count": os.cpu_count(), "load_avg_1min_at_end": os.getloadavg()[0]}
    with open(os.path.join(FLAGS.out_dir, "data_benchmark.json"), "w") as f:
        json.dump(result, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    app.run(main)
