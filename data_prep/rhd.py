"""Rendered Hand Pose dataset (RHD, Zimmermann & Brox 2017) -> RGB shards.

    python -m data_prep.rhd --raw_dir=R --out_dir=D [--split=train,test]

Raw layout, per split directory ``R/training`` (41,258 samples) and ``R/evaluation`` (2,728):

* ``color/%05d.png`` 320x320 RGB; ``depth/%05d.png`` 320x320 RGB with depth in metres
  ``(R * 256 + G) / 65535 * 5`` (B unused); ``mask/%05d.png`` 320x320 single channel (mode L or P):
  0 background, 1 person, 2-17 left hand, 18-33 right hand;
* ``anno_training.pickle`` / ``anno_evaluation.pickle``: a dict from the integer sample id to a dict with
  ``xyz`` [42, 3] (metres, camera frame, OpenCV y down), ``uv_vis`` [42, 3] (u, v px, visibility 0/1) and
  ``K`` [3, 3] (intrinsics). Keypoints 0-20 the left hand, 21-41 the right; within a hand 0 wrist, then
  thumb, index, middle, ring, little, each tip -> MCP.

Conversion per sample: the hand with more mask pixels (ties: the right hand) is kept, as the evaluation
protocol does; metres -> mm, y negated (our frame is y up), each finger reversed to root -> tip (our order).
A left hand is mirrored into our right-hand model (``mirrored`` = 1). The mask is the chosen hand's
(0/255). Sidecar per frame (``.extra.npz``): ``crop_box`` and ``joints_visible`` [21] (``uv_vis`` flags, our
order) for visible-only evaluation. Split names: ``training`` -> ``train``, ``evaluation`` -> ``test``;
``frame_index`` = the sample id.

Legend: J joints (21 per hand).
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np

from data_prep import _rgb_common as rg
from data_prep._raw_io import RawDataError, read_png, require_dir, require_file

SIZE = 320
RAW_SPLITS = {"train": "training", "test": "evaluation"}
#: our joint k <- RHD joint (within one hand) OURS_FROM_RHD[k]: wrist, then each finger reversed
OURS_FROM_RHD = np.array([0] + [1 + 4 * f + (3 - k) for f in range(5) for k in range(4)])
LEFT_LABELS, RIGHT_LABELS = (2, 17), (18, 33)
DEPTH_SCALE_MM = 5000.0 / 65535.0   # metres = (R*256 + G) / 65535 * 5


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: a damaged (or foreign) pickle cannot call anything else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
               ("_codecs", "encode")}  # protocol 2 writes bytes as _codecs.encode(str, "latin1")

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"expected only NumPy arrays and plain containers, found a reference to "
                                         f"{module}.{name}")
        return super().find_class(module, name)


def read_annotations(path: str) -> dict:
    """Load and check ``anno_*.pickle`` -> {sample id: {'xyz' [42, 3], 'uv_vis' [42, 3], 'K' [3, 3]}} float64.

    Only NumPy arrays and plain containers are unpickled (no other callable is reachable); a Python-2 pickle
    (the release) is read with latin-1 NumPy buffers.

    Raises:
      RawDataError naming the file (and the sample): unreadable or damaged, ids other than 0 .. N-1, a missing
      key, a wrong shape, non-finite values.
    """
    require_file(path, "an RHD annotation pickle (dict id -> {xyz, uv_vis, K})")
    with open(path, "rb") as f:
        data = f.read()
    try:
        anno = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnicodeDecodeError:  # the release was pickled by Python 2: its NumPy buffers are latin-1 str
        try:
            anno = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
        except Exception as e:
            raise RawDataError(f"{path}: expected a readable pickle of the RHD annotations: {e}") from e
    except Exception as e:  # pickle raises many types on damaged data
        raise RawDataError(f"{path}: expected a readable pickle of the RHD annotations: {e}") from e
    if not isinstance(anno, dict) or not anno:
        raise RawDataError(f"{path}: expected a non-empty dict sample id -> annotation, found {type(anno).__name__}")
    if sorted(anno) != list(range(len(anno))):  # the ids name the PNGs 00000.png ...: a gap means damage
        ids = sorted(anno, key=str)
        raise RawDataError(f"{path}: expected the sample ids 0 .. {len(anno) - 1} (one per PNG), found "
                           f"{ids[:5]}{' ...' if len(ids) > 5 else ''}")
    out = {}
    shapes = {"xyz": (42, 3), "uv_vis": (42, 3), "K": (3, 3)}
    for sid, entry in anno.items():
        if not isinstance(entry, dict):
            raise RawDataError(f"{path}: sample {sid!r}: expected a dict with keys xyz, uv_vis, K, "
                               f"found {type(entry).__name__}")
        checked = {}
        for key, shape in shapes.items():
            if key not in entry:
                raise RawDataError(f"{path}: sample {sid!r}: expected key '{key}', found keys {sorted(entry)}")
            a = np.asarray(entry[key], dtype=np.float64)
            if a.shape != shape:
                raise RawDataError(f"{path}: sample {sid!r}: '{key}': expected shape {list(shape)}, "
                                   f"found {list(a.shape)}")
            if not np.all(np.isfinite(a)):
                raise RawDataError(f"{path}: sample {sid!r}: '{key}': expected finite values, found NaN/Inf")
            checked[key] = a
        out[int(sid)] = checked
    return out


def decode_depth(path: str) -> np.ndarray:
    """``depth/%05d.png`` -> [320, 320] float64 mm."""
    rgb = read_png(path, what="an RHD depth PNG (8-bit RGB(A), metres = (R*256 + G) / 65535 * 5)",
                   colour_types=(2, 6), bit_depths=(8,), size=(SIZE, SIZE))
    return (rgb[..., 0].astype(np.float64) * 256.0 + rgb[..., 1].astype(np.float64)) * DEPTH_SCALE_MM


def read_mask(path: str) -> np.ndarray:
    m = read_png(path, what="an RHD mask PNG (0 bg, 1 person, 2-17 left, 18-33 right)", colour_types=(0, 3),
                 bit_depths=(8,), size=(SIZE, SIZE))
    if m.size and int(m.max()) > 33:
        raise RawDataError(f"{path}: expected mask labels 0..33, found a maximum of {int(m.max())}")
    return m


def choose_hand(mask) -> tuple:
    """(is_left, hand mask [H, W] bool): the hand with more mask pixels (ties: right)."""
    left = (mask >= LEFT_LABELS[0]) & (mask <= LEFT_LABELS[1])
    right = (mask >= RIGHT_LABELS[0]) & (mask <= RIGHT_LABELS[1])
    if left.sum() > right.sum():
        return True, left
    return False, right


def hand_to_ours(xyz42, uv_vis42, is_left: bool):
    """One hand of an annotation -> (joints [21, 3] mm our frame and order, visible [21] uint8)."""
    base = 0 if is_left else 21
    xyz = np.asarray(xyz42, dtype=np.float64)[base:base + 21][OURS_FROM_RHD] * 1000.0
    xyz = xyz * np.array([1.0, -1.0, 1.0])
    vis = np.asarray(uv_vis42)[base:base + 21, 2][OURS_FROM_RHD] > 0.5
    return xyz, vis.astype(np.uint8)


def load_frame(source, crop: rg.CropConfig):
    """Loader: source = ('rhd', colour, depth, mask png paths, annotation dict) -> (record, '')."""
    _, colour_path, depth_path, mask_path, ann = source
    image = read_png(colour_path, what="an RHD colour PNG (8-bit RGB)", colour_types=(2,), bit_depths=(8,),
                     size=(SIZE, SIZE))
    depth = decode_depth(depth_path)
    is_left, hand_mask = choose_hand(read_mask(mask_path))
    if not hand_mask.any():
        return None, "no hand pixel in the mask"
    joints, vis = hand_to_ours(ann["xyz"], ann["uv_vis"], is_left)
    rg.check_joints(joints, f"{colour_path} ({'left' if is_left else 'right'} hand 'xyz')")
    k = ann["K"]
    intr = (k[0, 0], k[1, 1], k[0, 2], k[1, 2])
    rec = rg.make_frame(image, depth, hand_mask, joints, intr, left=is_left, crop=crop)
    rec["joints_visible"] = vis
    return rec, ""


def list_frames(raw_dir: str, split: str, max_frames=None) -> list:
    """RGBTasks of one split in sample-id order (every PNG checked to exist)."""
    raw = RAW_SPLITS[split]
    d = require_dir(os.path.join(raw_dir, raw), f"the RHD '{raw}' directory")
    anno = read_annotations(os.path.join(d, f"anno_{raw}.pickle"))
    ids = sorted(anno)
    if max_frames is not None:
        ids = ids[:int(max_frames)]
    tasks = []
    for sid in ids:
        paths = [os.path.join(d, sub, f"{sid:05d}.png") for sub in ("color", "depth", "mask")]
        for p, what in zip(paths, ("colour image", "depth map", "mask")):
            require_file(p, f"the {what} of annotated sample {sid}")
        tasks.append(rg.RGBTask(name=paths[0], frame_index=sid, source=("rhd", *paths, anno[sid])))
    return tasks


def convert(raw_dir: str, out_dir: str, splits=("train", "test"), *, crop: rg.CropConfig = rg.CropConfig(),
            shard_size: int = 1024, num_workers=None, max_frames=None, progress: bool = True) -> dict:
    """Convert RHD splits; returns split -> ``_rgb_common.convert_split`` result."""
    from data_prep.rhd import load_frame as loader  # importable by name in workers, also under `python -m`

    attrs = {"dataset": "rhd", "source": os.path.abspath(raw_dir), "root_convention": "wrist",
             "hand": "the hand with more mask pixels; left hands mirrored (x -> -x, image flipped, cx -> S-1-cx)",
             "image_background": "real", "mask_values": "0/255", "mask_source": "RHD mask of the chosen hand",
             "depth_source": "RHD depth (registered)", "extra_fields": "crop_box,joints_visible"}
    return {split: rg.convert_split(list_frames(raw_dir, split, max_frames=max_frames), out_dir=out_dir, split=split,
                                    loader=loader, crop=crop, attrs=attrs, shard_size=shard_size,
                                    num_workers=num_workers, progress=progress) for split in splits}


def main(argv):
    del argv
    from absl import flags

    from data_prep import _raw_common as rc

    FLAGS = flags.FLAGS
    rc.print_summaries(convert(FLAGS.raw_dir, FLAGS.out_dir, rc.parse_splits(FLAGS.split, tuple(RAW_SPLITS)),
                               **rg.convert_kwargs_from_flags(FLAGS)))


if __name__ == "__main__":
    from absl import app, flags

    rg.define_flags("RHD")
    flags.DEFINE_string("split", "train,test", "comma-separated splits (train = training, test = evaluation)")
    app.run(main)
