"""Shared machinery of the real-dataset readers (NYU, ICVL, MSRA -> HDF5 shards).

A reader lists the frames of a split as :class:`FrameTask` items (a picklable depth
source + the frame's joints in OUR camera frame, mm) and hands them to
:func:`convert_split`, which

1. cuts the input into shards of ``shard_size`` consecutive frames; a shard whose
   file already exists and validates is skipped (resumable: the assignment of frames
   to shards, and each frame's random sampling seed, depend only on the frame's
   position in the split);
2. converts shards in a ``multiprocessing`` pool (all cores by default) with a tqdm
   progress bar over frames;
3. per frame: load depth (full frame, mm) -> hand centre = midpoint of the bounding
   box of the annotated joints -> DATA's ``Camera.crop_hand`` with the dataset's cube
   -> depth window around the centre and plausible depth range -> at least
   ``min_points`` points or the frame is skipped and reported -> DATA's
   ``sample_points`` (1024) -> DATA's ``compute_normalization``;
4. writes each shard with DATA's atomic ``write_shard`` (attrs record the source and
   the crop settings; the skipped frames go to ``{shard}.skipped.json`` beside it), and
   finally the split's whole list in ``{split}_skipped.txt``.

Camera frame everywhere: x right, y up, z away from the camera, mm.

Legend: F frames, H, W image size, J dataset joints, P sampled points.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import zlib

import numpy as np

from data_prep._raw_io import (RawDataError, check_hand_joints, read_mat, read_png, require_dir,  # noqa: F401
                              require_file)
from hsr_tf.data import datasets, shards
from hsr_tf.geometry import camera as camera_lib
from hsr_tf.geometry import pointcloud


@dataclasses.dataclass(frozen=True)
class FrontEnd:
    """Settings of the crop -> sample -> normalise front end.

    Attributes:
      cube_size: cube side, mm (None: the dataset spec's).
      depth_window: (near, far) mm around the centre's z (None: the spec's).
      num_points: P sampled points.
      min_points: frames with fewer hand points are skipped and reported.
      center_mode, scale_mode, fixed_scale, obb: passed to ``pointcloud.compute_normalization``.
      seed: base seed of the per-frame sampling RNG.
    """

    cube_size: float | None = None
    depth_window: tuple | None = None
    num_points: int = pointcloud.DEFAULT_NUM_POINTS
    min_points: int = 100
    center_mode: str = "mean"
    scale_mode: str = "fixed"
    fixed_scale: float = pointcloud.DEFAULT_FIXED_SCALE_MM
    obb: bool = False
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class FrameTask:
    """One frame to convert.

    Attributes:
      name: human-readable source (a file path), used in messages.
      frame_id: unique int64 id of the frame within the split.
      source: tuple (loader_name, args...) understood by the reader's ``load_depth``.
      joints: [J, 3] float64 mm in our camera frame.
      uvd: optional [J, 3] annotation (u, v px, d mm); None -> projected from joints.
      subject: optional int subject id (MSRA).
    """

    name: str
    frame_id: int
    source: tuple
    joints: np.ndarray
    uvd: np.ndarray | None = None
    subject: int | None = None


def hand_centre(joints) -> np.ndarray:
    """Midpoint of the axis-aligned bounding box of the joints: [J, 3] -> [3] mm."""
    j = np.asarray(joints, dtype=np.float64)
    return 0.5 * (j.min(axis=0) + j.max(axis=0))


def process_frame(depth, joints, spec: datasets.DatasetSpec, camera: camera_lib.Camera, front: FrontEnd, rng):
    """Crop, back-project, sample and normalise one frame.

    Args:
      depth: [H, W] full-frame depth, mm (0 = missing).
      joints: [J, 3] mm camera frame.
    Returns:
      (result dict or None, reason). The dict holds ``points`` [P, 3] float32
      normalised, ``center`` [3], ``scale`` [], ``rotation`` [3, 3], ``num_hand_points``
      and ``crop_window`` (u0, v0, u1, v1).
    """
    cube = float(front.cube_size if front.cube_size is not None else spec.cube_size)
    near, far = front.depth_window if front.depth_window is not None else spec.depth_window
    centre = hand_centre(joints)
    if centre[2] - 0.5 * cube <= 0:
        return None, f"hand centre z = {centre[2]:.1f} mm too close to the camera for a {cube:.0f} mm cube"
    lo, hi = spec.depth_range
    depth = np.asarray(depth)
    depth = np.where((depth >= lo) & (depth <= hi), depth, 0)
    crop = camera.crop_hand(depth, centre, cube_size=cube)
    pts = crop["points"]
    keep = (pts[:, 2] >= centre[2] - near) & (pts[:, 2] <= centre[2] + far)
    pts = pts[keep]
    if len(pts) < front.min_points:
        return None, f"{len(pts)} hand points in the crop, expected >= {front.min_points}"
    sampled, _ = pointcloud.sample_points(pts, front.num_points, rng=rng)
    norm = pointcloud.compute_normalization(sampled, center_mode=front.center_mode, scale_mode=front.scale_mode,
                                            fixed_scale=front.fixed_scale, obb=front.obb)
    return {
        "points": norm.apply(sampled),
        "center": norm.center.astype(np.float32),
        "scale": np.float32(norm.scale),
        "rotation": np.asarray(norm.rotation, dtype=np.float32),
        "num_hand_points": len(pts),
        "crop_window": np.asarray(crop["window"], dtype=np.int32),
    }, ""


def normalization_attr(front: FrontEnd) -> str:
    """'center=<mode>;scale=<mode>[:<mm>];obb=<bool>' -- the synthetic shards' format."""
    scale = front.scale_mode + (f":{front.fixed_scale}" if front.scale_mode == "fixed" else "")
    return f"center={front.center_mode};scale={scale};obb={front.obb}"


