"""Shared machinery of the real RGB readers (STB, RHD -> RGB shards of ``hsr_tf.data.rgb_shards``).

A reader lists the frames of a split as :class:`RGBTask` items (picklable: a source tuple that its
module-level loader understands) and hands them to :func:`convert_split`, which cuts them into shards of
``shard_size`` consecutive frames (a shard already written and valid is skipped: resumable, since frames go to
shards by position alone), converts shards in a ``multiprocessing`` pool with a tqdm bar, and writes each with
RGB-SYNTH's atomic ``write_rgb_shard``. Per frame the loader returns the full-frame colour image, a depth map
registered to it, an optional hand mask, our 21 joints in the colour camera and whether the hand is a left
hand; :func:`make_frame` turns that into one shard record:

1. crop: a square around the bounding box of the 2D joints, side ``(1 + 2 margin) * max(box w, box h)``
   (at least ``MIN_SIDE`` px), integer-aligned, zero-padded where it leaves the image, resized to S
   (image: PIL bilinear; depth, mask: nearest). A crop of side L resized by k = S / L maps
   u -> (u - u0 + 0.5) k - 0.5, so the crop's camera is fx k, fy k, (cx - u0 + 0.5) k - 0.5, (cy - v0 + 0.5) k - 0.5.
2. mask: the dataset's own, or (STB, which has none) the crop pixels whose depth point lies within
   ``mask_radius`` mm of a bone of the 21-joint skeleton (an approximation, recorded in the attrs).
3. a left hand is mirrored into our right-hand model: image/depth/mask flipped left-right, x -> -x,
   cx -> S - 1 - cx (a pixel column c becomes S - 1 - c under the pixel-centre convention), ``mirrored`` = 1.
4. joints_uv = projection of the joints by the crop camera; bone_scale = |j9 - j10|; root_depth = j0 z.

Per-frame values outside the RGB schema go to a sidecar ``{shard}.extra.npz`` written before the shard:
``crop_box`` int32 [F, 3] (u0, v0, L in the original image, to map predictions back) and whatever the reader
adds (STB: ``palm`` [F, 3], the raw palm-centre joint in our convention; RHD: ``joints_visible`` [F, 21]).

Camera frame everywhere: x right, y up, z away, mm (STB/RHD use OpenCV's y down; readers negate y).

Legend: F frames, H, W full image size, S crop size, L crop side in the full image, J joints (21).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from data_prep import _raw_common as rc
from data_prep._raw_common import RawDataError
from hsr_tf.hand_model import skeleton

MIN_SIDE = 16
EXTRA_SUFFIX = ".extra.npz"
OUR_JOINT_NAMES = list(skeleton.JOINT_NAMES)


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """image_size: S. margin: added on each side, fraction of the joint box's longer side.
    mask_radius: mm, for masks derived from depth (STB)."""

    image_size: int = 256
    margin: float = 0.25
    mask_radius: float = 25.0


@dataclasses.dataclass(frozen=True)
class RGBTask:
    name: str           # human-readable source (a file path) for messages
    frame_index: int    # unique id within the dataset
    source: tuple       # understood by the reader's loader
    sequence: str | None = None


# ---------------------------------------------------------------------- joints
def check_joints(joints, where: str) -> np.ndarray:
    """[21, 3] joints of one hand (``_raw_io.check_hand_joints``: finite, 10 mm < z < 5 m, narrower than
    400 mm), else RawDataError naming ``where``."""
    j = np.asarray(joints, dtype=np.float64)
    if j.shape != (21, 3):
        raise RawDataError(f"{where}: expected 21 joints x 3 coordinates, found shape {j.shape}")
    return rc.check_hand_joints(j, where, depth_range=(10.0, 5000.0))


# ---------------------------------------------------------------------- crop geometry
def project(joints, intr) -> np.ndarray:
    """[J, 3] camera mm, (fx, fy, cx, cy) -> [J, 2] (u, v) px: u = cx + fx x/z, v = cy - fy y/z."""
    j = np.asarray(joints, dtype=np.float64)
    fx, fy, cx, cy = (float(x) for x in intr)
    return np.stack([cx + fx * j[:, 0] / j[:, 2], cy - fy * j[:, 1] / j[:, 2]], axis=-1)


def square_box(uv, margin: float) -> tuple:
    """(u0, v0, L) ints: square window of side L around the bounding box of ``uv`` [J, 2] (see module doc)."""
    uv = np.asarray(uv, dtype=np.float64)
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    side = int(np.ceil(max(MIN_SIDE, (1.0 + 2.0 * margin) * float(np.max(hi - lo)))))
    centre = 0.5 * (lo + hi)
    # pixel centres u0 .. u0 + L - 1 straddle the box centre
    u0 = int(np.round(centre[0] - 0.5 * (side - 1)))
    v0 = int(np.round(centre[1] - 0.5 * (side - 1)))
    return u0, v0, side


def crop_window(array, u0: int, v0: int, side: int) -> np.ndarray:
    """[side, side, ...] window with top-left pixel (u0, v0) of ``array`` [H, W, ...], zero outside it."""
    a = np.asarray(array)
    h, w = a.shape[:2]
    out = np.zeros((side, side) + a.shape[2:], dtype=a.dtype)
    su0, sv0, su1, sv1 = max(u0, 0), max(v0, 0), min(u0 + side, w), min(v0 + side, h)
    if su1 > su0 and sv1 > sv0:
        out[sv0 - v0:sv1 - v0, su0 - u0:su1 - u0] = a[sv0:sv1, su0:su1]
    return out


def resize_nearest(array, size: int) -> np.ndarray:
    """[L, L, ...] -> [size, size, ...]: crop pixel i samples source pixel floor((i + 0.5) L / size)."""
    a = np.asarray(array)
    idx = np.minimum(((np.arange(size) + 0.5) * a.shape[0] / size).astype(np.int64), a.shape[0] - 1)
    return a[idx][:, idx]


def resize_image(image, size: int) -> np.ndarray:
    """[L, L, 3] uint8 -> [size, size, 3] uint8 with PIL bilinear (pixel-centre aligned, antialiased when shrinking)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))


