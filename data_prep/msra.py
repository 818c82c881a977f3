"""MSRA hand gesture dataset (Sun et al. 2015, "cvpr15_MSRAHandGestureDB") -> HDF5 shards.

    python -m data_prep.msra --raw_dir=R --out_dir=D [--split=P0,P1,...] [--num_workers=N]

Raw layout: ``R/P0`` ... ``R/P8`` (subjects), each with the 17 gesture folders
``1 2 3 4 5 6 7 8 9 I IP L MP RP T TIP Y``; in each gesture folder:

* ``joint.txt``: first line the frame count N; then N lines of 21 x (x, y, z) mm.
  Joint order: wrist, then index, middle, ring, little, thumb, each mcp, pip, dip,
  tip. Native frame: x right, y UP, z stored NEGATIVE (the camera looks down -z);
  the reader flips z, giving our frame (x right, y up, z away).
* ``NNNNNN_depth.bin`` (6 digits, 0-based frame index): six little-endian int32
  (image width, image height, left, top, right, bottom) then float32 depth (mm) of
  the crop box ``[top, bottom) x [left, right)``, row-major; pixels outside the box
  are 0 (no hand). The reader pastes the box into a full 320x240 frame; box pixel
  (r, c) is image pixel (top + r, left + c).
* Intrinsics: fx = fy = 241.42, cx 160, cy 120.

Splits are subjects: split ``P3`` holds all gestures of subject 3 (``subject`` = 3),
so leave-one-subject-out training reads the other eight splits. ``frame_id`` =
gesture index (0..16, order above) * 100000 + frame index.

Legend: J = 21 MSRA joints.
"""
from __future__ import annotations

import os

import numpy as np

from data_prep import _raw_common as rc
from hsr_tf.data import datasets
from hsr_tf.geometry import camera as camera_lib

SPEC = datasets.MSRA
SUBJECTS = datasets.MSRA_SUBJECTS
GESTURES = datasets.MSRA_GESTURES
WIDTH, HEIGHT = 320, 240
HEADER_BYTES = 24
FRAME_ID_STRIDE = 100000


def bin_name(frame_index: int) -> str:
    """'000000_depth.bin' for frame 0."""
    return f"{int(frame_index):06d}_depth.bin"


def read_depth_bin(path: str) -> np.ndarray:
    """Read one MSRA .bin -> [240, 320] float32 depth mm (0 outside the stored box).

    Raises:
      RawDataError naming the file if missing, shorter than its header says (truncated),
      longer, or if the header is inconsistent with a 320x240 image.
    """
    rc.require_file(path, "an MSRA depth .bin (6 int32 header + float32 crop)")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_BYTES:
        raise rc.RawDataError(f"{path}: expected a {HEADER_BYTES}-byte header (6 int32: width, height, left, top, "
                              f"right, bottom), found a {len(data)}-byte file (truncated)")
    width, height, left, top, right, bottom = (int(v) for v in np.frombuffer(data[:HEADER_BYTES], dtype="<i4"))
    if (width, height) != (WIDTH, HEIGHT):
        raise rc.RawDataError(f"{path}: header: expected image size {WIDTH}x{HEIGHT}, found {width}x{height}")
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise rc.RawDataError(f"{path}: header: expected 0 <= left < right <= {width} and 0 <= top < bottom <= "
                              f"{height}, found left {left}, top {top}, right {right}, bottom {bottom}")
    box_w, box_h = right - left, bottom - top
    expected = HEADER_BYTES + 4 * box_w * box_h
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "trailing bytes"
        raise rc.RawDataError(f"{path}: expected {expected} bytes (header + {box_h}x{box_w} float32), "
                              f"found {len(data)} ({state})")
    box = np.frombuffer(data[HEADER_BYTES:], dtype="<f4").reshape(box_h, box_w)
    if not np.all(np.isfinite(box)):
        raise rc.RawDataError(f"{path}: expected finite depth values, found NaN/Inf")
    full = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    full[top:bottom, left:right] = box
    return full


def load_depth(source) -> np.ndarray:
    """Loader for the converter: source = ('msra', path) -> [240, 320] float32 mm."""
    return read_depth_bin(source[1])


