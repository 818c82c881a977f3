"""Held-out synthetic frames of a trained depth model: rendered on demand, evaluated, written as shards.

Used by the main job (``experiments.reconstruct``) and by the packaging of the shipped model
(``experiments.package_pretrained``), so both measure the same frames the same way.

Which frames. A model trained on a set rendered by ``data_prep.synth`` knows that set's configuration
(its ``manifest.json``, shipped with the pretrained model as ``training_data.json``). Its held-out subjects are
the set's test split (``render.split_subjects``): hands whose shape the network never saw. Frame ``(s, p, k)``
of such a subject is rendered exactly as the set's renderer renders it (same pose library, same per-frame
seed ``[seed, frame_id]``), so with the set's own viewpoints ('default') a held-out frame here IS the frame of
the set's test shards, and an evaluation of a subset is a subsample of the full test-split evaluation. With
'frontal' viewpoints (palm within 25 deg of facing the camera, never the back, roll +-15 deg: the demo's
views) the same subjects and poses are seen from the front. The poses are the set's library: held-out
subjects, not held-out poses.

Legend: S subjects, P poses per subject, K views per pose, F frames.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_prep.synth import noise as noise_lib
from data_prep.synth import render

# Viewpoint sets: name -> ViewConfig overrides ('default' keeps the training set's own viewpoints).
VIEW_SETS = {"default": {}, "frontal": {"cone_deg": 25.0, "back_prob": 0.0, "inplane_deg": 15.0}}


def dataset_config_from_manifest(manifest: dict, source: str = "manifest") -> render.DatasetConfig:
    """The ``render.DatasetConfig`` recorded in a ``data_prep.synth`` manifest (checked to round-trip).

    Raises:
      ValueError naming ``source`` when a key is missing or the rebuilt configuration differs from it.
    """
    from hsr_tf.geometry.camera import Camera

    try:
        fr = dict(manifest["frame"])
        view = dict(fr.pop("view"))
        view["distance_mm"] = tuple(view["distance_mm"])
        frame = render.FrameConfig(camera=Camera.from_dict(fr.pop("camera")), view=render.ViewConfig(**view),
                                   noise_config=noise_lib.KinectNoiseConfig(**fr.pop("noise_config")), **fr)
        keys = ("num_subjects", "poses_per_subject", "views_per_pose", "seed", "test_fraction", "frames_per_shard")
        config = render.DatasetConfig(frame=frame, **{k: manifest[k] for k in keys})
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: expected the configuration written by data_prep.synth, found an entry that "
                         f"does not fit it ({e!r})") from None
    diff = render.same_configuration(manifest, config)
    if diff:
        raise ValueError(f"{source}: expected a configuration this renderer reproduces, found differences in {diff}")
    return config


def read_manifest_file(path: str) -> render.DatasetConfig:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected the training set's data_prep.synth manifest, found no file")
    with open(path) as f:
        return dataset_config_from_manifest(json.load(f), source=path)


def with_views(config: render.DatasetConfig, view_set: str, depth_crop_size: int = 0) -> render.DatasetConfig:
    """``config`` with the viewpoints of ``view_set`` (see VIEW_SETS) and depth crops of that size (0 = none)."""
    if view_set not in VIEW_SETS:
        raise ValueError(f"view_set: expected one of {sorted(VIEW_SETS)}, found {view_set!r}")
    view = dataclasses.replace(config.frame.view, **VIEW_SETS[view_set])
    frame = dataclasses.replace(config.frame, view=view, depth_crop_size=int(depth_crop_size))
    return dataclasses.replace(config, frame=frame)


def test_subjects(config: render.DatasetConfig) -> list:
    """Subject ids of the set's test split (never trained on)."""
    subjects = render.split_subjects(config.num_subjects, config.test_fraction, config.seed)["test"]
    if not subjects:
        raise ValueError(f"the training set ({config.num_subjects} subjects, test_fraction {config.test_fraction}) "
                         "has no test subjects to hold out")
    return subjects