def frame_seed(base_seed: int, split: str, frame_id: int) -> int:
    """Deterministic per-frame seed (independent of sharding and worker order)."""
    return (int(base_seed) * 1000003 + zlib.crc32(split.encode()) * 7919 + int(frame_id)) % (2 ** 63)


@dataclasses.dataclass
class ShardJob:
    path: str
    split: str
    tasks: list
    spec_name: str
    camera: camera_lib.Camera
    front: FrontEnd
    loader: object  # callable(source tuple) -> [H, W] depth mm
    extra_attrs: dict


def _run_shard(job: ShardJob):
    """Convert one shard (runs in a worker). Returns (path, frames written, skipped list)."""
    spec = datasets.get_spec(job.spec_name)
    out = {k: [] for k in ("points", "joints", "center", "scale", "rotation", "uvd", "crop_window", "frame_id")}
    subjects = []
    skipped = []
    for task in job.tasks:
        depth = job.loader(task.source)
        if depth.shape != (job.camera.height, job.camera.width):
            raise RawDataError(f"{task.name}: expected a {job.camera.width}x{job.camera.height} depth map, "
                               f"found shape {depth.shape[::-1]} (W x H)")
        rng = np.random.default_rng(frame_seed(job.front.seed, job.split, task.frame_id))
        res, reason = process_frame(depth, task.joints, spec, job.camera, job.front, rng)
        if res is None:
            skipped.append(f"{task.name}: {reason}")
            continue
        out["points"].append(res["points"])
        out["joints"].append(np.asarray(task.joints, dtype=np.float32))
        out["center"].append(res["center"])
        out["scale"].append(res["scale"])
        out["rotation"].append(res["rotation"])
        uvd = task.uvd if task.uvd is not None else _project(job.camera, task.joints)
        out["uvd"].append(np.asarray(uvd, dtype=np.float32))
        out["crop_window"].append(res["crop_window"])
        out["frame_id"].append(np.int64(task.frame_id))
        if task.subject is not None:
            subjects.append(np.int32(task.subject))
    attrs = {
        "dataset": spec.name,
        "split": job.split,
        "camera": job.camera.to_dict(),
        "joint_names": list(spec.joint_names),
        "source_frames": len(job.tasks),
        "skipped_frames": len(skipped),
        "front_end": json.dumps(dataclasses.asdict(job.front), sort_keys=True),
        # same attribute and format as the synthetic shards (read by hsr_tf.train.pipeline / export)
        "normalization": normalization_attr(job.front),
        "cube_size": float(job.front.cube_size if job.front.cube_size is not None else spec.cube_size),
    }
    attrs.update(job.extra_attrs)
    # The skipped frames go to a JSON file beside the shard, written (atomically) BEFORE
    # the shard, so a finished shard always has its report. A shard whose frames were all
    # skipped is recorded by that report alone ("empty": true): never an empty shard.
    _write_json(job.path + ".skipped.json", {"source_frames": len(job.tasks), "skipped": skipped,
                                             "empty": not out["points"]})
    if not out["points"]:
        return job.path, 0, skipped
    arrays = {k: np.stack(v) for k, v in out.items()}
    if subjects:
        arrays["subject"] = np.stack(subjects)
    shards.write_shard(job.path, arrays, attrs)
    return job.path, len(arrays["points"]), skipped


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _read_skipped(path):
    """The sidecar report of a shard, or None when absent/unreadable."""
    try:
        with open(path + ".skipped.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _project(camera, joints):
    j = np.asarray(joints, dtype=np.float64)
    if np.all(j[:, 2] > 0):
        return camera.points_to_uvd(j)
    return np.full_like(j, np.nan)


def _shard_done(path: str) -> bool:
    report = _read_skipped(path)
    if report is None:
        return False
    if report.get("empty"):
        return True
    if not os.path.isfile(path):
        return False
    try:
        shards.validate_shard(path)
    except shards.ShardError:
        return False
    return True


def convert_split(tasks, *, out_dir: str, split: str, spec: datasets.DatasetSpec, camera: camera_lib.Camera,
                  loader, front: FrontEnd = FrontEnd(), shard_size: int = 1024, num_workers: int | None = None,
                  extra_attrs: dict | None = None, progress: bool = True) -> dict:
    """Convert a split's frames to shards ``{out_dir}/{split}-NNNNN.h5``.

    Args:
      tasks: list of FrameTask in split order.
      loader: picklable callable(source tuple) -> [H, W] depth mm (module-level function).
      num_workers: processes (None: all cores; 0 or 1: in this process).
    Returns:
      dict ``frames`` (written), ``skipped`` (list of 'name: reason'), ``shards`` (paths),
      ``reused`` (shards already complete).
    """
    return run_shards(tasks, out_dir=out_dir, split=split, shard_size=shard_size, done=_shard_done,
                      make_job=lambda path, chunk: ShardJob(path, split, chunk, spec.name, camera, front, loader,
                                                            dict(extra_attrs or {})),
                      run=_run_shard, desc=f"{spec.name}/{split}", num_workers=num_workers, progress=progress)


def run_shards(tasks, *, out_dir: str, split: str, shard_size: int, done, make_job, run, desc: str,
               num_workers: int | None, progress: bool) -> dict:
    """The resumable shard loop shared by the depth and RGB converters.

    Cuts ``tasks`` into shards of ``shard_size`` consecutive frames, ``{out_dir}/{split}-NNNNN.h5``; a shard for
    which ``done(path)`` holds is reused, the others become ``make_job(path, chunk)`` and are converted by
    ``run(job) -> (path, frames written, skipped list)`` in a ``multiprocessing`` pool (fork, or spawn once
    TensorFlow is imported; in this process for one worker or one job) with a tqdm bar over frames. Writes the
    split's ``{split}_skipped.txt`` (this run's and the reused shards' skipped frames).

    Returns:
      dict ``frames`` (written now), ``skipped`` (list of 'name: reason'), ``shards`` (paths), ``reused``.
    """
    if not tasks:
        raise RawDataError(f"split {split!r}: expected at least one frame, found none")
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, found {shard_size}")
    os.makedirs(out_dir, exist_ok=True)
    jobs, sizes, reused = [], {}, []
    for k, start in enumerate(range(0, len(tasks), shard_size)):
        path = os.path.join(out_dir, f"{split}-{k:05d}.h5")
        if done(path):
            reused.append(path)
        else:
            jobs.append(make_job(path, list(tasks[start:start + shard_size])))
            sizes[path] = len(tasks[start:start + shard_size])
    workers = os.cpu_count() if num_workers is None else int(num_workers)
    written, skipped, paths = 0, [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(sizes.values()), desc=desc, unit="frame")
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = map(run, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn" if _tf_loaded() else "fork").Pool(min(workers, len(jobs)))
            results = pool.imap_unordered(run, jobs)
        try:
            for path, n, skip in results:
                written += n
                skipped += skip
                paths.append(path)
                if bar is not None:
                    bar.update(sizes[path])
        finally:
            if pool is not None:  # on an error in a worker: stop the others instead of waiting for them
                pool.terminate()
                pool.join()
    finally:
        if bar is not None:
            bar.close()
    all_skipped = skipped + [line for p in reused for line in _skipped_of(p)]
    report = os.path.join(out_dir, f"{split}_skipped.txt")
    with open(report + ".tmp", "w") as f:
        f.write("".join(line + "\n" for line in sorted(all_skipped)))
    os.replace(report + ".tmp", report)
    return {"frames": written, "skipped": all_skipped, "shards": sorted(paths + reused), "reused": reused}


def convert_splits(splits, list_frames, **kwargs) -> dict:
    """{split: convert_split(list_frames(split), split=split, **kwargs)} for each split, in order."""
    return {split: convert_split(list_frames(split), split=split, **kwargs) for split in splits}


def print_summaries(results: dict) -> None:
    """Print :func:`summarize` of each split's result."""
    for split, res in results.items():
        print(summarize(res, split))


def _skipped_of(path: str) -> list:
    report = _read_skipped(path)
    return list(report["skipped"]) if report else []


def _tf_loaded() -> bool:
    import sys

    return "tensorflow" in sys.modules


def summarize(result: dict, split: str) -> str:
    """One-paragraph report of a convert_split result."""
    lines = [f"{split}: wrote {result['frames']} frames in {len(result['shards'])} shards "
             f"({len(result['reused'])} already complete), skipped {len(result['skipped'])} frames"]
    for line in result["skipped"][:10]:
        lines.append(f"  skipped {line}")
    if len(result["skipped"]) > 10:
        lines.append(f"  ... and {len(result['skipped']) - 10} more (see {split}_skipped.txt)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- absl flags shared by the readers
def define_common_flags(spec: datasets.DatasetSpec, default_splits: str):
    """Define the flags every reader program has (call once at import of the program)."""
    from absl import flags

    flags.DEFINE_string("raw_dir", None, f"root of the raw {spec.name.upper()} dataset")
    flags.DEFINE_string("out_dir", None, "directory for the HDF5 shards")
    flags.DEFINE_string("split", default_splits, "comma-separated splits to convert")
    flags.DEFINE_integer("num_workers", None, "worker processes (default: all cores; 1: in-process)")
    flags.DEFINE_integer("shard_size", 1024, "frames per shard")
    flags.DEFINE_integer("max_frames", None, "convert only the first N frames of each split (debugging)")
    flags.DEFINE_float("cube_size", spec.cube_size, "side of the hand crop cube, mm")
    flags.DEFINE_float("depth_near", spec.depth_window[0], "keep points with z >= centre_z - depth_near, mm")
    flags.DEFINE_float("depth_far", spec.depth_window[1], "keep points with z <= centre_z + depth_far, mm")
    flags.DEFINE_integer("num_points", pointcloud.DEFAULT_NUM_POINTS, "points sampled per frame")
    flags.DEFINE_integer("min_points", 100, "frames with fewer hand points are skipped and reported")
    flags.DEFINE_enum("center_mode", "mean", ["mean", "bbox"], "normalisation centre (hsr_tf.geometry.pointcloud)")
    flags.DEFINE_enum("scale_mode", "fixed", ["fixed", "max_dist"], "normalisation scale")
    flags.DEFINE_float("fixed_scale", pointcloud.DEFAULT_FIXED_SCALE_MM, "scale for scale_mode=fixed, mm")
    flags.DEFINE_bool("obb", False, "rotate points into their PCA oriented bounding box")
    flags.DEFINE_integer("seed", 0, "base seed of the per-frame point sampling")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    flags.mark_flags_as_required(["raw_dir", "out_dir"])


def front_end_from_flags(FLAGS) -> FrontEnd:
    return FrontEnd(cube_size=FLAGS.cube_size, depth_window=(FLAGS.depth_near, FLAGS.depth_far),
                    num_points=FLAGS.num_points, min_points=FLAGS.min_points, center_mode=FLAGS.center_mode,
                    scale_mode=FLAGS.scale_mode, fixed_scale=FLAGS.fixed_scale, obb=FLAGS.obb, seed=FLAGS.seed)


def parse_splits(value: str, allowed) -> list:
    names = [s.strip() for s in str(value).split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if not names or bad:
        raise ValueError(f"split: expected a comma-separated subset of {list(allowed)}, found {value!r}")
    return names