def read_joints(path: str) -> np.ndarray:
    """Read a joint.txt -> [N, 21, 3] float64 mm in OUR frame (z flipped to positive).

    Raises:
      RawDataError naming file:line for a bad count line, a line without 63 numbers, or
      fewer/more lines than the count says.
    """
    rc.require_file(path, "an MSRA joint.txt (frame count, then 21 x (x, y, z) per line)")
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise rc.RawDataError(f"{path}: expected a first line with the frame count, found an empty file")
    try:
        count = int(lines[0].strip())
    except ValueError as e:
        raise rc.RawDataError(f"{path}:1: expected the frame count (an integer), found {lines[0]!r}") from e
    body = lines[1:]
    if len(body) != count:
        raise rc.RawDataError(f"{path}: expected {count} joint lines (the count on line 1), found {len(body)}")
    expected = 3 * SPEC.num_joints
    out = np.empty((count, SPEC.num_joints, 3), dtype=np.float64)
    for i, line in enumerate(body):
        parts = line.split()
        if len(parts) != expected:
            raise rc.RawDataError(f"{path}:{i + 2}: expected {expected} numbers (21 joints x x, y, z), "
                                  f"found {len(parts)}")
        try:
            out[i] = np.array([float(x) for x in parts]).reshape(SPEC.num_joints, 3)
        except ValueError as e:
            raise rc.RawDataError(f"{path}:{i + 2}: expected {expected} numbers: {e}") from e
    if not np.all(np.isfinite(out)):
        raise rc.RawDataError(f"{path}: expected finite joint coordinates, found NaN/Inf")
    if np.any(out[..., 2] >= 0):
        raise rc.RawDataError(f"{path}: expected z < 0 (MSRA stores z negative), found max z {out[..., 2].max()}")
    out[..., 2] = -out[..., 2]
    return out


def list_frames(raw_dir: str, subject: str, max_frames: int | None = None) -> list:
    """FrameTasks of one subject over its 17 gestures (checks every file exists)."""
    if subject not in SUBJECTS:
        raise ValueError(f"subject: expected one of {SUBJECTS}, found {subject!r}")
    subject_dir = rc.require_dir(os.path.join(raw_dir, subject), f"the MSRA subject directory {subject}")
    sid = SUBJECTS.index(subject)
    tasks, missing = [], []
    for g, gesture in enumerate(GESTURES):
        gdir = rc.require_dir(os.path.join(subject_dir, gesture), f"the MSRA gesture directory {gesture}")
        joints = read_joints(os.path.join(gdir, "joint.txt"))
        for i in range(len(joints)):
            if max_frames is not None and len(tasks) >= max_frames:
                break
            path = os.path.join(gdir, bin_name(i))
            if not os.path.isfile(path):
                missing.append(path)
                continue
            where = f"{os.path.join(gdir, 'joint.txt')}:{i + 2}"
            tasks.append(rc.FrameTask(name=path, frame_id=g * FRAME_ID_STRIDE + i, source=("msra", path),
                                      joints=rc.check_hand_joints(joints[i], where, SPEC.depth_range), subject=sid))
    if missing:
        raise rc.RawDataError(f"{subject_dir}: expected one NNNNNN_depth.bin per joint.txt line, "
                              f"{len(missing)} missing, e.g. {missing[:3]}")
    return tasks


def convert(raw_dir: str, out_dir: str, subjects=SUBJECTS, *, front: rc.FrontEnd = rc.FrontEnd(),
            shard_size: int = 1024, num_workers: int | None = None, max_frames: int | None = None,
            progress: bool = True) -> dict:
    """Convert MSRA subjects (one split each); returns subject -> convert_split result."""
    from data_prep.msra import load_depth as loader

    return rc.convert_splits(subjects, lambda subject: list_frames(raw_dir, subject, max_frames=max_frames),
                             out_dir=out_dir, spec=SPEC, camera=camera_lib.Camera.preset("msra"), loader=loader,
                             front=front, shard_size=shard_size, num_workers=num_workers, progress=progress,
                             extra_attrs={"source": os.path.abspath(raw_dir)})


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    subjects = rc.parse_splits(FLAGS.split, SUBJECTS)
    results = convert(FLAGS.raw_dir, FLAGS.out_dir, subjects, front=rc.front_end_from_flags(FLAGS),
                      shard_size=FLAGS.shard_size, num_workers=FLAGS.num_workers, max_frames=FLAGS.max_frames,
                      progress=FLAGS.progress)
    rc.print_summaries(results)


if __name__ == "__main__":
    from absl import app

    rc.define_common_flags(SPEC, ",".join(SUBJECTS))
    app.run(main)