def heldout_slots(config: render.DatasetConfig, frames_per_subject: int = 0) -> list:
    """(subject, pose, view, frame_id) slots of the test subjects, frame ids as in ``render.plan_shards``.

    Args:
      frames_per_subject: 0 = every pose and view of each test subject (the whole test split); 0 < n <= P: n
        distinct poses evenly spaced over the library, the view index cycling through 0..K-1; P < n <= P K: n
        (pose, view) pairs evenly spaced in frame order.
    """
    P, K = config.poses_per_subject, config.views_per_pose
    slots = []
    for s in test_subjects(config):
        if frames_per_subject <= 0:
            picks = [(p, k) for p in range(P) for k in range(K)]
        else:
            if frames_per_subject > P * K:
                raise ValueError(f"frames_per_subject: expected at most {P * K} (poses x views of the set), found "
                                 f"{frames_per_subject}")
            if frames_per_subject <= P:  # distinct poses, evenly spaced; views in turn
                poses = np.round(np.linspace(0, P - 1, frames_per_subject)).astype(int)
                picks = [(int(p), j % K) for j, p in enumerate(poses)]
            else:  # every (pose, view) pair in order, evenly spaced
                flat = np.round(np.linspace(0, P * K - 1, frames_per_subject)).astype(int)
                picks = [(int(i) // K, int(i) % K) for i in flat]
        slots.extend((s, p, k, (s * P + p) * K + k) for p, k in picks)
    return slots


def render_heldout(out_dir: str, config: render.DatasetConfig, slots: list, num_workers: int = 1) -> dict:
    """Render ``slots`` into ``out_dir/test-*.h5`` (the data_prep.synth schema) and a manifest of the config.

    Rendering runs in this process (num_workers = 1) or in forked workers: call it before TensorFlow is
    imported when num_workers > 1. Existing shards are replaced. Returns {"frames", "written", "skipped",
    "shards"}.
    """
    import multiprocessing as mp

    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.startswith("test-") and name.endswith(".h5"):
            os.remove(os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(dict(config.to_json_dict(), heldout_slots=len(slots)), f, indent=1, sort_keys=True)
    n_chunks = max(1, min(int(num_workers), len(slots)))
    step = -(-len(slots) // n_chunks)
    tasks = [{"split": "test", "index": i, "name": f"test-{i:05d}.h5", "slots": slots[i * step:(i + 1) * step]}
             for i in range(n_chunks) if slots[i * step:(i + 1) * step]]
    if len(tasks) == 1:
        render._worker_init(config)
        results = [render.render_shard(tasks[0], out_dir, config)]
    else:
        with mp.get_context("fork").Pool(len(tasks), initializer=render._worker_init, initargs=(config,)) as pool:
            results = pool.map(render._render_shard_entry, [(t, out_dir) for t in tasks], chunksize=1)
    skipped = {}
    for r in results:
        for k, v in r["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    written = sum(r["written"] for r in results)
    if written == 0:
        raise RuntimeError(f"{out_dir}: expected rendered held-out frames, found none written (skipped {skipped})")
    return {"frames": len(slots), "written": written, "skipped": skipped, "shards": len(tasks)}


def rest_shapes(config: render.DatasetConfig) -> dict:
    """{subject id: [V, 3] neutral mesh (hand frame, mm)} of the test subjects (for the rest-shape error)."""
    from data_prep.synth import hands

    subjects = hands.make_subjects(config.num_subjects, config.seed)
    return {s: subjects[s].rest_vertices for s in test_subjects(config)}


def evaluate_dir(model, data_dir: str, config: render.DatasetConfig, batch_size: int = 32, predict_fn=None,
                 keep_outputs: bool = False) -> dict:
    """``hsr_tf.train.evaluation.evaluate`` of ``model`` on every frame of ``data_dir``'s test split, with the
    rest-shape error of the held-out subjects.

    Args:
      predict_fn: ``evaluation.make_predict_fn(model)`` to reuse one traced function across sets.
      keep_outputs: also return the predictions, camera mm, in frame order under ``outputs``:
        {vertices [F, V, 3], joints [F, 21, 3], dataset_joints [F, J, 3]} (from the same pass, no second one).
    """
    from hsr_tf.train import evaluation, pipeline

    base = predict_fn or evaluation.make_predict_fn(model)
    kept = []

    def predict(batch):
        out = base(batch)
        if keep_outputs:
            kept.append(evaluation.outputs_to_mm(out, batch))
        return out

    ds = pipeline.eval_dataset(data_dir, batch_size, include_vertices=True)
    res = evaluation.evaluate(model, ds, rest_shapes=rest_shapes(config), predict_fn=predict)
    if keep_outputs:
        res["outputs"] = {k: np.concatenate([o[k] for o in kept]) for k in kept[0]}
    return res


def read_frames(data_dir: str, fields=("frame_id", "subject", "pose", "view", "joints", "vertices", "center",
                                       "depth", "crop_window")) -> dict:
    """Fields of every frame of ``data_dir``'s test shards, concatenated in shard order: name -> [F, ...]."""
    from hsr_tf.data import shards as shards_lib

    files = shards_lib.list_shards(data_dir, "test")
    if not files:
        raise FileNotFoundError(f"{data_dir}: expected test-*.h5 held-out shards, found none")
    parts = [shards_lib.load_shard(f, fields=list(fields)) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in fields}
