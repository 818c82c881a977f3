"""Stereo Hand Pose Tracking Benchmark (STB, Zhang et al. 2016), RealSense part -> RGB shards.

    python -m data_prep.stb --raw_dir=R --out_dir=D [--sequences=B1Counting,...] [--split=train,test]

Raw layout (12 sequences ``B{1..6}{Counting,Random}``, 1500 frames each):

* images under ``R/images/<seq>/`` or ``R/<seq>/`` (both accepted): ``SK_color_<i>.png`` (640x480 RGB) and
  ``SK_depth_<i>.png`` (640x480 RGB, depth mm = R + 256 G), i = 0 .. N-1 without padding;
* labels ``R/labels/<seq>_SK.mat`` (MATLAB), variable ``handPara`` of shape [3, 21, N] (N = 1500 in the
  release), mm, in the DEPTH camera's frame (OpenCV: x right, y down, z away). Joint order: 0 palm centre,
  1-4 little MCP -> tip, 5-8 ring, 9-12 middle, 13-16 index, 17-20 thumb MCP -> tip.
* intrinsics: colour fx 607.92271, fy 607.88192, cx 314.78337, cy 236.42484; depth fx 475.62768,
  fy 474.77709, cx 336.41179, cy 238.77962. Extrinsic: X_depth = R(r) X_colour + T with the rotation vector
  r = (0.00531, -0.01196, 0.00301) and T = (-24.0381, -0.4563, -1.2326) mm (OpenCV frames).

Conversion per frame: labels -> colour frame (X_colour = R^T (X_depth - T)) -> our frame (y negated) -> our
joint order; joint 0 is the wrist ``ring_MCP + 2 (palm - ring_MCP)`` (``--root=wrist``, default; the loaders
of Zimmermann & Brox and Ge et al.) or the raw palm centre (``--root=palm``); the raw palm centre is kept per
frame in the shard's sidecar (``palm``, our convention). The depth map is warped into the colour camera
(``hsr_tf.geometry.depth_warp``, 2x2 splat + z-buffer) and cropped like the image. STB has no hand mask:
the stored mask is the crop's depth pixels within ``--mask_radius`` mm of a bone (attr ``mask_source``).
STB shows a left hand: every frame is mirrored into our right-hand convention (``mirrored`` = 1).

Split: B2-B6 train (15,000 frames), B1 test (3,000). ``frame_index`` = 10000 * sequence number (0..11 in
``SEQUENCES`` order) + i; ``sequence`` holds the name.

Legend: N frames of a sequence, J joints (21).
"""
from __future__ import annotations

import os

import numpy as np
from scipy.spatial.transform import Rotation

from data_prep import _rgb_common as rg
from data_prep._raw_io import RawDataError, read_mat, read_png, require_file
from hsr_tf.geometry import depth_warp
from hsr_tf.geometry.camera import Camera

SEQUENCES = tuple(f"B{b}{kind}" for b in range(1, 7) for kind in ("Counting", "Random"))
SPLIT_OF = {s: ("test" if s.startswith("B1") else "train") for s in SEQUENCES}
WIDTH, HEIGHT = 640, 480
COLOR_INTR = (607.92271, 607.88192, 314.78337, 236.42484)
DEPTH_INTR = (475.62768, 474.77709, 336.41179, 238.77962)
ROTVEC = (0.00531, -0.01196, 0.00301)
TRANSLATION_MM = (-24.0381, -0.4563, -1.2326)
#: our joint k <- STB joint OURS_FROM_STB[k] (joint 0: the palm centre, replaced by the wrist by default)
OURS_FROM_STB = np.array([0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4])
STB_RING_MCP = 5
ROOTS = ("wrist", "palm")
_FLIP_Y = np.diag([1.0, -1.0, 1.0])


def depth_to_colour_cv():
    """(R [3, 3], T [3]) with X_depth = R X_colour + T (OpenCV frames, mm)."""
    return Rotation.from_rotvec(ROTVEC).as_matrix(), np.asarray(TRANSLATION_MM, dtype=np.float64)


def depth_to_colour_ours():
    """(R', T') with X_colour = R' X_depth + T' in OUR frames (y up): R' = F R^T F, T' = -F R^T T, F = diag(1,-1,1)."""
    r, t = depth_to_colour_cv()
    return _FLIP_Y @ r.T @ _FLIP_Y, -_FLIP_Y @ r.T @ t


def cameras():
    """(colour Camera, depth Camera), 640x480, our projection convention."""
    return Camera(*COLOR_INTR, WIDTH, HEIGHT), Camera(*DEPTH_INTR, WIDTH, HEIGHT)


