"""Backgrounds composited behind rendered hands by the RGB reader (paper section 3: random background images
blended with the rendered hands at training time).

Procedural backgrounds (always available, TensorFlow stateless ops, so a background is a pure function of
its seed): one of
  0 gradient        two random colours along a random direction (linear or radial);
  1 coloured noise  several octaves (4..32 cells) of smooth random colour, bicubically upsampled;
  2 shapes          10 random filled discs and rotated rectangles over a gradient (hard edges, occluder-like);
  3 texture         2-3 random sinusoidal gratings in random colours plus fine noise, blurred by upsampling.
Image backgrounds: a random square window (side 30-100 % of the shorter side) of a random JPG/PNG from a
folder, resized to S x S, randomly flipped.

All functions take a stateless seed ``seed`` int32/int64 [2] (tf.random.stateless_* convention).

Legend: S background size (px).
"""
from __future__ import annotations

import math
import os

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
NUM_KINDS = 4


def list_background_images(directory: str) -> list:
    """Sorted JPG/PNG files under ``directory`` (recursive).

    Raises:
      FileNotFoundError if the directory does not exist; ValueError if it holds no JPG/PNG image.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"background_dir {directory}: expected a directory of JPG/PNG images, not found")
    files = []
    for root, _, names in os.walk(directory):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"background_dir {directory}: expected JPG/PNG images ({', '.join(IMAGE_EXTENSIONS)}), "
                         f"found none")
    return sorted(files)


def _grid(size):
    """x, y [S, S] in [-1, 1] (x right, y down)."""
    r = tf.linspace(-1.0, 1.0, size)
    y, x = tf.meshgrid(r, r, indexing="ij")
    return x, y


def _u(seed, shape, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def gradient(seed, size: int):
    """[S, S, 3] linear or radial two-colour gradient."""
    s = tf.random.experimental.stateless_split(seed, 5)
    x, y = _grid(size)
    c1, c2 = _u(s[0], [3]), _u(s[1], [3])
    ang = _u(s[2], [], 0.0, 2 * math.pi)
    centre = _u(s[3], [2], -1.0, 1.0)

    def linear():
        return 0.5 + 0.5 * (x * tf.cos(ang) + y * tf.sin(ang)) / math.sqrt(2.0)

    def radial():
        return tf.clip_by_value(tf.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / 2.0, 0.0, 1.0)

    # only the chosen profile is computed (half the per-pixel work of computing both and selecting)
    t = tf.cond(_u(s[4], []) < 0.7, linear, radial)[..., None]
    return c1 * (1.0 - t) + c2 * t


def coloured_noise(seed, size: int):
    """[S, S, 3] multi-octave smooth colour noise."""
    s = tf.random.experimental.stateless_split(seed, 6)
    out = tf.zeros([size, size, 3])
    total = 0.0
    for i, cells in enumerate((4, 8, 16, 32)):
        amp = 0.6 ** i
        layer = _u(s[i], [1, cells, cells, 3])
        out += amp * tf.image.resize(layer, [size, size], method="bicubic")[0]
        total += amp
    out = out / total
    # stretch contrast around a random base colour so the noise is not always mid grey
    base = _u(s[4], [3])
    gain = _u(s[5], [], 1.0, 3.0)
    return tf.clip_by_value(base + gain * (out - 0.5), 0.0, 1.0)


def shapes(seed, size: int, count: int = 10):
    """[S, S, 3] gradient with ``count`` random discs / rotated rectangles painted over it (later ones on top)."""
    s = tf.random.experimental.stateless_split(seed, 2 + 6 * count)
    img = gradient(s[0], size)
    x, y = _grid(size)
    # per-shape parameters (scalars, drawn shape by shape from the same keys as ever), then all shapes'
    # per-pixel tests in one [count, S, S] pass: ~25 ops instead of ~25 per shape
    params = []
    for i in range(count):
        k = s[2 + 6 * i: 8 + 6 * i]
        cx, cy = _u(k[0], [], -1.1, 1.1), _u(k[1], [], -1.1, 1.1)
        half = _u(k[2], [2], 0.05, 0.5)
        ang = _u(k[3], [], 0.0, math.pi)
        params.append((cx, cy, half[0], half[1], tf.cos(ang), tf.sin(ang), _u(k[5], []), _u(k[4], [3])))
    cx, cy, hx, hy, cos, sin, kind = (tf.stack([p[j] for p in params])[:, None, None] for j in range(7))
    colours = tf.stack([p[7] for p in params])  # [count, 3]
    dx, dy = x - cx, y - cy  # [count, S, S]
    rx = dx * cos + dy * sin
    ry = -dx * sin + dy * cos
    rect = (tf.abs(rx) < hx) & (tf.abs(ry) < hy)
    disc = (rx / hx) ** 2 + (ry / hy) ** 2 < 1.0
    inside = tf.where(kind < 0.5, rect, disc)
    # the topmost shape covering a pixel (1-based; 0 = none) gives its colour, as painting in order would
    top = tf.reduce_max(tf.where(inside, tf.range(1, count + 1)[:, None, None], 0), axis=0)
    painted = tf.gather(colours, tf.maximum(top - 1, 0))
    return tf.where((top > 0)[..., None], painted, img)


def texture(seed, size: int):
    """[S, S, 3] blurred grating texture with fine noise."""
    s = tf.random.experimental.stateless_split(seed, 12)
    x, y = _grid(size)
    img = tf.zeros([size, size, 3])
    for i in range(3):
        k = s[3 * i: 3 * i + 3]
        freq = _u(k[0], [], 1.0, 12.0)
        ang = _u(k[1], [], 0.0, math.pi)
        phase_colour = _u(k[2], [4])
        wave = 0.5 + 0.5 * tf.sin(math.pi * freq * (x * tf.cos(ang) + y * tf.sin(ang)) + 6.283 * phase_colour[0])
        img += wave[..., None] * phase_colour[1:] / 3.0
    fine = _u(s[9], [1, size // 4, size // 4, 3], -0.15, 0.15)
    img += tf.image.resize(fine, [size, size], method="bilinear")[0]
    gain = _u(s[10], [], 0.8, 2.0)
    return tf.clip_by_value(0.5 + gain * (img - tf.reduce_mean(img)) + _u(s[11], [3], -0.3, 0.3), 0.0, 1.0)


def procedural_background(seed, size: int):
    """[S, S, 3] float32 in [0, 1]: one of the NUM_KINDS procedural kinds, chosen by the seed."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    kind = tf.random.stateless_uniform([], s[0], 0, NUM_KINDS, dtype=tf.int32)
    branches = [lambda: gradient(s[1], size), lambda: coloured_noise(s[1], size), lambda: shapes(s[1], size),
                lambda: texture(s[1], size)]
    out = tf.switch_case(kind, branches)
    out.set_shape([size, size, 3])
    return out


