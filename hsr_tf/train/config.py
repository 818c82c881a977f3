"""Optimisation and bookkeeping settings of a training run (:class:`TrainConfig`) and its optimizer.

The learning rate is a staircase decay per samples seen: ``lr = learning_rate * lr_decay ** floor(step /
lr_decay_steps)``, kept in the optimizer so that it is restored with the optimizer's iteration count.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import keras

from hsr_tf import precision as precision_lib

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings of one run.

    Attributes:
      workdir: run directory (checkpoints/, train/, eval/, flags.txt, command.txt, model_config.json, .lock).
      steps_per_epoch: batches per epoch of the data (data order / resume; the learning rate decays per
        epoch only when ``lr_decay_samples`` is None).
      num_epochs: epochs to train; the run ends at ``num_epochs * steps_per_epoch`` steps
        unless ``max_steps`` is smaller.
      max_steps: optional cap on the total number of steps (counted across restarts).
      learning_rate: initial Adam learning rate (paper: 1e-3).
      lr_decay: factor applied once per ``lr_decay_samples`` samples seen (paper: 0.9 per epoch), staircase.
      lr_decay_samples: samples (frames, summed over replicas) between two decays. The paper decays once
        per epoch of its ~240K-frame set; on a small set a per-epoch decay drives the rate to ~0 within a
        few thousand steps, so programs pass the paper's epoch size here. None: once per epoch of this data.
      batch_size: global batch (samples per step); required with ``lr_decay_samples``.
      checkpoint_every: steps between checkpoints (one is always written at the end).
      summary_every: steps between scalar summaries (loss terms averaged over the interval, lr).
      eval_every: steps between held-out evaluations (0 = only at the end).
      visual_every: steps between mesh / image summaries (0 = never).
      max_to_keep: checkpoints kept on disk.
      progress: show a tqdm progress bar; without it, log a line every ``log_every`` steps.
      log_every: steps between progress log lines when ``progress`` is off (0 = ``summary_every``).
      optimizer: "adam" (the depth paper) or "rmsprop" (the RGB paper, Ge et al. section 5.1).
      on_nonfinite: "stop" (raise :class:`NonFiniteLossError` naming the step and frames) or "skip" (skip
        the batch, count it; the step still advances so the data order is kept).
      max_consecutive_skips: with "skip", raise after this many non-finite batches in a row.
      sync_batchnorm: with more than one replica, BatchNorm statistics over the global batch (all replicas)
        instead of each replica's slice (see :mod:`hsr_tf.train.distribute`).
    """

    workdir: str
    steps_per_epoch: int
    num_epochs: int = 1
    max_steps: Optional[int] = None
    learning_rate: float = 1e-3
    lr_decay: float = 0.9
    lr_decay_samples: Optional[int] = None
    batch_size: Optional[int] = None
    checkpoint_every: int = 500
    summary_every: int = 50
    eval_every: int = 0
    visual_every: int = 0
    max_to_keep: int = 3
    progress: bool = True
    log_every: int = 0
    optimizer: str = "adam"
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 20
    sync_batchnorm: bool = True

    def __post_init__(self):
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite: expected one of {NONFINITE_POLICIES}, found {self.on_nonfinite!r}")
        if self.log_every < 0:
            raise ValueError(f"log_every: expected >= 0, found {self.log_every}")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips: expected >= 1, found {self.max_consecutive_skips}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer: expected 'adam' or 'rmsprop', found {self.optimizer!r}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: expected >= 1, found {self.steps_per_epoch}")
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs: expected >= 1, found {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1 or None, found {self.max_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: expected >= 1, found {self.checkpoint_every}")
        if self.summary_every < 1:
            raise ValueError(f"summary_every: expected >= 1, found {self.summary_every}")
        if self.lr_decay_samples is not None:
            if self.lr_decay_samples < 1:
                raise ValueError(f"lr_decay_samples: expected >= 1 or None, found {self.lr_decay_samples}")
            if self.batch_size is None or self.batch_size < 1:
                raise ValueError(f"batch_size: expected the global batch (>= 1) with lr_decay_samples, found "
                                 f"{self.batch_size}")

    @property
    def lr_decay_steps(self) -> float:
        """Optimizer steps between two decays (fractional: the staircase floors step / this)."""
        if self.lr_decay_samples is None:
            return float(self.steps_per_epoch)
        return self.lr_decay_samples / float(self.batch_size)

    @property
    def total_steps(self) -> int:
        total = self.num_epochs * self.steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam (or RMSprop) with lr = learning_rate * lr_decay ** floor(step / lr_decay_steps) (see ``TrainConfig``)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=config.learning_rate, decay_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay, staircase=True)
    if config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate=schedule)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    # Under mixed_float16 a dynamic loss scale (hsr_tf.precision); other policies: the optimizer as is.
    return precision_lib.wrap_optimizer(optimizer)