def crop_intrinsics(intr, u0: int, v0: int, side: int, size: int) -> np.ndarray:
    """[4] (fx, fy, cx, cy) of the crop resized to ``size`` (see module doc)."""
    fx, fy, cx, cy = (float(x) for x in intr)
    k = size / float(side)
    return np.array([fx * k, fy * k, (cx - u0 + 0.5) * k - 0.5, (cy - v0 + 0.5) * k - 0.5])


def _segment_distance(points, a, b) -> np.ndarray:
    """Distance of points [N, 3] to segments a, b [K, 3] -> [N] (minimum over segments)."""
    ab = b - a
    t = np.einsum("nki,ki->nk", points[:, None] - a[None], ab) / np.maximum((ab ** 2).sum(-1), 1e-12)
    closest = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def mask_from_depth(depth, intr, joints, radius: float) -> np.ndarray:
    """[S, S] uint8 0/255: pixels whose depth point (camera ``intr``) is within ``radius`` mm of a bone."""
    d = np.asarray(depth, dtype=np.float64)
    fx, fy, cx, cy = (float(x) for x in intr)
    j = np.asarray(joints, dtype=np.float64)
    # only depths within the joints' z range (+ radius) can be near a bone: skips the background cheaply
    v, u = np.nonzero((d >= j[:, 2].min() - radius) & (d <= j[:, 2].max() + radius))
    out = np.zeros(d.shape, dtype=np.uint8)
    if len(v) == 0:
        return out
    z = d[v, u]
    pts = np.stack([(u - cx) * z / fx, (cy - v) * z / fy, z], axis=-1)
    child = np.arange(1, 21)
    near = _segment_distance(pts, j[skeleton.PARENTS[child]], j[child]) <= radius
    out[v[near], u[near]] = 255
    return out


