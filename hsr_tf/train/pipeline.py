"""Glue between the shard reader, the training loop and the summaries for the depth model.

* :func:`epoch_dataset_fn`: the training data of epoch ``e`` as a deterministic function of
  (seed, e) -- what :class:`hsr_tf.train.loop.Trainer` needs to resume with the same data order.
* :func:`steps_per_epoch`, :func:`read_data_info` (normalisation rule, joint names, camera).
* :func:`make_visual_fn`: mesh-plugin and rendered-image summaries of fixed held-out frames.

Legend: B batch, N points, V vertices, J joints.
"""
from __future__ import annotations

import json
import queue
import re
import threading
from typing import Optional

import numpy as np
import tensorflow as tf

from hsr_tf.data import reader as reader_lib
from hsr_tf.data import shards as shards_lib
from hsr_tf.train import summaries as summaries_lib


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffling and augmentation (distinct for every (seed, epoch)).

    The reader uses ``s``, ``s + 1`` and ``s + 2`` internally, so epochs are spaced by 16.
    """
    return int((int(seed) * 1_000_003 + 16 * int(epoch)) % (2 ** 31 - 17))


def epoch_dataset_fn(data_dir: str, batch_size: int, seed: int, augment: bool = True, augment_config=None,
                     split: str = "train", shuffle_buffer: int = 8192, include_vertices: bool = True,
                     prefetch_next_epoch: bool = True, prefetch_batches: int = 4):
    """Return ``fn(epoch) -> tf.data.Dataset`` of full batches of one pass over ``split``.

    Each call builds a fresh pipeline seeded by :func:`epoch_seed`, so ``fn(e)`` yields the same
    batches in the same order every time (tested in tests/test_train_pipeline.py).

    With ``prefetch_next_epoch`` (default) the pipeline of epoch ``e + 1`` starts in a background thread as
    soon as epoch ``e`` yields its first batch, so its shuffle buffer (``shuffle_buffer`` frames read from the
    shards) is full and ``prefetch_batches`` batches wait when the training loop asks for epoch ``e + 1``:
    without it every epoch began with a pause of several seconds (the buffer refill), growing under CPU load
    (measured in WORKSPACE_NOTES.md, "Training speed"). The batches are those of the same per-epoch pipeline,
    only iterated earlier, so the order (and the resume contract of ``hsr_tf.train.loop``) is unchanged; an
    epoch asked for out of turn (a restart, a second pass over one epoch) simply builds its pipeline then.
    """
    def make(epoch: int) -> tf.data.Dataset:
        return reader_lib.make_dataset(data_dir, split=split, batch_size=batch_size, shuffle=True, augment=augment,
                                       augment_config=augment_config, seed=epoch_seed(seed, epoch), repeat=False,
                                       include_vertices=include_vertices, shuffle_buffer=shuffle_buffer,
                                       drop_remainder=True)

    if not prefetch_next_epoch:
        return make
    return _EpochPrefetcher(make, prefetch_batches)


class _BackgroundEpoch:
    """Builds one epoch's dataset with ``make()`` and iterates it in a daemon thread into a queue of at most
    ``depth`` batches (building validates every shard: also kept off the training thread).

    The first ``depth`` batches handed out are remembered, so a consumer that stops early (the training loop
    takes one batch of epoch 0 to build the model, then asks for epoch 0 again) can be followed by another
    that replays them and continues, instead of refilling a second pipeline of the same epoch.
    """

    _END = object()

    def __init__(self, make, depth: int):
        self._depth = max(1, int(depth))
        self._queue: queue.Queue = queue.Queue(maxsize=self._depth)
        self._history: Optional[list] = []  # None once more than `depth` batches were handed out
        self._finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True, name="hsr-epoch-prefetch")
        self._thread.start()

    @property
    def replayable(self) -> bool:
        return self._history is not None and not self._finished

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make):
        try:
            for batch in make():
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._put(e)

    def __iter__(self):
        yield from list(self._history or ())
        while True:
            item = self._queue.get()
            if item is self._END:
                self._finished = True
                return
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            if self._history is not None:
                self._history = self._history + [item] if len(self._history) < self._depth else None
            yield item

    def close(self):
        self._stop.set()


class _EpochPrefetcher:
    """``fn(epoch)`` of :func:`epoch_dataset_fn` that prepares epoch ``e + 1`` while epoch ``e`` is consumed."""

    def __init__(self, make, depth: int):
        self._make = make
        self._depth = depth
        self._lock = threading.Lock()
        self._ready: dict = {}  # epoch -> _BackgroundEpoch not being consumed (fresh or replayable)
        self._spec = None

    def _background(self, epoch: int) -> _BackgroundEpoch:
        return _BackgroundEpoch(lambda: self._make(epoch), self._depth)

    def _take(self, epoch: int) -> _BackgroundEpoch:
        with self._lock:
            ready = self._ready.pop(epoch, None)
        return ready if ready is not None else self._background(epoch)

    def _prepare(self, epoch: int) -> None:
        """Start epoch ``epoch`` in the background; drop every prepared epoch but it and the one before."""
        with self._lock:
            for e in [e for e in self._ready if e not in (epoch - 1, epoch)]:
                self._ready.pop(e).close()
            if epoch not in self._ready:
                self._ready[epoch] = self._background(epoch)

    def _give_back(self, epoch: int, source: _BackgroundEpoch) -> None:
        with self._lock:
            if source.replayable and epoch not in self._ready:
                self._ready[epoch] = source
                return
        source.close()

    def __call__(self, epoch: int) -> tf.data.Dataset:
        epoch = int(epoch)
        if self._spec is None:
            self._spec = self._make(epoch).element_spec

        def batches():
            source = self._take(epoch)
            try:
                for i, batch in enumerate(source):
                    if i == 0:
                        self._prepare(epoch + 1)
                    yield batch
            finally:
                self._give_back(epoch, source)

        return tf.data.Dataset.from_generator(batches, output_signature=self._spec)


def eval_dataset(data_dir: str, batch_size: int, split: str = "test", include_vertices: bool = True):
    """Un-shuffled, un-augmented batches of ``split`` (all frames, last batch may be short)."""
    return reader_lib.make_dataset(data_dir, split=split, batch_size=batch_size, shuffle=False, augment=False,
                                   repeat=False, include_vertices=include_vertices, drop_remainder=False)


def steps_per_epoch(data_dir: str, batch_size: int, split: str = "train") -> int:
    """Full batches in one pass over ``split``; raises if there is not even one."""
    n = reader_lib.count_frames(data_dir, split)
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"{data_dir}: expected at least batch_size={batch_size} frames in split '{split}', "
                         f"found {n}")
    return steps


_NORM_RE = re.compile(r"center=(\w+);scale=(\w+)(?::([0-9.eE+-]+))?;obb=(\w+)")


def parse_normalization(text: str) -> dict:
    """Parse the synthetic shards' ``normalization`` attribute, e.g. ``center=mean;scale=fixed:150.0;obb=False``.

    Returns:
      {"center_mode", "scale_mode", "fixed_scale", "obb"}.
    """
    m = _NORM_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"normalization attribute: expected 'center=<mode>;scale=<mode>[:<mm>];obb=<bool>', "
                         f"found {text!r}")
    return {"center_mode": m.group(1), "scale_mode": m.group(2),
            "fixed_scale": float(m.group(3)) if m.group(3) else 150.0, "obb": m.group(4) == "True"}


def read_data_info(data_dir: str, split: str = "train") -> dict:
    """Facts about a shard directory needed to train, evaluate and export.

    Returns:
      {"joint_names": [J], "num_joints": J, "camera": dict, "normalization": dict or None,
       "has_vertices": bool, "num_points": N, "dataset": str}.
    """
    files = shards_lib.list_shards(data_dir, split)
    if not files:
        raise FileNotFoundError(f"{data_dir}: expected shards named '{split}-*.h5', found none")
    info = shards_lib.validate_shard(files[0])
    attrs = info["attrs"]
    camera = attrs["camera"]
    if isinstance(camera, str):
        camera = json.loads(camera)
    norm = parse_normalization(attrs["normalization"]) if "normalization" in attrs else None
    return {"joint_names": list(attrs["joint_names"]), "num_joints": len(attrs["joint_names"]), "camera": camera,
            "normalization": norm, "has_vertices": "vertices" in info["shapes"],
            "num_points": int(info["shapes"]["points"][1]), "dataset": str(attrs["dataset"])}


def take_batch(dataset: tf.data.Dataset) -> dict:
    batch = next(iter(dataset.take(1)), None)
    if batch is None:
        raise ValueError("expected at least one batch for the visual summaries, found an empty dataset")
    return batch


def make_visual_fn(batch: dict, faces, num_frames: int = 2, tag: str = "heldout"):
    """Summaries of the first ``num_frames`` frames of a fixed held-out batch, every call.

    Writes ``<tag>/frame<i>/overlay|prediction|input_points`` meshes and ``<tag>/frame<i>/render`` images, all
    in camera mm. Returns ``fn(model, step, writer)`` for :class:`hsr_tf.train.loop.Trainer`.
    """
    faces = np.asarray(faces, np.int32)
    k = int(min(num_frames, int(tf.shape(batch["points"])[0])))
    sub = {key: v[:k] for key, v in batch.items()}
    points_mm = reader_lib.to_camera_mm(sub["points"], sub).numpy()
    gt_vertices = reader_lib.to_camera_mm(sub["vertices"], sub).numpy() if "vertices" in sub else None
    gt_joints = reader_lib.to_camera_mm(sub["joints"], sub).numpy()

    def fn(model, step, writer):
        out = model(sub["points"], training=False)
        verts = reader_lib.to_camera_mm(out["vertices"], sub).numpy()
        joints = reader_lib.to_camera_mm(out["dataset_joints"] if "dataset_joints" in out else out["joints"],
                                         sub).numpy()
        with writer.as_default(step=step):
            for i in range(k):
                gv = None if gt_vertices is None else gt_vertices[i]
                summaries_lib.write_mesh_summaries(f"{tag}/frame{i}", points_mm[i], verts[i], faces, gv, step=step)
                gj = gt_joints[i] if gt_joints.shape[1] == joints.shape[1] else None
                img = summaries_lib.render_overlay(points_mm[i], verts[i], faces, gv, joints[i], gj,
                                                   title=f"step {step}, held-out frame {i}")
                summaries_lib.write_image(f"{tag}/frame{i}/render", img, step=step)
        writer.flush()

    return fn