def labels_to_ours(hand_para_frame, root: str = "wrist"):
    """One frame of ``handPara`` ([3, 21] depth-camera OpenCV mm, STB order) -> (ours [21, 3], palm [3]).

    Both in the colour camera, OUR frame (y up), the physical (left) hand, not mirrored.
    """
    if root not in ROOTS:
        raise ValueError(f"root: expected one of {ROOTS}, found {root!r}")
    r, t = depth_to_colour_cv()
    xd = np.asarray(hand_para_frame, dtype=np.float64).T            # [21, 3]
    xc = (xd - t) @ r                                                # R^T (x - T), row vectors
    xc = xc * np.array([1.0, -1.0, 1.0])
    ours = xc[OURS_FROM_STB].copy()
    palm = xc[0].copy()
    if root == "wrist":
        ours[0] = xc[STB_RING_MCP] + 2.0 * (palm - xc[STB_RING_MCP])
    return ours, palm


def sequence_dir(raw_dir: str, seq: str) -> str:
    for d in (os.path.join(raw_dir, "images", seq), os.path.join(raw_dir, seq)):
        if os.path.isdir(d):
            return d
    raise RawDataError(f"{raw_dir}: expected the STB image directory of {seq} at images/{seq}/ or {seq}/, "
                       "found neither")