# ---------------------------------------------------------------------- one frame -> one record
def make_frame(image, depth, mask, joints, intr, left: bool, crop: CropConfig) -> dict:
    """Crop, (mirror) and annotate one frame.

    Args:
      image: [H, W, 3] uint8 RGB. depth: [H, W] mm registered to the image (0 = none).
      mask: [H, W] bool/uint8 hand mask, or None (derived from depth, see mask_from_depth).
      joints: [21, 3] our joints, colour-camera mm, OUR frame (y up), the physical hand (left or right).
      intr: (fx, fy, cx, cy) of the full image. left: the hand is a left hand (mirrored into ours).
    Returns:
      dict of the schema's per-frame fields (image, mask, depth, joints, joints_uv, camera, bone_scale,
      root_depth, mirrored) plus ``crop_box`` [3] int32 (u0, v0, L).
    """
    size = int(crop.image_size)
    joints = np.asarray(joints, dtype=np.float64)
    u0, v0, side = square_box(project(joints, intr), crop.margin)
    img = resize_image(crop_window(image, u0, v0, side), size)
    dep = resize_nearest(crop_window(np.asarray(depth, dtype=np.float64), u0, v0, side), size)
    cam = crop_intrinsics(intr, u0, v0, side, size)
    if mask is None:
        msk = mask_from_depth(dep, cam, joints, crop.mask_radius)
    else:
        msk = np.where(resize_nearest(crop_window(np.asarray(mask) > 0, u0, v0, side), size), 255, 0)
    if left:
        img, dep, msk = img[:, ::-1], dep[:, ::-1], msk[:, ::-1]
        joints = joints * np.array([-1.0, 1.0, 1.0])
        cam = np.array([cam[0], cam[1], size - 1.0 - cam[2], cam[3]])
    return {
        "image": np.ascontiguousarray(img, dtype=np.uint8),
        "mask": np.ascontiguousarray(msk, dtype=np.uint8),
        "depth": np.ascontiguousarray(np.rint(np.clip(dep, 0, 65535)), dtype=np.uint16),
        "joints": joints.astype(np.float32),
        "joints_uv": project(joints.astype(np.float32), cam.astype(np.float32)).astype(np.float32),
        "camera": cam.astype(np.float32),
        "bone_scale": np.float32(np.linalg.norm(joints[9] - joints[10])),
        "root_depth": np.float32(joints[0, 2]),
        "mirrored": np.uint8(bool(left)),
        "crop_box": np.array([u0, v0, side], dtype=np.int32),
    }


# ---------------------------------------------------------------------- shards
SCHEMA_FIELDS = ("image", "mask", "depth", "joints", "joints_uv", "camera", "bone_scale", "root_depth", "mirrored")


@dataclasses.dataclass
class ShardJob:
    path: str
    split: str
    tasks: list
    loader: object      # picklable callable(source, CropConfig) -> (record dict incl. extras, or None, reason)
    crop: CropConfig
    attrs: dict


