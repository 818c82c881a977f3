"""--distribution and --sync_batchnorm in the RGB programs (rgb_synth, stb_weak, rhd_full): scope, chief, publish.

The strategy is the depth programs' (``experiments.common.distribution_strategy``, ``hsr_tf.train.distribute``):
created once, first thing in a run (multi_worker configures TensorFlow's collective runtime), logged with the
global batch (--batch_size, samples per optimizer step over all replicas) and the per-replica batch
(--batch_size / replicas; a batch that does not divide raises, naming --batch_size). The networks are built
under :func:`scope` (their variables mirrored over the replicas) and every phase's Trainer gets the strategy, so
each optimizer step is the one device's step on the same global batch (``hsr_tf/train/distribute.py``).

Chief only (the ``chief`` task, else worker 0; a single process is the chief): the run's files (flags.txt,
command.txt, model_config.json, run_kind.txt, timings.json), the published checkpoint (:func:`publish`),
evaluations, export and predict. Every worker takes part in a save (MultiWorkerMirroredStrategy): the others
write theirs to a temporary directory that is deleted, as the training loop does.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from experiments import common


def strategy() -> tf.distribute.Strategy:
    """The strategy of --distribution (created and logged on the first call; call it before other TF work)."""
    return common.distribution_strategy()


def scope():
    """``strategy().scope()``: construct and build the networks inside it."""
    return strategy().scope()


def is_chief() -> bool:
    """Whether this process writes the run's files, evaluates, exports and predicts."""
    from hsr_tf.train import distribute

    return distribute.is_chief(strategy())


def publish(net, workdir: str, step: int):
    """Write the final network to W/checkpoints (+ model_config.json, run_kind.txt) for evaluate / export.

    Args:
      net: the built RGBMeshNet. workdir: the run directory W. step: the checkpoint number (the final step).
    Returns:
      the checkpoint prefix on the chief; None on another worker (its copy went to a deleted temporary
      directory: every worker must take part in a save under MultiWorkerMirroredStrategy).
    """
    from hsr_tf.train import loop, run_kind

    ckpt = tf.train.Checkpoint(**loop.model_checkpoint_objects(net))
    if not is_chief():
        tmp = tempfile.mkdtemp(prefix="hsr_tf_worker_publish_")
        try:
            ckpt.write(os.path.join(tmp, "ckpt"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
    loop.save_model_config(net, workdir)
    run_kind.write_run_kind(workdir, "rgb")
    manager = tf.train.CheckpointManager(ckpt, os.path.join(workdir, loop.CHECKPOINT_SUBDIR), max_to_keep=1)
    return manager.save(checkpoint_number=step)


def log_not_chief(what: str) -> None:
    """One log line on a worker that is not the chief, naming the steps left to the chief."""
    from hsr_tf.train import distribute

    info = distribute.worker_info(strategy())
    logging.info("%s %d is not the chief: %s left to the chief", info["task_type"], info["task_id"], what)