def read_labels(path: str) -> np.ndarray:
    """``handPara`` of ``<seq>_SK.mat`` -> [3, 21, N] float64 mm (checked: shape, finite)."""
    mat = read_mat(path, what="an STB label file (MATLAB v5, handPara [3, 21, N])")
    if "handPara" not in mat:
        raise RawDataError(f"{path}: expected a 'handPara' variable, found {sorted(mat)}")
    a = np.asarray(mat["handPara"])
    if a.ndim != 3 or a.shape[:2] != (3, 21) or a.shape[2] < 1 or a.dtype.kind not in "fiu":
        raise RawDataError(f"{path}: 'handPara': expected a numeric array of shape [3, 21, N] (N = 1500 in the "
                           f"release), found shape {a.shape} dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = ~np.all(np.isfinite(a), axis=(0, 1))
    if np.any(bad):
        raise RawDataError(f"{path}: 'handPara': expected finite joints, found NaN/Inf in frame(s) "
                           f"{np.nonzero(bad)[0][:5].tolist()}")
    return a


def decode_depth(path: str) -> np.ndarray:
    """``SK_depth_<i>.png`` -> [480, 640] float64 mm (R + 256 G)."""
    rgb = read_png(path, what="an STB depth PNG (8-bit RGB, depth mm = R + 256 G)", colour_types=(2,),
                   bit_depths=(8,), size=(WIDTH, HEIGHT))
    return rgb[..., 0].astype(np.float64) + 256.0 * rgb[..., 1].astype(np.float64)


def read_colour(path: str) -> np.ndarray:
    return read_png(path, what="an STB colour PNG (8-bit RGB)", colour_types=(2,), bit_depths=(8,),
                    size=(WIDTH, HEIGHT))


def load_frame(source, crop: rg.CropConfig):
    """Loader for the converter: source = ('stb', colour png, depth png, handPara [3, 21], root).

    Returns:
      (record dict of ``_rgb_common.make_frame`` + ``palm`` [3] (mirrored like the joints), '')
    """
    _, colour_path, depth_path, para, root = source
    ours, palm = labels_to_ours(para, root)
    rg.check_joints(ours, f"{colour_path} (its handPara label)")
    image = read_colour(colour_path)
    depth = decode_depth(depth_path)
    _, depth_cam = cameras()
    rot, trans = depth_to_colour_ours()
    # Warp into the crop's window only (the colour camera shifted to its top-left pixel): same values as
    # warping the whole frame, with the z-buffer sorting the window's samples alone.
    u0, v0, side = rg.square_box(rg.project(ours, COLOR_INTR), crop.margin)
    fx, fy, cx, cy = COLOR_INTR
    window = depth_warp.warp_depth(depth, depth_cam, Camera(fx, fy, cx - u0, cy - v0, side, side), rot, trans,
                                   splat="2x2")
    warped = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    su0, sv0, su1, sv1 = max(u0, 0), max(v0, 0), min(u0 + side, WIDTH), min(v0 + side, HEIGHT)
    if su1 > su0 and sv1 > sv0:
        warped[sv0:sv1, su0:su1] = window[sv0 - v0:sv1 - v0, su0 - u0:su1 - u0]
    rec = rg.make_frame(image, warped, None, ours, COLOR_INTR, left=True, crop=crop)
    rec["palm"] = (palm * np.array([-1.0, 1.0, 1.0])).astype(np.float32)
    return rec, ""


def list_frames(raw_dir: str, sequences=SEQUENCES, root: str = "wrist", max_frames=None) -> dict:
    """split -> list of RGBTask over the selected sequences (every listed file checked to exist).

    Raises:
      RawDataError naming a missing directory, label file or PNG, or a malformed label array.
    """
    bad = [s for s in sequences if s not in SEQUENCES]
    if bad or not sequences:
        raise ValueError(f"sequences: expected a non-empty subset of {list(SEQUENCES)}, found {list(sequences)}")
    if root not in ROOTS:
        raise ValueError(f"root: expected one of {ROOTS}, found {root!r}")
    out = {}
    for seq in sequences:
        labels = read_labels(os.path.join(raw_dir, "labels", f"{seq}_SK.mat"))
        d = sequence_dir(raw_dir, seq)
        num = labels.shape[2] if max_frames is None else min(int(max_frames), labels.shape[2])
        for i in range(num):
            colour = os.path.join(d, f"SK_color_{i}.png")
            depth = os.path.join(d, f"SK_depth_{i}.png")
            require_file(colour, f"the colour image of {seq} frame {i} (labels hold {labels.shape[2]} frames)")
            require_file(depth, f"the depth image of {seq} frame {i} (labels hold {labels.shape[2]} frames)")
            out.setdefault(SPLIT_OF[seq], []).append(rg.RGBTask(
                name=colour, frame_index=10000 * SEQUENCES.index(seq) + i,
                source=("stb", colour, depth, labels[:, :, i].copy(), root), sequence=seq))
    return out


def convert(raw_dir: str, out_dir: str, *, sequences=SEQUENCES, splits=("train", "test"), root: str = "wrist",
            crop: rg.CropConfig = rg.CropConfig(), shard_size: int = 1024, num_workers=None, max_frames=None,
            progress: bool = True) -> dict:
    """Convert the selected sequences; returns split -> ``_rgb_common.convert_split`` result."""
    from data_prep.stb import load_frame as loader  # importable by name in workers, also under `python -m`

    tasks = list_frames(raw_dir, sequences, root=root, max_frames=max_frames)
    attrs = {
        "dataset": "stb", "source": os.path.abspath(raw_dir), "root_convention": root,
        "root_rule": "wrist = ring_MCP + 2 (palm - ring_MCP)" if root == "wrist" else "raw palm centre",
        "hand": "left, mirrored into the right-hand model (x -> -x, image flipped, cx -> S-1-cx)",
        "image_background": "real", "mask_values": "0/255",
        "mask_source": f"depth pixels within {crop.mask_radius:g} mm of a skeleton bone (STB has no masks)",
        "depth_source": "depth camera warped into the colour camera (2x2 splat, z-buffer)",
        "sequences": ",".join(sequences), "extra_fields": "crop_box,palm",
    }
    return {split: rg.convert_split(tasks[split], out_dir=out_dir, split=split, loader=loader, crop=crop,
                                    attrs=attrs, shard_size=shard_size, num_workers=num_workers, progress=progress)
            for split in splits if split in tasks}


def main(argv):
    del argv
    from absl import flags

    from data_prep import _raw_common as rc

    FLAGS = flags.FLAGS
    seqs = [s.strip() for s in FLAGS.sequences.split(",") if s.strip()] if FLAGS.sequences else list(SEQUENCES)
    rc.print_summaries(convert(FLAGS.raw_dir, FLAGS.out_dir, sequences=seqs, root=FLAGS.root,
                               splits=rc.parse_splits(FLAGS.split, ("train", "test")),
                               **rg.convert_kwargs_from_flags(FLAGS)))


if __name__ == "__main__":
    from absl import app, flags

    rg.define_flags("STB")
    flags.DEFINE_string("sequences", None, "comma-separated sequences (default: all 12, B1* = test)")
    flags.DEFINE_string("split", "train,test", "comma-separated splits to write")
    flags.DEFINE_enum("root", "wrist", list(ROOTS), "joint 0: the wrist (ring_MCP + 2 (palm - ring_MCP)) or the "
                      "raw palm centre")
    flags.DEFINE_float("mask_radius", 25.0, "mask = depth pixels within this distance (mm) of a bone")
    app.run(main)
