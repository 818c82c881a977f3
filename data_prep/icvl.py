"""ICVL hand posture dataset (Tang et al. 2014) -> HDF5 shards.

    python -m data_prep.icvl --raw_dir=R --out_dir=D [--split=train,test] [--keep_rotated]

Raw layout:

* ``R/Training/labels.txt``; ``R/Testing/test_seq_1.txt`` and ``test_seq_2.txt``.
  Each non-empty line: a PNG path relative to ``<split dir>/Depth/`` (also accepted:
  relative to ``<split dir>/``), then 16 joints x (u, v, d): u column and v row in
  pixels (v grows DOWN), d depth in mm. Joint order: palm, then thumb, index,
  middle, ring, pinky, each root, mid, tip.
* Depth: 16-bit single-channel 320x240 PNG in mm (PIL mode 'I;16', or 'I' for
  some encoders), 0 = no measurement.
* Intrinsics: fx = fy = 241.42, cx 160, cy 120.
* Native frame: image (u, v, d). Converted at the reader to our camera frame
  with ``x = (u - cx) d / fx``, ``y = (cy - v) d / fy`` (y UP), ``z = d``.
* Training folders whose name (first path component) has at most 6 characters
  (e.g. ``22.5/``, ``-15/``) hold the in-plane-rotation-augmented copies of the
  original sequences (whose folder names are 12-digit timestamps); ``--keep_rotated``
  keeps them, the default skips them.
* Split 'test' = test_seq_1 then test_seq_2 (702 + 894 = 1,596 frames).

``frame_id`` = index of the line among the split's kept lines (test: seq 1 first).

Legend: J = 16 ICVL joints.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from data_prep import _raw_common as rc
from hsr_tf.data import datasets
from hsr_tf.geometry import camera as camera_lib

SPEC = datasets.ICVL
SPLITS = ("train", "test")
WIDTH, HEIGHT = 320, 240
LABEL_FILES = {"train": (("Training", "labels.txt"),),
               "test": (("Testing", "test_seq_1.txt"), ("Testing", "test_seq_2.txt"))}
ROTATED_NAME_MAX_LEN = 6


def decode_depth_png(path: str) -> np.ndarray:
    """Read one ICVL depth PNG -> [240, 320] uint16 mm.

    Raises:
      RawDataError naming the file if missing, damaged (truncated, a wrong chunk CRC), not 16-bit greyscale
      or not 320x240 (``_raw_io.read_png``).
    """
    return rc.read_png(path, what="a 16-bit single-channel PNG (depth in mm)", colour_types=(0,), bit_depths=(16,),
                       size=(WIDTH, HEIGHT))


def load_depth(source) -> np.ndarray:
    """Loader for the converter: source = ('icvl', path) -> [240, 320] uint16 mm."""
    return decode_depth_png(source[1])


def is_rotated_copy(rel_path: str) -> bool:
    """True for a frame in a rotation-augmented training folder (short first component)."""
    first = rel_path.replace("\\", "/").split("/")[0]
    return len(first) <= ROTATED_NAME_MAX_LEN


def parse_label_line(line: str, where: str):
    """One label line -> (relative path, uvd [16, 3] float64).

    Raises:
      RawDataError naming ``where`` (file:line) if the count of numbers is not 48.
    """
    parts = line.split()
    expected = 3 * SPEC.num_joints
    if len(parts) != 1 + expected:
        raise rc.RawDataError(f"{where}: expected a PNG path and {expected} numbers (16 joints x u, v, d), "
                              f"found {len(parts) - 1} numbers")
    try:
        values = np.array([float(x) for x in parts[1:]], dtype=np.float64)
    except ValueError as e:
        raise rc.RawDataError(f"{where}: expected {expected} numbers after the path: {e}") from e
    if not np.all(np.isfinite(values)):
        raise rc.RawDataError(f"{where}: expected finite numbers, found NaN/Inf")
    return parts[0], values.reshape(SPEC.num_joints, 3)


def read_labels(path: str):
    """All lines of a label file -> list of (line number, relative path, uvd [16, 3])."""
    rc.require_file(path, "an ICVL label file (path then 16 x (u, v, d) per line)")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rel, uvd = parse_label_line(line, f"{path}:{n}")
            out.append((n, rel, uvd))
    if not out:
        raise rc.RawDataError(f"{path}: expected at least one label line, found none")
    return out


def resolve_png(split_dir: str, rel: str, where: str) -> str:
    for cand in (os.path.join(split_dir, "Depth", rel), os.path.join(split_dir, rel)):
        if os.path.isfile(cand):
            return cand
    raise rc.RawDataError(f"{where}: expected the depth PNG {os.path.join(split_dir, 'Depth', rel)} "
                          f"(or {os.path.join(split_dir, rel)}), file not found")


def list_frames(raw_dir: str, split: str, keep_rotated: bool = False, max_frames: int | None = None) -> list:
    """FrameTasks of one split; checks every line and PNG path.

    Raises:
      RawDataError naming the label file (and line) or the missing PNG.
    """
    camera = camera_lib.Camera.preset("icvl")
    tasks = []
    for sub, name in LABEL_FILES[split]:
        split_dir = rc.require_dir(os.path.join(raw_dir, sub), f"the ICVL '{sub}' directory")
        label_path = os.path.join(split_dir, name)
        for n, rel, uvd in read_labels(label_path):
            if split == "train" and not keep_rotated and is_rotated_copy(rel):
                continue
            if max_frames is not None and len(tasks) >= max_frames:
                break
            where = f"{label_path}:{n}"
            if np.any(uvd[:, 2] <= 0):
                raise rc.RawDataError(f"{where}: expected joint depths d > 0 mm, found min {uvd[:, 2].min()}")
            png = resolve_png(split_dir, rel, where)
            joints = rc.check_hand_joints(camera.uvd_to_points(uvd), where, SPEC.depth_range)
            tasks.append(rc.FrameTask(name=png, frame_id=len(tasks), source=("icvl", png), joints=joints, uvd=uvd))
    if split == "test" and max_frames is None and len(tasks) != SPEC.test_frames:
        # Label files carry no frame count: a file cut at a line end loses frames without any error, so say so.
        logging.getLogger(__name__).warning(
            "%s: %d test frames listed, the published test split has %d (702 + 894); a label file cut short "
            "loses frames silently", os.path.join(raw_dir, "Testing"), len(tasks), SPEC.test_frames)
    return tasks


def convert(raw_dir: str, out_dir: str, splits=SPLITS, *, keep_rotated: bool = False,
            front: rc.FrontEnd = rc.FrontEnd(), shard_size: int = 1024, num_workers: int | None = None,
            max_frames: int | None = None, progress: bool = True) -> dict:
    """Convert ICVL splits; returns split -> convert_split result."""
    from data_prep.icvl import load_depth as loader

    return rc.convert_splits(splits, lambda split: list_frames(raw_dir, split, keep_rotated=keep_rotated,
                                                               max_frames=max_frames),
                             out_dir=out_dir, spec=SPEC, camera=camera_lib.Camera.preset("icvl"), loader=loader,
                             front=front, shard_size=shard_size, num_workers=num_workers, progress=progress,
                             extra_attrs={"source": os.path.abspath(raw_dir), "keep_rotated": int(bool(keep_rotated))})


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    splits = rc.parse_splits(FLAGS.split, SPLITS)
    results = convert(FLAGS.raw_dir, FLAGS.out_dir, splits, keep_rotated=FLAGS.keep_rotated,
                      front=rc.front_end_from_flags(FLAGS), shard_size=FLAGS.shard_size,
                      num_workers=FLAGS.num_workers, max_frames=FLAGS.max_frames, progress=FLAGS.progress)
    rc.print_summaries(results)


if __name__ == "__main__":
    from absl import app, flags

    rc.define_common_flags(SPEC, "train,test")
    flags.DEFINE_bool("keep_rotated", False, "keep the rotation-augmented training copies (short folder names)")
    app.run(main)