def image_background(seed, files, size: int):
    """[S, S, 3] float32 in [0, 1]: a random square window of a random image of ``files`` (tf string [N])."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    idx = tf.random.stateless_uniform([], s[0], 0, tf.shape(files)[0], dtype=tf.int32)
    img = tf.io.decode_image(tf.io.read_file(files[idx]), channels=3, expand_animations=False)
    img = tf.image.convert_image_dtype(img, tf.float32)
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    side = tf.random.stateless_uniform([], s[1], 0.3, 1.0) * tf.reduce_min(hw)
    off = tf.random.stateless_uniform([2], s[2]) * (hw - side)
    box = tf.stack([off[0], off[1], off[0] + side, off[1] + side]) / tf.maximum(hw - 1.0, 1.0)[[0, 1, 0, 1]]
    out = tf.image.crop_and_resize(img[None], box[None], [0], [size, size])[0]
    out = tf.where(tf.random.stateless_uniform([], s[3]) < 0.5, out[:, ::-1], out)
    out.set_shape([size, size, 3])
    return tf.clip_by_value(out, 0.0, 1.0)


def background(seed, size: int, files=None, image_prob: float = 0.7):
    """[S, S, 3] background: an image of ``files`` with probability ``image_prob`` (when files are given),
    else procedural."""
    if files is None:
        return procedural_background(seed, size)
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    use_image = tf.random.stateless_uniform([], s[0]) < image_prob
    return tf.cond(use_image, lambda: image_background(s[1], files, size), lambda: procedural_background(s[2], size))
