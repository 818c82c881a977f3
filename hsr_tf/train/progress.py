"""Plain-text progress of a training run: the log lines written when there is no progress bar.

Background and cluster runs (``--noprogress``) log one line every ``log_every`` steps::

  step 120/7100 (epoch 3): loss 0.1234, 12.3 samples/s, lr 9.00e-04, ETA 1h52m

and one line per held-out evaluation::

  step 1000 held-out: mean_joint_error_mm 23.41, shape_error_mm 12.10

``samples/s`` is over the steps since the previous line (global batch, all replicas); the ETA divides the
remaining steps by the step rate of this process since its second step (the first includes tracing).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Mapping, Optional

import numpy as np


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h07m', '2d04h' (None/inf/NaN -> '?')."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_metrics(metrics: Mapping) -> str:
    """'name value, ...' for the scalar entries (4 significant digits), in the mapping's order."""
    parts = []
    for k, v in metrics.items():
        if np.ndim(v) == 0:
            try:
                parts.append(f"{k} {float(v):.4g}")
            except (TypeError, ValueError):
                parts.append(f"{k} {v}")
    return ", ".join(parts) if parts else "(no scalar metrics)"


class ProgressLog:
    """Emits the step lines of one training process.

    Args:
      logger: where the lines go (INFO).
      total_steps: the run's last step. start_step: the step this process resumed from.
      every: steps between lines (>= 1).
    """

    def __init__(self, logger: logging.Logger, total_steps: int, start_step: int, every: int):
        if every < 1:
            raise ValueError(f"log_every: expected >= 1, found {every}")
        self.logger = logger
        self.total = int(total_steps)
        self.every = int(every)
        self._t_line = time.perf_counter()
        self._samples = 0
        self._t_first: Optional[float] = None  # end of this process's first step
        self._step_first: Optional[int] = None
        self.start = int(start_step)
        self.lines: list[str] = []

    def eta_seconds(self, step: int) -> float:
        if self._t_first is None or step <= self._step_first:
            return float("nan")
        rate = (step - self._step_first) / max(time.perf_counter() - self._t_first, 1e-9)
        return (self.total - step) / rate

    def step(self, step: int, epoch: int, loss: float, samples: int, learning_rate: float) -> Optional[str]:
        """Record one finished step; returns (and logs) the line when one is due."""
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first, self._step_first = now, step
        self._samples += int(samples)
        if step % self.every and step != self.total:
            return None
        rate = self._samples / max(now - self._t_line, 1e-9)
        line = (f"step {step}/{self.total} (epoch {epoch}): loss {loss:.4g}, {rate:.3g} samples/s, "
                f"lr {learning_rate:.3g}, ETA {format_duration(self.eta_seconds(step))}")
        self._t_line, self._samples = now, 0
        self.logger.info("%s", line)
        self.lines.append(line)
        return line

    def evaluation(self, step: int, metrics: Mapping, seconds: float) -> str:
        line = f"step {step} held-out: {format_metrics(metrics)} ({seconds:.1f} s)"
        self.logger.info("%s", line)
        self.lines.append(line)
        return line
