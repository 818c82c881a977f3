"""NYU hand pose dataset (Tompson et al. 2014) -> HDF5 shards.

    python -m data_prep.nyu --raw_dir=R --out_dir=D [--split=train,test] [--num_workers=N]

Raw layout (per split directory ``R/train``, ``R/test``):

* ``depth_K_NNNNNNN.png``: kinect K (1..3), frame number 7 digits, 1-based;
  640x480 RGB PNG (mode 'RGB') holding depth in mm as ``(G << 8) | B`` (R unused);
  0 = no measurement.
* ``joint_data.mat`` (MATLAB v5; ``scipy.io.loadmat``): ``joint_xyz`` and
  ``joint_uvd`` of shape [3 kinects, F, 36, 3]; ``joint_xyz`` in mm with x right,
  y UP, z away from the camera (our frame, no conversion), ``joint_uvd`` (u, v
  pixels, d mm) with v = 240 - fy y / z; ``joint_names`` the 36 names (cell array).
* Intrinsics (kinect 1): fx 588.03, fy 587.07, cx 320, cy 240.

Only kinect 1 is used by default (``--kinect``), as in every published protocol.
All 36 joints are stored (``joints`` [F, 36, 3] mm, ``uvd`` from the file); the
14 evaluation joints and the 21 paired with our joints are index arrays of
``hsr_tf.data.datasets.NYU``. ``frame_id`` = frame number - 1.

Legend: F frames, K kinects.
"""
from __future__ import annotations

import os

import numpy as np

from data_prep import _raw_common as rc
from hsr_tf.data import datasets
from hsr_tf.geometry import camera as camera_lib

SPEC = datasets.NYU
SPLITS = ("train", "test")
WIDTH, HEIGHT = 640, 480
#: The variables of the released joint_data.mat; any other name means a damaged (or foreign) file.
MAT_VARIABLES = ("joint_xyz", "joint_uvd", "joint_names")


def depth_png_name(kinect: int, frame_number: int) -> str:
    """'depth_1_0000001.png' for kinect 1, frame number 1 (1-based)."""
    return f"depth_{int(kinect)}_{int(frame_number):07d}.png"


def decode_depth_png(path: str) -> np.ndarray:
    """Read one NYU depth PNG.

    Returns:
      [480, 640] uint16 depth in mm (``(G << 8) | B``).
    Raises:
      RawDataError naming the file if it is missing, damaged (truncated, a wrong chunk CRC), not 8-bit RGB
      or not 640x480 (``_raw_io.read_png``).
    """
    rgb = rc.read_png(path, what="an RGB PNG (8-bit, depth = (G << 8) | B)", colour_types=(2,), bit_depths=(8,),
                      size=(WIDTH, HEIGHT))
    return (rgb[..., 1].astype(np.uint16) << 8) | rgb[..., 2].astype(np.uint16)


def load_depth(source) -> np.ndarray:
    """Loader for the converter: source = ('nyu', path) -> [480, 640] uint16 mm."""
    return decode_depth_png(source[1])


def _names_from_mat(value) -> list:
    """Flatten a MATLAB cell array / char array of names to a list of str."""
    arr = np.asarray(value, dtype=object).ravel()
    out = []
    for item in arr:
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]
        if isinstance(item, np.ndarray):
            item = "".join(item.ravel().tolist()) if item.dtype.kind == "U" else str(item.ravel()[0])
        out.append(str(item).strip())
    return out


