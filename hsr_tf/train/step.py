"""The training step of :class:`hsr_tf.train.loop.Trainer`, split so that a poisoned batch never reaches the weights.

``compute(batch, epoch)`` runs the forward and backward pass on every replica and returns the loss (mean over
replicas), the loss terms, the per-replica gradients and ``finite`` (the loss and, without loss scaling, every
gradient are finite on every replica); ``apply(grads)`` then performs the optimizer update. The loop calls
``apply`` only when ``finite`` holds, so a NaN/Inf batch leaves the weights and the optimizer state as they
were. Under a strategy with R replicas each replica's loss is divided by R and the optimizer sums the
gradients over the replicas (Keras' all-reduce): the update of the mean over the global batch.

Legend: B global batch, R replicas in sync.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import tensorflow as tf
import keras


def model_input(batch: Mapping, input_key):
    """``batch[input_key]``, or ``{k: batch[k]}`` for a tuple of keys (models taking a dict)."""
    if isinstance(input_key, str):
        return batch[input_key]
    return {k: batch[k] for k in input_key}


def make_step_fns(strategy: tf.distribute.Strategy, model: keras.Model, loss_fn: Callable,
                  optimizer: keras.optimizers.Optimizer, select: Callable, input_key):
    """Returns ``(compute, apply)`` (see the module docstring); ``select()`` lists the trained variables."""
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    replicas = strategy.num_replicas_in_sync

    def replica_gradients(batch, epoch):
        with tf.GradientTape() as tape:
            outputs = model(model_input(batch, input_key), training=True)
            total, terms = loss_fn(batch, outputs, epoch)
            # Each replica's mean / R, summed over replicas by the optimizer: the mean over the global batch.
            objective = total / replicas if replicas > 1 else total
            scaled = optimizer.scale_loss(objective) if loss_scaled else objective
        variables = select()
        grads = tape.gradient(scaled, variables)  # a LossScaleOptimizer unscales them when applying
        missing = [v.path for v, g in zip(variables, grads) if g is None]
        if missing:
            raise ValueError(f"loss_fn: expected a gradient for every trainable variable, none for {missing}")
        finite = tf.math.is_finite(tf.cast(total, tf.float32))
        if not loss_scaled:  # under loss scaling, overflowing gradients are the LossScaleOptimizer's business
            finite = tf.logical_and(finite, tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
        return total, terms, grads, 1.0 - tf.cast(finite, tf.float32)

    @tf.function(reduce_retracing=True)
    def compute(batch, epoch):
        total, terms, grads, bad = strategy.run(replica_gradients, args=(batch, epoch))
        mean = tf.distribute.ReduceOp.MEAN
        total = strategy.reduce(mean, total, axis=None)
        terms = {k: strategy.reduce(mean, v, axis=None) for k, v in terms.items()}
        # finite on every replica <=> no replica flagged its loss or gradients (ReduceOp has no MIN)
        return total, terms, grads, tf.equal(strategy.reduce(tf.distribute.ReduceOp.SUM, bad, axis=None), 0.0)

    def replica_apply(grads):
        # tf.identity inside the replica puts each gradient on the replica's device: a function input has no
        # device, and the all-reduce (MultiWorkerMirroredStrategy) needs one as its destination.
        optimizer.apply_gradients(zip([tf.identity(g) for g in grads], select()))

    @tf.function(reduce_retracing=True)
    def apply(grads):
        strategy.run(replica_apply, args=(grads,))

    return compute, apply


def nonfinite_message(step: int, epoch: int, index: int, batch: Mapping, loss: float, terms: Mapping) -> str:
    """What went wrong at ``step`` and which frames were in the batch (``frame_id``/``subject`` when present).

    ``index`` is the batch's position in epoch ``epoch``'s deterministic order, which identifies it even
    without frame ids (``train_dataset_fn(epoch)`` rebuilds the same batches).
    """
    bad = {k: float(v) for k, v in terms.items() if np.ndim(v) == 0 and not np.isfinite(float(v))}
    what = f"the loss is {loss}" if not np.isfinite(loss) else "the loss is finite but a gradient is not"
    ids = {k: np.asarray(batch[k]).reshape(-1).tolist() for k in ("frame_id", "subject") if k in batch}
    frames = "; ".join(f"{k} {v}" for k, v in ids.items()) if ids else \
        f"the batch has no frame_id field (it is batch {index} of epoch {epoch}'s deterministic order)"
    return (f"step {step} (epoch {epoch}, batch {index} of the epoch): {what}"
            f"{f' (non-finite terms {bad})' if bad else ''}. Frames of the batch: {frames}")