def read_extra(shard_path: str) -> dict:
    """The sidecar per-frame values of a shard (field -> [F, ...] array)."""
    path = shard_path + EXTRA_SUFFIX
    rc.require_file(path, "the sidecar .extra.npz of an RGB shard")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _run_shard(job: ShardJob):
    from hsr_tf.data import rgb_shards

    records, skipped, seqs, ids = [], [], [], []
    for task in job.tasks:
        rec, reason = job.loader(task.source, job.crop)
        if rec is None:
            skipped.append(f"{task.name}: {reason}")
            continue
        records.append(rec)
        seqs.append(task.sequence)
        ids.append(task.frame_index)
    rc._write_json(job.path + ".skipped.json", {"source_frames": len(job.tasks), "skipped": skipped,
                                                "empty": not records})
    if not records:
        return job.path, 0, skipped
    arrays = {k: np.stack([r[k] for r in records]) for k in SCHEMA_FIELDS}
    arrays["frame_index"] = np.asarray(ids, dtype=np.int64)
    if all(s is not None for s in seqs):
        arrays["sequence"] = np.asarray(seqs, dtype=object)
    extra = {k: np.stack([r[k] for r in records]) for k in records[0] if k not in SCHEMA_FIELDS}
    tmp = job.path + ".extra.tmp.npz"
    np.savez(tmp, **extra)
    os.replace(tmp, job.path + EXTRA_SUFFIX)
    attrs = dict(job.attrs, split=job.split, image_size=int(job.crop.image_size), joint_names=OUR_JOINT_NAMES,
                 crop_margin=float(job.crop.margin), source_frames=len(job.tasks), skipped_frames=len(skipped))
    rgb_shards.write_rgb_shard(job.path, arrays, attrs)
    return job.path, len(records), skipped


def _shard_done(path: str) -> bool:
    from hsr_tf.data import rgb_shards

    report = rc._read_skipped(path)
    if report is None:
        return False
    if report.get("empty"):
        return True
    if not (os.path.isfile(path) and os.path.isfile(path + EXTRA_SUFFIX)):
        return False
    try:
        rgb_shards.validate_rgb_shard(path)
    except rgb_shards.RGBShardError:
        return False
    return True


def convert_split(tasks, *, out_dir: str, split: str, loader, crop: CropConfig, attrs: dict,
                  shard_size: int = 1024, num_workers: int | None = None, progress: bool = True) -> dict:
    """Convert a split's frames to ``{out_dir}/{split}-NNNNN.h5`` (resumable; ``_raw_common.run_shards``).

    Returns:
      dict ``frames`` (written now), ``skipped`` (list of 'name: reason', this and earlier runs), ``shards``,
      ``reused`` (shards already complete).
    """
    return rc.run_shards(tasks, out_dir=out_dir, split=split, shard_size=shard_size, done=_shard_done,
                         make_job=lambda path, chunk: ShardJob(path, split, chunk, loader, crop, dict(attrs)),
                         run=_run_shard, desc=f"{attrs.get('dataset', '?')}/{split}", num_workers=num_workers,
                         progress=progress)


# ---------------------------------------------------------------------- absl flags shared by STB and RHD
def define_flags(name: str):
    from absl import flags

    flags.DEFINE_string("raw_dir", None, f"root of the raw {name} dataset")
    flags.DEFINE_string("out_dir", None, "directory for the RGB HDF5 shards")
    flags.DEFINE_integer("num_workers", None, "worker processes (default: all cores; 1: in-process)")
    flags.DEFINE_integer("shard_size", 1024, "frames per shard")
    flags.DEFINE_integer("max_frames", None, "convert only the first N frames of each split (debugging)")
    flags.DEFINE_integer("image_size", 256, "side S of the stored crops, px")
    flags.DEFINE_float("crop_margin", 0.25, "crop margin on each side, fraction of the 2D joint box's longer side")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    flags.mark_flags_as_required(["raw_dir", "out_dir"])


def convert_kwargs_from_flags(FLAGS) -> dict:
    """The keyword arguments of a reader's ``convert`` that :func:`define_flags` defines (``crop`` included; a
    ``--mask_radius`` flag of the program, if any, goes into it)."""
    crop = CropConfig(image_size=FLAGS.image_size, margin=FLAGS.crop_margin,
                      mask_radius=FLAGS.mask_radius if "mask_radius" in FLAGS else CropConfig.mask_radius)
    return dict(crop=crop, shard_size=FLAGS.shard_size, num_workers=FLAGS.num_workers, max_frames=FLAGS.max_frames,
                progress=FLAGS.progress)