def read_joint_data(path: str) -> dict:
    """Read and check ``joint_data.mat``.

    Returns:
      dict ``joint_xyz`` [K, F, 36, 3] float64 mm, ``joint_uvd`` [K, F, 36, 3] or None,
      ``joint_names`` list of 36 str or None.
    Raises:
      RawDataError naming the file (and the field): truncated, not MAT v5, a variable other than MAT_VARIABLES
      (e.g. a damaged name), a missing joint_xyz, a wrong shape, non-finite values, names other than NYU's.
    """
    mat = rc.read_mat(path, what="NYU joint_data.mat (MATLAB v5 with joint_xyz [3, F, 36, 3])", allowed=MAT_VARIABLES)
    if "joint_xyz" not in mat:
        raise rc.RawDataError(f"{path}: expected a 'joint_xyz' variable, found {sorted(mat)}")
    out = {}
    for key in ("joint_xyz", "joint_uvd"):
        if key not in mat:
            out[key] = None
            continue
        a = np.asarray(mat[key], dtype=np.float64)
        if a.ndim == 3:  # a file holding one kinect only
            a = a[None]
        if a.ndim != 4 or a.shape[2] != SPEC.num_joints or a.shape[3] != 3:
            raise rc.RawDataError(f"{path}: '{key}': expected shape [kinects, frames, {SPEC.num_joints}, 3], "
                                  f"found {mat[key].shape}")
        if not np.all(np.isfinite(a)):
            raise rc.RawDataError(f"{path}: '{key}': expected finite values, found NaN/Inf")
        out[key] = a
    if out["joint_uvd"] is not None and out["joint_uvd"].shape != out["joint_xyz"].shape:
        raise rc.RawDataError(f"{path}: 'joint_uvd': expected the shape of joint_xyz {out['joint_xyz'].shape}, "
                              f"found {out['joint_uvd'].shape}")
    names = None
    if "joint_names" in mat:
        names = _names_from_mat(mat["joint_names"])
        if tuple(names) != SPEC.joint_names:
            raise rc.RawDataError(f"{path}: 'joint_names': expected the 36 NYU names {list(SPEC.joint_names)}, "
                                  f"found {names}")
    out["joint_names"] = names
    return out


def list_frames(raw_dir: str, split: str, kinect: int = 1, max_frames: int | None = None) -> list:
    """FrameTasks of one split (checks that every depth PNG exists).

    Raises:
      RawDataError naming the missing directory, .mat or PNG files.
    """
    split_dir = rc.require_dir(os.path.join(raw_dir, split), f"the NYU '{split}' directory")
    data = read_joint_data(os.path.join(split_dir, "joint_data.mat"))
    xyz, uvd = data["joint_xyz"], data["joint_uvd"]
    if not 1 <= kinect <= xyz.shape[0]:
        raise rc.RawDataError(f"{split_dir}/joint_data.mat: expected annotations for kinect {kinect}, "
                              f"found {xyz.shape[0]} kinect(s)")
    num = xyz.shape[1] if max_frames is None else min(int(max_frames), xyz.shape[1])
    tasks, missing = [], []
    for i in range(num):
        path = os.path.join(split_dir, depth_png_name(kinect, i + 1))
        if not os.path.isfile(path):
            missing.append(path)
            continue
        joints = rc.check_hand_joints(xyz[kinect - 1, i], f"{split_dir}/joint_data.mat: joint_xyz of frame {i + 1} "
                                      "(x right, y up, z away)", SPEC.depth_range)
        tasks.append(rc.FrameTask(name=path, frame_id=i, source=("nyu", path), joints=joints,
                                  uvd=None if uvd is None else uvd[kinect - 1, i]))
    if missing:
        raise rc.RawDataError(f"{split_dir}: expected {num} depth PNGs depth_{kinect}_NNNNNNN.png (one per "
                              f"annotated frame), {len(missing)} missing, e.g. {missing[:3]}")
    return tasks


def convert(raw_dir: str, out_dir: str, splits=SPLITS, *, kinect: int = 1, front: rc.FrontEnd = rc.FrontEnd(),
            shard_size: int = 1024, num_workers: int | None = None, max_frames: int | None = None,
            progress: bool = True) -> dict:
    """Convert NYU splits; returns split -> convert_split result."""
    from data_prep.nyu import load_depth as loader  # importable by name in workers, also under `python -m`

    return rc.convert_splits(splits, lambda split: list_frames(raw_dir, split, kinect=kinect, max_frames=max_frames),
                             out_dir=out_dir, spec=SPEC, camera=camera_lib.Camera.preset("nyu"), loader=loader,
                             front=front, shard_size=shard_size, num_workers=num_workers, progress=progress,
                             extra_attrs={"source": os.path.abspath(raw_dir), "kinect": int(kinect)})


def main(argv):
    del argv
    from absl import flags

    FLAGS = flags.FLAGS
    splits = rc.parse_splits(FLAGS.split, SPLITS)
    results = convert(FLAGS.raw_dir, FLAGS.out_dir, splits, kinect=FLAGS.kinect, front=rc.front_end_from_flags(FLAGS),
                      shard_size=FLAGS.shard_size, num_workers=FLAGS.num_workers, max_frames=FLAGS.max_frames,
                      progress=FLAGS.progress)
    rc.print_summaries(results)


if __name__ == "__main__":
    from absl import app, flags

    rc.define_common_flags(SPEC, "train,test")
    flags.DEFINE_integer("kinect", 1, "which kinect's frames to convert (1..3)")
    app.run(main)
