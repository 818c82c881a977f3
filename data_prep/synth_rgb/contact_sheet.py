"""Contact sheets of RGB shards (synthetic or real) and of RGB reader batches.

  python -m data_prep.synth_rgb.contact_sheet --data_dir=D --split=train --out=sheet.png [--num=16] [--reader]

Per frame, four panels side by side: the stored image composited over mid grey; the same with the joints_uv
skeleton drawn on it (thumb red, index yellow, middle green, ring cyan, pinky magenta, wrist white) and the
projected mesh vertices as dots; the mask; the depth (near bright). With ``--reader`` the frames come from
``hsr_tf.data.rgb_reader.make_rgb_dataset`` (augmented, background composited; the third panel shows the
maximum of the 21 heat-maps in red-yellow over the dimmed image instead of the mask), so augmentation can be
checked by eye.

Legend: S image size, J joints.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Directory of RGB shards.")
flags.DEFINE_string("split", "train", "Split to show.")
flags.DEFINE_string("out", None, "Output PNG.")
flags.DEFINE_integer("num", 16, "Frames to show.")
flags.DEFINE_integer("columns", 2, "Frames per row (each frame is 4 panels).")
flags.DEFINE_integer("panel", 160, "Panel size in pixels.")
flags.DEFINE_bool("reader", False, "Show augmented reader batches instead of the stored frames.")
flags.DEFINE_integer("seed", 0, "Reader seed (--reader).")
flags.DEFINE_string("background_dir", None, "Reader background images (--reader).")
flags.DEFINE_integer("image_size", 256, "Reader output size S (--reader); heat-maps S / 4 with sigma 4 S / 256 px, "
                     "as experiments.rgb_common.")

FINGER_COLOURS = ((255, 60, 60), (255, 220, 0), (60, 220, 60), (0, 220, 220), (230, 60, 230))


def draw_skeleton(img: Image.Image, uv, scale: float, vertices_uv=None):
    """Draw the 21-joint skeleton (uv [J, 2] in image px before ``scale``) and optional vertex dots."""
    d = ImageDraw.Draw(img)
    p = (np.asarray(uv, np.float64) + 0.5) * scale - 0.5
    if vertices_uv is not None:
        for x, y in (np.asarray(vertices_uv, np.float64)[::3] + 0.5) * scale - 0.5:
            d.point((float(x), float(y)), fill=(40, 40, 40))
    for f in range(5):
        chain = [0] + list(range(1 + 4 * f, 5 + 4 * f))
        for a, b in zip(chain[:-1], chain[1:]):
            d.line([tuple(p[a]), tuple(p[b])], fill=FINGER_COLOURS[f], width=2)
    x, y = p[0]
    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    return img


def frame_panels(image, mask, depth, joints_uv, camera=None, vertices=None, panel=160, last=None):
    """Four PIL panels of one frame. image [S, S, 3] float in [0, 1] (or uint8 premultiplied with ``mask``
    uint8 coverage), mask [S, S], depth [S, S] mm, joints_uv [J, 2]."""
    size = image.shape[0]
    scale = panel / size
    if image.dtype == np.uint8:  # stored: premultiplied over black -> composite over grey
        a = mask.astype(np.float32)[..., None] / 255.0
        rgb = image.astype(np.float32) / 255.0 + (1 - a) * 0.5
    else:
        rgb = np.asarray(image, np.float32)
    base = Image.fromarray(np.uint8(np.clip(rgb, 0, 1) * 255)).resize((panel, panel), Image.BILINEAR)
    over = base.copy()
    vuv = None
    if vertices is not None and camera is not None and np.any(vertices):
        from hsr_tf.data.rgb_shards import project

        vuv = project(vertices, camera)
    draw_skeleton(over, joints_uv, scale, vuv)
    m = np.asarray(mask, np.float32)
    m = m / 255.0 if m.max() > 1.0 else m
    if last is not None:
        m = last
    mimg = Image.fromarray(np.uint8(np.clip(m, 0, 1) * 255)).convert("RGB").resize((panel, panel), Image.BILINEAR
                                                                                  if m.ndim == 3 else Image.NEAREST)
    dep = np.asarray(depth, np.float32)
    vis = np.zeros_like(dep)
    if np.any(dep > 0):
        lo, hi = dep[dep > 0].min(), dep[dep > 0].max()
        vis[dep > 0] = 1.0 - 0.8 * (dep[dep > 0] - lo) / max(hi - lo, 1.0)
    dimg = Image.fromarray(np.uint8(vis * 255)).convert("RGB").resize((panel, panel), Image.NEAREST)
    return [base, over, mimg, dimg]


def make_sheet(frames, columns: int, panel: int) -> Image.Image:
    """frames: list of lists of 4 panels -> one grid image (``columns`` frames per row)."""
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 4 * panel + (columns - 1) * 8, rows * panel), (255, 255, 255))
    for i, panels in enumerate(frames):
        r, c = divmod(i, columns)
        for j, p in enumerate(panels):
            sheet.paste(p, (c * (4 * panel + 8) + j * panel, r * panel))
    return sheet


def stored_frames(data_dir, split, num, panel):
    from hsr_tf.data import rgb_shards

    files = rgb_shards.list_rgb_shards(data_dir, split)
    if not files:
        raise FileNotFoundError(f"{data_dir}: expected RGB shards '{split}-*.h5', found none")
    out = []
    per_file = max(1, -(-num // len(files)))
    for path in files:
        n = rgb_shards.validate_rgb_shard(path)["num_frames"]
        if n == 0:
            continue
        idx = np.linspace(0, n - 1, min(per_file, n)).astype(int)
        a, _ = rgb_shards.read_rgb_shard(path)
        for i in idx:
            verts = a["vertices"][i] if "vertices" in a else None
            out.append(frame_panels(a["image"][i], a["mask"][i], a["depth"][i], a["joints_uv"][i],
                                    a["camera"][i], verts, panel))
            if len(out) == num:
                return out
    return out


def reader_frames(data_dir, split, num, panel, seed, background_dir, image_size=256):
    from hsr_tf.data import rgb_reader

    ds = rgb_reader.make_rgb_dataset(data_dir, split, batch_size=num, augment=True, seed=seed,
                                     background_dir=background_dir, drop_remainder=False, image_size=image_size,
                                     heatmap_size=image_size // 4, heatmap_sigma=4.0 * image_size / 256)
    batch = next(iter(ds))
    b = {k: v.numpy() for k, v in batch.items()}
    out = []
    for i in range(len(b["image"])):
        hm = b["heatmaps"][i].max(axis=-1)
        hm = np.kron(hm, np.ones((b["image"].shape[1] // hm.shape[0],) * 2))
        # heat-maps in red-yellow over the dimmed image: a blob off its joint shows at a glance
        hm = 0.35 * b["image"][i] + hm[..., None] * np.array([1.0, 0.75, 0.0])
        out.append(frame_panels(b["image"][i], b["mask"][i], b["depth"][i], b["joints_uv"][i], b["camera"][i],
                                b["vertices"][i], panel, last=hm))
    return out


def main(argv):
    del argv
    if not FLAGS.data_dir or not FLAGS.out:
        raise app.UsageError("--data_dir and --out are required")
    if FLAGS.reader:
        frames = reader_frames(FLAGS.data_dir, FLAGS.split, FLAGS.num, FLAGS.panel, FLAGS.seed, FLAGS.background_dir,
                               FLAGS.image_size)
    else:
        frames = stored_frames(FLAGS.data_dir, FLAGS.split, FLAGS.num, FLAGS.panel)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    make_sheet(frames, FLAGS.columns, FLAGS.panel).save(FLAGS.out, optimize=True)
    print(f"wrote {FLAGS.out} ({len(frames)} frames)")


if __name__ == "__main__":
    app.run(main)
