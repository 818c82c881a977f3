"""The synthetic RGB dataset: configuration, shard plan, shard rendering and the resumable generator.

Frames are the depth set's frames (``data_prep.synth.render.plan_shards``): for each split (the same subject
split), its subjects, all poses, all views; frame id = (subject * poses_per_subject + pose) * views_per_pose
+ view; shard ``{split}-{index:05d}.h5`` holds ``frames_per_shard`` consecutive slots; every frame draws from
``np.random.default_rng([seed, frame id])``, first the viewpoint (identical to the depth frame's), then its
skin tone, lighting and noise. A subject's albedo texture and tone variation come from
``np.random.default_rng([seed, 104729, subject])``. A shard is therefore the same whoever renders it and
whenever: resuming (skip finished shards) is exact. ``manifest.json`` records the configuration; rerunning
into the same directory with another configuration raises.

Legend: V vertices, J joints, S crop size.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_prep.synth import render as depth_render
from data_prep.synth_rgb import appearance, raster

MANIFEST = "manifest.json"
SUBJECT_STREAM = 104729


@dataclasses.dataclass(frozen=True)
class RGBDatasetConfig:
    num_subjects: int = 50
    poses_per_subject: int = 1840
    views_per_pose: int = 3
    seed: int = 0
    test_fraction: float = 0.1
    frames_per_shard: int = 256
    frame: raster.RGBFrameConfig = raster.RGBFrameConfig()

    def depth_plan_config(self):
        """The depth set's DatasetConfig with the same frames (for plan_shards / split_subjects)."""
        return depth_render.DatasetConfig(num_subjects=self.num_subjects, poses_per_subject=self.poses_per_subject,
                                          views_per_pose=self.views_per_pose, seed=self.seed,
                                          test_fraction=self.test_fraction, frames_per_shard=self.frames_per_shard)

    def to_json_dict(self):
        d = dataclasses.asdict(self)
        d["frame"]["camera"] = self.frame.camera.to_dict()
        d["frame"]["skin_tones"] = list(self.frame.skin_tones)
        d["frame"]["lighting"] = list(self.frame.lighting)
        return json.loads(json.dumps(d))


def plan_shards(config: RGBDatasetConfig):
    """Shard tasks (split, index, name, slots [(subject, pose, view, frame_id)]), as the depth set's."""
    return depth_render.plan_shards(config.depth_plan_config())


_STATE = {}


def _state(config: RGBDatasetConfig):
    """Subjects, pose library, per-subject looks and thetas, cached per process."""
    key = (config.num_subjects, config.poses_per_subject, config.seed)
    if _STATE.get("key") != key:
        from data_prep.synth import hands, poses

        _STATE.clear()
        _STATE.update(key=key, hands=hands, subjects=hands.make_subjects(config.num_subjects, config.seed),
                      library=poses.pose_library(config.poses_per_subject, config.seed), thetas={}, looks={})
    return _STATE


def subject_look(state, s, seed):
    if s not in state["looks"]:
        subj = state["subjects"][s]
        state["looks"][s] = appearance.subject_look(subj.rest_vertices, subj.rest_joints,
                                                    np.asarray(state["hands"].FACES),
                                                    np.random.default_rng([seed, SUBJECT_STREAM, s]))
    return state["looks"][s]


def _theta(state, s, p):
    if s not in state["thetas"]:
        state["thetas"][s] = np.asarray(state["subjects"][s].theta_for(state["library"]), dtype=np.float64)
    return state["thetas"][s][p]


def _empty_arrays(size, num_v):
    shapes = {"image": (size, size, 3), "mask": (size, size), "depth": (size, size), "joints": (21, 3),
              "joints_uv": (21, 2), "camera": (4,), "vertices": (num_v, 3), "bone_scale": (), "root_depth": (),
              "mirrored": (), "frame_index": (), "subject": (), "pose": (), "view": (), "skin_tone": (),
              "lighting": ()}
    return {k: np.zeros((0,) + s) for k, s in shapes.items()}


