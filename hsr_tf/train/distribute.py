"""tf.distribute for the training loop: one flag value -> a strategy, the chief, per-replica slices of a batch.

Legend: B global batch (samples per optimizer step, all replicas together), R replicas in sync (all
workers), b = B / R per-replica batch, W workers (machines), L = R / W local replicas per worker.

How :class:`hsr_tf.train.loop.Trainer` distributes a step (any strategy, ``none`` included):

* Every worker builds the SAME deterministic stream of global batches, ``train_dataset_fn(epoch)`` (the
  resume contract of ``hsr_tf/train/loop.py``), and replica ``r`` (its id across all workers) computes on
  rows ``[r b, (r + 1) b)`` of each batch (:func:`distribute_batch`). So the data order, the learning-rate
  schedule and the resume point do not depend on R: a run started on 8 GPUs resumes on 1 with the same
  batches. The cost: each worker reads and augments the whole global batch and keeps its slice.
* Each replica's loss is its mean over b samples, divided by R; the optimizer sums the gradients over the
  replicas (Keras all-reduce), which gives the gradient of the mean over B -- the same update as one device
  with the global batch, up to float rounding. BatchNorm: statistics over each replica's b samples unless
  :func:`synchronize_batchnorm` is applied (then over B, the single-device statistics).
* The chief (``chief`` task, else ``worker`` 0) writes checkpoints, summaries and the workdir files; the
  other workers write their checkpoints to a private temporary directory that is deleted (every worker must
  take part in a save under MultiWorkerMirroredStrategy).

Custom ops (``hsr_tf.ops``) are ordinary ops inside Keras layers: ``strategy.run`` places a copy of the step
on each replica's device, where the op's CPU or CUDA kernel runs.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Optional

import tensorflow as tf
import keras

log = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(name: str, devices: Optional[list] = None) -> tf.distribute.Strategy:
    """The strategy for ``--distribution``.

    Args:
      name: ``none`` (TensorFlow's default strategy: one device, placement as without tf.distribute),
        ``mirrored`` (MirroredStrategy over ``devices``, default every local GPU, else the CPU), or
        ``multi_worker`` (MultiWorkerMirroredStrategy; cluster and task from the ``TF_CONFIG`` environment
        variable, every local GPU of each worker). Create it once, at the start of the program, before the
        model: ``multi_worker`` configures TensorFlow's collective runtime.
      devices: explicit device list for ``mirrored`` (e.g. logical CPUs in tests).
    Raises:
      ValueError for an unknown name, or ``multi_worker`` with a malformed ``TF_CONFIG``.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if raw:
            try:
                cfg = json.loads(raw)
                cfg["cluster"], cfg["task"]["type"], cfg["task"]["index"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError("TF_CONFIG: expected JSON {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                                 f"\"task\": {{\"type\": \"worker\", \"index\": i}}}}, found {raw!r}") from e
        else:
            log.warning("--distribution=multi_worker without TF_CONFIG: a single worker")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(f"distribution 'multi_worker': {e}. Expected the strategy to be created before any "
                               "other TensorFlow operation of the process (first thing in the program)") from e
    raise ValueError(f"distribution: expected one of {STRATEGIES}, found {name!r}")


def worker_info(strategy: tf.distribute.Strategy) -> dict:
    """{"task_type", "task_id", "num_workers", "is_chief"} of this process (single process: worker 0, chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return {"task_type": None, "task_id": 0, "num_workers": 1, "is_chief": True}
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    workers = sum(len(v) if isinstance(v, (list, dict)) else 1 for k, v in spec.items() if k in ("chief", "worker"))
    if "chief" in spec:
        chief = task_type == "chief"
    else:
        chief = task_type in (None, "worker") and task_id == 0
    return {"task_type": task_type, "task_id": task_id, "num_workers": max(workers, 1), "is_chief": chief}


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    return worker_info(strategy)["is_chief"]


def replica_batch_size(strategy: tf.distribute.Strategy, global_batch: int) -> int:
    """b = B / R; raises ValueError naming the batch flag when R does not divide B."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"--batch_size: expected a multiple of the {replicas} replicas in sync (the global batch "
                         f"is split evenly), found {global_batch}")
    return global_batch // replicas


def describe(strategy: tf.distribute.Strategy, global_batch: Optional[int] = None) -> str:
    """One log line: strategy, workers, replicas, devices, global and per-replica batch."""
    info = worker_info(strategy)
    name = type(strategy).__name__
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        devices = []
    text = (f"distribution {name}: {strategy.num_replicas_in_sync} replicas in sync over {info['num_workers']} "
            f"worker(s)")
    if devices:
        text += f", local devices {devices}"
    if info["task_type"] is not None:
        text += f"; this is {info['task_type']} {info['task_id']}{' (chief)' if info['is_chief'] else ''}"
    if global_batch is not None:
        text += f"; global batch {global_batch}, per-replica batch {replica_batch_size(strategy, global_batch)}"
    return text


def distribute_batch(strategy: tf.distribute.Strategy, batch: Mapping):
    """Per-replica slices of a global batch (every value has B first); the batch itself with one replica.

    Returns:
      the batch, or a dict of ``PerReplica`` values for ``strategy.run``; replica r gets rows [r b, (r + 1) b).
    Raises:
      ValueError when R does not divide B.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return batch
    sizes = {int(v.shape[0]) for v in tf.nest.flatten(batch)}
    if len(sizes) != 1:
        raise ValueError(f"batch: expected every field to have the same batch size, found sizes {sorted(sizes)}")
    per = replica_batch_size(strategy, sizes.pop())

    def value_fn(ctx):
        start = ctx.replica_id_in_sync_group * per
        # Sliced on the host, where tf.data left the batch; each replica's step copies its slice to its device.
        with tf.device("/cpu:0"):
            return tf.nest.map_structure(lambda v: tf.identity(v[start:start + per]), batch)

    return strategy.experimental_distribute_values_from_function(value_fn)


def synchronize_batchnorm(model: keras.Model) -> int:
    """Make every ``BatchNormalization`` of ``model`` use statistics over the global batch (all replicas).

    Must run before the first training step (the flag is read when the step is traced). Returns the number
    of layers changed. The weights and the saved config are those of the same layer with
    ``synchronized=True``; with one replica the statistics are the same as without.
    """
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            count += 1
    return count
