"""Depth rendering of posed synthetic hands with open3d's RaycastingScene, and frame records.

Ray casting: one ray per pixel centre (u, v) from the camera origin with direction
``((u - cx)/fx, (cy - v)/fy, 1)`` (camera frame, y up; image v down). With a z
component of 1, open3d's parametric ``t_hit`` IS the depth z in mm. Only the pixels
of the projected bounding box of the mesh (+2 px margin) are cast; the rest of the
image has no geometry and stays 0, so this equals casting the full frame.

Viewpoint model (``ViewConfig``; the hand's global orientation and translation in
the camera frame), starting from the generator's neutral hand frame (palm facing
-z, i.e. towards the camera; fingers +y = image up; wrist at the origin):

  * flip: with probability ``back_prob`` (0.5) rotate 180 deg about y (back of the
    hand faces the camera);
  * tilt: about a random axis in the image plane by an angle whose cosine is uniform
    in [cos(cone_deg), 1] (uniform on a spherical cap; cone_deg 70) -> palm or back
    within 70 deg of facing the camera;
  * in-plane: rotation about the viewing axis, uniform in [-inplane_deg, inplane_deg]
    (180: any roll);
  * position: the mesh centroid is placed at depth U[distance_mm] (300-700 mm) on the
    ray of a pixel drawn uniformly in the central ``center_region`` (0.5) fraction of
    the image width and height;
  * whole hand in view (``require_in_view``, default on): a viewpoint for which a mesh
    vertex projects closer than ``in_view_margin_px`` (2) to the image border is redrawn
    (up to ``max_view_tries`` = 20 draws, then the frame is skipped as 'out_of_view').
    This removes frames whose fingers leave the image (ground-truth joints with no
    points), and thins out the closest distances with the hand near the border.

  R = R_inplane R_tilt R_flip;  camera = R (hand - centroid) + T.

Frame record (what goes to a shard, see hsr_tf/data/shards.py): sampled normalised
points, joints and vertices in camera mm, centre/scale(/rotation), uvd of the joints,
optionally a depth crop.

Legend: V vertices, F faces (triangles), J joints, H, W image size, P points.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation

from data_prep.synth import noise as noise_lib
from hsr_tf.geometry import pointcloud
from hsr_tf.geometry.camera import Camera


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    distance_mm: tuple = (300.0, 700.0)
    cone_deg: float = 70.0
    back_prob: float = 0.5
    inplane_deg: float = 180.0
    center_region: float = 0.5
    require_in_view: bool = True
    in_view_margin_px: float = 2.0
    max_view_tries: int = 20


@dataclasses.dataclass(frozen=True)
class FrameConfig:
    camera: Camera = Camera.preset("nyu")
    view: ViewConfig = ViewConfig()
    noise: str = "kinect"            # 'kinect' or 'none'
    noise_config: noise_lib.KinectNoiseConfig = noise_lib.KinectNoiseConfig()
    num_points: int = pointcloud.DEFAULT_NUM_POINTS
    min_pixels: int = 300
    center_mode: str = "mean"
    scale_mode: str = "fixed"
    fixed_scale: float = pointcloud.DEFAULT_FIXED_SCALE_MM
    obb: bool = False
    depth_crop_size: int = 0         # 0 = do not store depth crops
    cube_size: float = 300.0         # mm, window of the stored depth crop

    def __post_init__(self):
        if self.noise not in ("kinect", "none"):
            raise ValueError(f"noise: expected 'kinect' or 'none', found {self.noise!r}")


def raycast_depth(vertices, faces, camera: Camera, margin: int = 2):
    """Render a mesh given in camera-frame mm.

    Args:
      vertices: [V, 3] mm (camera frame, z > 0). faces: [F, 3] int.
    Returns:
      dict ``depth`` [H, W] float32 mm (0 = no hit), ``cos_incidence`` [H, W] float32
      (|normal . ray| / |ray|, 0 where no hit), ``window`` (u0, v0, u1, v1) of the
      cast region (empty if the mesh is out of view).
    """
    verts = np.asarray(vertices, dtype=np.float64)
    tris = np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"vertices: expected shape [V, 3], found {verts.shape}")
    if tris.ndim != 2 or tris.shape[1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], found {tris.shape}")
    if np.any(verts[:, 2] <= 0):
        raise ValueError(f"vertices: expected all in front of the camera (z > 0), found min z {verts[:, 2].min()}")
    depth = np.zeros((camera.height, camera.width), dtype=np.float32)
    cosi = np.zeros_like(depth)
    uvd = camera.points_to_uvd(verts)
    u0 = int(max(np.floor(uvd[:, 0].min()) - margin, 0))
    u1 = int(min(np.ceil(uvd[:, 0].max()) + margin + 1, camera.width))
    v0 = int(max(np.floor(uvd[:, 1].min()) - margin, 0))
    v1 = int(min(np.ceil(uvd[:, 1].max()) + margin + 1, camera.height))
    if u1 <= u0 or v1 <= v0:
        return {"depth": depth, "cos_incidence": cosi, "window": (u0, v0, u0, v0)}
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(tris.astype(np.uint32)))
    vv, uu = np.mgrid[v0:v1, u0:u1]
    dirs = camera.ray_directions(uu, vv).reshape(-1, 3)
    rays = np.concatenate([np.zeros_like(dirs), dirs], axis=1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays), nthreads=1)
    t = hit["t_hit"].numpy().reshape(vv.shape)
    normals = hit["primitive_normals"].numpy().reshape(vv.shape + (3,))
    ok = np.isfinite(t)
    dn = dirs.reshape(vv.shape + (3,))
    cos = np.abs(np.sum(normals * dn, axis=-1)) / np.linalg.norm(dn, axis=-1)
    depth[v0:v1, u0:u1] = np.where(ok, t, 0.0)
    cosi[v0:v1, u0:u1] = np.where(ok, cos, 0.0)
    return {"depth": depth, "cos_incidence": cosi, "window": (u0, v0, u1, v1)}


def sample_view(rng, camera: Camera, view: ViewConfig = ViewConfig()):
    """Draw a viewpoint.

    Returns:
      (R [3, 3] rotation hand -> camera, T [3] camera-frame mm position of the mesh centroid).
    """
    flip = Rotation.from_rotvec([0.0, np.pi, 0.0]) if rng.random() < view.back_prob else Rotation.identity()
    phi = rng.uniform(0.0, 2 * np.pi)
    cos_a = rng.uniform(np.cos(np.deg2rad(view.cone_deg)), 1.0)
    tilt = Rotation.from_rotvec(np.array([np.cos(phi), np.sin(phi), 0.0]) * np.arccos(cos_a))
    roll = Rotation.from_rotvec([0.0, 0.0, np.deg2rad(rng.uniform(-view.inplane_deg, view.inplane_deg))])
    rot = (roll * tilt * flip).as_matrix()
    z = rng.uniform(*view.distance_mm)
    half = 0.5 * view.center_region
    u = rng.uniform(camera.cx - half * camera.width, camera.cx + half * camera.width)
    v = rng.uniform(camera.cy - half * camera.height, camera.cy + half * camera.height)
    return rot, camera.uvd_to_points(np.array([u, v, z]))


def in_view(points, camera: Camera, margin_px: float = 0.0) -> bool:
    """True when every point [N, 3] (camera mm) is in front of the camera and projects inside the image,
    at least ``margin_px`` pixels from its border (pixel centres span [0, W-1] x [0, H-1])."""
    p = np.asarray(points, dtype=np.float64)
    if np.any(p[:, 2] <= 0):
        return False
    uvd = camera.points_to_uvd(p)
    return bool(np.all((uvd[:, 0] >= margin_px) & (uvd[:, 0] <= camera.width - 1 - margin_px)
                       & (uvd[:, 1] >= margin_px) & (uvd[:, 1] <= camera.height - 1 - margin_px)))


def resize_nearest(image, size: int):
    """[h, w] -> [size, size] nearest-neighbour (depth must not be interpolated across edges)."""
    h, w = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"image: expected a non-empty crop, found shape {image.shape}")
    rows = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(int)
    cols = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(int)
    return image[rows][:, cols]


def sample_placement(vertices_hand, camera: Camera, view: ViewConfig, rng):
    """Draw viewpoints (:func:`sample_view`) until the hand is in view (``view.require_in_view``).

    Args:
      vertices_hand: [V, 3] posed mesh in the neutral hand frame (mm). rng: numpy Generator.
    Returns:
      (rotation [3, 3], translation [3], vertices [V, 3] camera mm) with camera = rotation @ hand + translation;
      or None when no draw in ``view.max_view_tries`` keeps the hand inside the image. The RGB renderer
      (data_prep.synth_rgb) calls this with the same per-frame rng, so both sets share every viewpoint.
    """
    vh = np.asarray(vertices_hand, dtype=np.float64)
    centroid = vh.mean(axis=0)
    for _ in range(max(1, view.max_view_tries)):
        rot, target = sample_view(rng, camera, view)
        translation = target - rot @ centroid
        v_cam = vh @ rot.T + translation
        if not view.require_in_view or in_view(v_cam, camera, view.in_view_margin_px):
            return rot, translation, v_cam
    return None


def place_and_render(vertices_hand, faces, config: FrameConfig, rng):
    """Draw a viewpoint that keeps the hand in the image, ray-cast the depth map and add the sensor noise.

    Args:
      vertices_hand: [V, 3] posed mesh in the neutral hand frame (mm). faces: [F, 3] int.
      config: the frame configuration (camera, viewpoint ranges, noise). rng: numpy Generator.
    Returns:
      dict ``depth`` [H, W] float32 mm (0 = no return), ``rotation`` [3, 3] and ``translation`` [3]
      (camera = rotation @ hand + translation), ``vertices`` [V, 3] camera mm; or None when no viewpoint
      in ``config.view.max_view_tries`` draws keeps the hand inside the image.
    """
    cam = config.camera
    placed = sample_placement(vertices_hand, cam, config.view, rng)
    if placed is None:
        return None
    rot, translation, v_cam = placed
    render = raycast_depth(v_cam, faces, cam)
    depth = render["depth"]
    if config.noise == "kinect":
        u0, v0, u1, v1 = render["window"]
        if u1 > u0 and v1 > v0:
            depth = depth.copy()
            depth[v0:v1, u0:u1] = noise_lib.apply_kinect_noise(
                depth[v0:v1, u0:u1], render["cos_incidence"][v0:v1, u0:u1], cam.fx, rng, config.noise_config)
    return {"depth": depth, "rotation": rot, "translation": translation, "vertices": v_cam}


def render_frame(vertices_hand, joints_hand, faces, config: FrameConfig, rng):
    """Place a posed hand in the camera, render, corrupt, sample and normalise.

    Args:
      vertices_hand: [V, 3] posed mesh in the neutral hand frame (mm).
      joints_hand: [J, 3] posed joints in the same frame (mm).
      faces: [F, 3] int.
      rng: numpy Generator (seeded per frame by the caller).
    Returns:
      (record, None) on success, record = dict of per-frame arrays (shard fields
      without the frame axis, plus ``global_rotation`` [3, 3] and ``translation`` [3]
      such that camera = global_rotation @ hand + translation); or
      (None, reason) when the frame is skipped ('too_few_pixels', or 'out_of_view' when no
      viewpoint in ``max_view_tries`` draws keeps the hand inside the image).
    """
    cam = config.camera
    placed = place_and_render(vertices_hand, faces, config, rng)
    if placed is None:
        return None, "out_of_view"
    rot, translation, v_cam, depth = placed["rotation"], placed["translation"], placed["vertices"], placed["depth"]
    j_cam = np.asarray(joints_hand, dtype=np.float64) @ rot.T + translation
    points_all = cam.depth_to_points(depth)
    if len(points_all) < config.min_pixels:
        return None, "too_few_pixels"
    sampled, _ = pointcloud.sample_points(points_all, config.num_points, rng)
    norm = pointcloud.compute_normalization(sampled, center_mode=config.center_mode, scale_mode=config.scale_mode,
                                            fixed_scale=config.fixed_scale, obb=config.obb)
    record = {
        "points": norm.apply(sampled),
        "joints": j_cam.astype(np.float32),
        "vertices": v_cam.astype(np.float32),
        "center": norm.center.astype(np.float32),
        "scale": np.float32(norm.scale),
        "uvd": cam.points_to_uvd(j_cam).astype(np.float32),
        "global_rotation": rot,
        "translation": translation.astype(np.float32),
        "num_hand_pixels": len(points_all),
    }
    if config.obb:
        record["rotation"] = norm.rotation.astype(np.float32)
    if config.depth_crop_size > 0:
        u0, v0, u1, v1 = cam.crop_window(norm.center, config.cube_size)
        crop = cam.crop_hand(depth, norm.center, config.cube_size)["depth_crop"]
        record["depth"] = np.round(resize_nearest(crop, config.depth_crop_size)).astype(np.uint16)
        record["crop_window"] = np.array([u0, v0, u1, v1], dtype=np.int32)
    return record, None


# ====================================================================== dataset generation
# Frames are enumerated deterministically: for each split, its subjects (sorted), all poses, all views;
# frame_id = (subject * poses_per_subject + pose) * views_per_pose + view. Consecutive runs of
# ``frames_per_shard`` frames of a split form shard ``{split}-{index:05d}.h5``; every frame draws its
# randomness from ``np.random.default_rng([seed, frame_id])``. A shard is therefore the same whoever
# renders it and whenever, which is what makes resuming (skip finished shards) exact.

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    num_subjects: int = 50
    poses_per_subject: int = 1840
    views_per_pose: int = 3
    seed: int = 0
    test_fraction: float = 0.1
    frames_per_shard: int = 256
    frame: FrameConfig = FrameConfig()

    def to_json_dict(self):
        d = dataclasses.asdict(self)
        d["frame"]["camera"] = self.frame.camera.to_dict()
        return d


def split_subjects(num_subjects: int, test_fraction: float, seed: int):
    """Subject ids per split: {'train': [...], 'test': [...]} (disjoint, sorted).

    The test subjects are the first round(test_fraction * S) of a seeded permutation
    (at least one when test_fraction > 0 and S >= 2).
    """
    if num_subjects < 1:
        raise ValueError(f"num_subjects: expected >= 1, found {num_subjects}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected in [0, 1), found {test_fraction}")
    perm = np.random.default_rng([seed, 7919]).permutation(num_subjects)
    n_test = int(round(test_fraction * num_subjects))
    if test_fraction > 0 and num_subjects >= 2:
        n_test = max(n_test, 1)
    return {"train": sorted(perm[n_test:].tolist()), "test": sorted(perm[:n_test].tolist())}


def plan_shards(config: DatasetConfig):
    """List of shard tasks: dicts with split, index, name and slots [(subject, pose, view, frame_id)]."""
    tasks = []
    for split, subjects in split_subjects(config.num_subjects, config.test_fraction, config.seed).items():
        slots = [(s, p, k, (s * config.poses_per_subject + p) * config.views_per_pose + k)
                 for s in subjects for p in range(config.poses_per_subject) for k in range(config.views_per_pose)]
        for i in range(0, len(slots), config.frames_per_shard):
            idx = i // config.frames_per_shard
            tasks.append({"split": split, "index": idx, "name": f"{split}-{idx:05d}.h5",
                          "slots": slots[i:i + config.frames_per_shard]})
    return tasks


def read_manifest(out_dir: str):
    """The configuration dict recorded in ``out_dir/manifest.json`` by :func:`generate`, or None if absent."""
    import json
    import os

    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: expected the JSON configuration written by data_prep.synth, found "
                             f"unreadable JSON ({e})") from None


def same_configuration(manifest: dict, config: DatasetConfig) -> list:
    """Top-level keys in which a manifest dict and ``config`` differ (empty: the same dataset)."""
    import json

    new = json.loads(json.dumps(config.to_json_dict()))
    return sorted(k for k in set(manifest) | set(new) if manifest.get(k) != new.get(k))


def missing_shards(out_dir: str, manifest: dict) -> list:
    """Names of the shards that the configuration in ``manifest`` plans but ``out_dir`` does not hold yet."""
    import os

    keys = ("num_subjects", "poses_per_subject", "views_per_pose", "seed", "test_fraction", "frames_per_shard")
    try:
        plan = plan_shards(DatasetConfig(**{k: manifest[k] for k in keys}))
    except KeyError as e:
        raise ValueError(f"{os.path.join(out_dir, MANIFEST)}: expected the key {e.args[0]!r}, found none") from None
    return [t["name"] for t in plan if not os.path.exists(os.path.join(out_dir, t["name"]))]


_WORKER = {}


def _worker_init(config: DatasetConfig, queue=None):
    _WORKER.clear()
    _WORKER["config"] = config
    _WORKER["queue"] = queue


def _generator_state(config: DatasetConfig):
    """Subjects, their pose thetas [P, 21, 3] (lazily per subject) and FACES, cached per process."""
    if "subjects" not in _WORKER:
        from data_prep.synth import hands, poses

        _WORKER["hands"] = hands
        _WORKER["subjects"] = hands.make_subjects(config.num_subjects, config.seed)
        _WORKER["library"] = poses.pose_library(config.poses_per_subject, config.seed)
        _WORKER["thetas"] = {}
    return _WORKER


def _thetas(state, s):
    if s not in state["thetas"]:
        theta = np.asarray(state["subjects"][s].theta_for(state["library"]), dtype=np.float64)
        if theta.ndim != 3 or theta.shape[1:] != (21, 3):
            raise ValueError(f"Subject.theta_for: expected [P, 21, 3], found {theta.shape}")
        state["thetas"][s] = theta
    return state["thetas"][s]


def render_shard(task: dict, out_dir: str, config: DatasetConfig | None = None):
    """Render one shard task and write it atomically. Returns a summary dict."""
    import json
    import os

    from hsr_tf.data import shards as shards_lib
    from hsr_tf.hand_model.skeleton import JOINT_NAMES

    config = config or _WORKER["config"]
    queue = _WORKER.get("queue")
    state = _generator_state(config)
    faces = np.asarray(state["hands"].FACES)
    fc = config.frame
    records, skipped = [], {}
    slots = task["slots"]
    j = 0
    while j < len(slots):
        # frames of the same (subject, pose) share one posed mesh
        s, p = slots[j][0], slots[j][1]
        group = [slot for slot in slots[j:j + config.views_per_pose] if slot[0] == s and slot[1] == p]
        subject = state["subjects"][s]
        theta = _thetas(state, s)[p]
        verts, joints = subject.pose(theta)
        for (_, _, k, fid) in group:
            rng = np.random.default_rng([config.seed, fid])
            rec, reason = render_frame(verts, joints, faces, fc, rng)
            if rec is None:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                th = theta.copy()
                th[0] = Rotation.from_matrix(rec.pop("global_rotation")).as_rotvec()
                rec.pop("num_hand_pixels")
                rec.update(theta=th.astype(np.float32), subject=np.int32(s), pose=np.int32(p), view=np.int32(k),
                           frame_id=np.int64(fid))
                records.append(rec)
        if queue is not None:
            queue.put(len(group))
        j += len(group)
    if records:
        arrays = {k: np.stack([r[k] for r in records]) for k in records[0]}
    else:
        num_v = len(state["subjects"][0].rest_vertices)
        arrays = {"points": np.zeros((0, fc.num_points, 3)), "joints": np.zeros((0, 21, 3)),
                  "vertices": np.zeros((0, num_v, 3)), "center": np.zeros((0, 3)), "scale": np.zeros((0,)),
                  "uvd": np.zeros((0, 21, 3)), "translation": np.zeros((0, 3)), "theta": np.zeros((0, 21, 3)),
                  "subject": np.zeros((0,)), "pose": np.zeros((0,)), "view": np.zeros((0,)),
                  "frame_id": np.zeros((0,))}
        if fc.obb:
            arrays["rotation"] = np.zeros((0, 3, 3))
        if fc.depth_crop_size > 0:
            arrays["depth"] = np.zeros((0, fc.depth_crop_size, fc.depth_crop_size))
            arrays["crop_window"] = np.zeros((0, 4))
    arrays = {k: np.asarray(v).astype(shards_lib.FIELDS[k][0]) for k, v in arrays.items()}
    attrs = {
        "dataset": "synth", "split": task["split"], "camera": fc.camera.to_dict(), "joint_names": list(JOINT_NAMES),
        "normalization": f"center={fc.center_mode};scale={fc.scale_mode}"
                         + (f":{fc.fixed_scale}" if fc.scale_mode == "fixed" else "") + f";obb={fc.obb}",
        "noise": fc.noise, "seed": config.seed, "num_slots": len(slots),
        "first_frame_id": slots[0][3], "last_frame_id": slots[-1][3],
        "skipped": json.dumps(skipped, sort_keys=True), "config": json.dumps(config.to_json_dict(), sort_keys=True),
    }
    shards_lib.write_shard(os.path.join(out_dir, task["name"]), arrays, attrs)
    return {"name": task["name"], "written": len(records), "slots": len(slots), "skipped": skipped}


def generate(out_dir: str, config: DatasetConfig, num_workers: int = 0, progress: bool = True, log=print):
    """Render the whole dataset into ``out_dir`` (resumable). Returns a summary dict.

    Finished shards (a complete ``*.h5``) are skipped; stale ``*.tmp`` files are
    ignored and overwritten. A ``manifest.json`` records the configuration; rerunning
    into the same directory with a different configuration raises.
    """
    import json
    import multiprocessing as mp
    import os
    import queue as queue_lib
    import time

    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    cfg_json = config.to_json_dict()
    manifest_path = os.path.join(out_dir, MANIFEST)
    old = read_manifest(out_dir)
    if old is not None:
        diff = same_configuration(old, config)
        if diff:
            raise ValueError(f"{manifest_path}: expected the same configuration to resume, found differences in "
                             f"{diff}; use a new --out_dir")
    else:
        tmp = manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg_json, f, indent=1, sort_keys=True)
        os.replace(tmp, manifest_path)
    tasks = plan_shards(config)
    pending = [t for t in tasks if not os.path.exists(os.path.join(out_dir, t["name"]))]
    total = sum(len(t["slots"]) for t in pending)
    log(f"{len(tasks)} shards planned ({sum(len(t['slots']) for t in tasks)} frames), {len(tasks) - len(pending)} "
        f"already finished, {len(pending)} to render ({total} frames)")
    num_workers = num_workers or os.cpu_count() or 1
    start = time.time()
    results = []
    bar = tqdm(total=total, unit="frame", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    if num_workers == 1 or len(pending) <= 1:
        _worker_init(config, _BarQueue(bar))
        for t in pending:
            results.append(render_shard(t, out_dir, config))
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        with ctx.Pool(min(num_workers, len(pending)), initializer=_worker_init, initargs=(config, q)) as pool:
            async_res = pool.map_async(_render_shard_entry, [(t, out_dir) for t in pending], chunksize=1)
            while not async_res.ready():
                try:
                    bar.update(q.get(timeout=0.2))
                except queue_lib.Empty:
                    pass
            results = async_res.get()
            while True:
                try:
                    bar.update(q.get_nowait())
                except queue_lib.Empty:
                    break
    bar.close()
    elapsed = time.time() - start
    skipped = {}
    for r in results:
        for k, v in r["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    written = sum(r["written"] for r in results)
    rate = total / elapsed if elapsed > 0 else float("nan")
    log(f"rendered {total} frames in {elapsed:.1f} s ({rate:.1f} frames/s, {num_workers} workers): "
        f"{written} written, skipped {sum(skipped.values())} {skipped}")
    return {"frames": total, "written": written, "skipped": skipped, "seconds": elapsed, "rate": rate,
            "shards": len(pending)}


class _BarQueue:
    """In-process stand-in for the progress queue."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, n):
        self.bar.update(n)


def _render_shard_entry(args):
    task, out_dir = args
    return render_shard(task, out_dir)