def render_shard(task: dict, out_dir: str, config: RGBDatasetConfig, progress=None, extra_attrs=None):
    """Render one shard task and write it atomically (``extra_attrs`` added to the file attributes).
    Returns a summary dict."""
    from hsr_tf.data import rgb_shards
    from hsr_tf.hand_model.skeleton import JOINT_NAMES

    state = _state(config)
    faces = np.asarray(state["hands"].FACES)
    records, skipped = [], {}
    slots = task["slots"]
    j = 0
    while j < len(slots):
        s, p = slots[j][0], slots[j][1]  # frames of one (subject, pose) share the posed mesh
        group = [slot for slot in slots[j:j + config.views_per_pose] if slot[0] == s and slot[1] == p]
        theta = _theta(state, s, p)
        verts, joints = state["subjects"][s].pose(theta)
        normals = appearance.vertex_normals(verts, faces, raster.NORMAL_SMOOTHING)
        look = subject_look(state, s, config.seed)
        for (_, _, k, fid) in group:
            rng = np.random.default_rng([config.seed, fid])
            rec, reason = raster.render_rgb_frame(verts, joints, faces, look, config.frame, rng,
                                                  vertex_normals_hand=normals)
            if rec is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            rec.pop("global_rotation")
            rec.update(mirrored=np.uint8(0), frame_index=np.int64(fid), subject=np.int32(s), pose=np.int32(p),
                       view=np.int32(k))
            records.append(rec)
        if progress is not None:
            progress(len(group))
        j += len(group)
    fc = config.frame
    if records:
        arrays = {k: np.stack([r[k] for r in records]) for k in records[0]}
    else:
        arrays = _empty_arrays(fc.image_size, len(state["subjects"][0].rest_vertices))
    attrs = {
        "dataset": "synth_rgb", "split": task["split"], "image_size": fc.image_size,
        "joint_names": list(JOINT_NAMES), "full_camera": fc.camera.to_json(), "seed": config.seed,
        "skin_tones": ",".join(str(i) for i in fc.skin_tones), "lighting": ",".join(str(i) for i in fc.lighting),
        "depth_noise": fc.depth_noise, "supersample": fc.supersample, "mask_encoding": "coverage 0..255",
        "num_slots": len(slots), "first_frame_id": slots[0][3], "last_frame_id": slots[-1][3],
        "skipped": json.dumps(skipped, sort_keys=True), "config": json.dumps(config.to_json_dict(), sort_keys=True),
    }
    attrs.update(extra_attrs or {})
    rgb_shards.write_rgb_shard(os.path.join(out_dir, task["name"]), arrays, attrs)
    return {"name": task["name"], "written": len(records), "slots": len(slots), "skipped": skipped}


def check_manifest(out_dir: str, config: RGBDatasetConfig):
    """Write ``manifest.json`` on a fresh directory; raise when an existing one records another configuration."""
    path = os.path.join(out_dir, MANIFEST)
    new = config.to_json_dict()
    if os.path.exists(path):
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: expected the JSON configuration written by data_prep.synth_rgb, found "
                                 f"unreadable JSON ({e})") from None
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{path}: expected the same configuration to resume, found differences in {diff}; "
                             f"use a new --out_dir")
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


_WORKER = {}


def _init(config, queue, extra_attrs):
    _WORKER.update(config=config, queue=queue, extra_attrs=extra_attrs)


def _entry(args):
    task, out_dir = args
    return render_shard(task, out_dir, _WORKER["config"], progress=_WORKER["queue"].put,
                        extra_attrs=_WORKER["extra_attrs"])


def generate(out_dir: str, config: RGBDatasetConfig, num_workers: int = 0, progress: bool = True, log=print,
             extra_attrs=None):
    """Render every unfinished shard into ``out_dir`` (resumable). ``extra_attrs``: more file attributes
    (e.g. background_dir). Returns a summary dict (frames, written, skipped, seconds, rate in frames/s,
    shards)."""
    import multiprocessing as mp
    import queue as queue_lib
    import time

    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    check_manifest(out_dir, config)
    tasks = plan_shards(config)
    pending = [t for t in tasks if not os.path.exists(os.path.join(out_dir, t["name"]))]
    total = sum(len(t["slots"]) for t in pending)
    log(f"{len(tasks)} shards planned ({sum(len(t['slots']) for t in tasks)} frames), "
        f"{len(tasks) - len(pending)} already finished, {len(pending)} to render ({total} frames)")
    num_workers = num_workers or os.cpu_count() or 1
    start = time.time()
    bar = tqdm(total=total, unit="frame", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    if num_workers == 1 or len(pending) <= 1:
        results = [render_shard(t, out_dir, config, progress=bar.update, extra_attrs=extra_attrs) for t in pending]
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        with ctx.Pool(min(num_workers, len(pending)), initializer=_init, initargs=(config, q, extra_attrs)) as pool:
            async_res = pool.map_async(_entry, [(t, out_dir) for t in pending], chunksize=1)
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
        for key, v in r["skipped"].items():
            skipped[key] = skipped.get(key, 0) + v
    written = sum(r["written"] for r in results)
    rate = total / elapsed if elapsed > 0 and total else float("nan")
    log(f"rendered {total} frames in {elapsed:.1f} s ({rate:.1f} frames/s, {num_workers} workers): "
        f"{written} written, skipped {sum(skipped.values())} {skipped}")
    return {"frames": total, "written": written, "skipped": skipped, "seconds": elapsed, "rate": rate,
            "shards": len(pending)}
