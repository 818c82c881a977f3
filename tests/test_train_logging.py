"""Training without a progress bar (--noprogress) logs a line every N steps and the held-out figures of each
evaluation; TensorBoard runs are <workdir>/train and <workdir>/eval (several workdirs side by side read as
<run>/train, <run>/eval)."""
import logging
import math
import os
import re

import numpy as np
import pytest

import _fault_toys as toys
from hsr_tf.train import progress

LINE = re.compile(r"^step (\d+)/(\d+) \(epoch (\d+)\): loss (\S+), (\S+) samples/s, lr (\S+), ETA (\S+)$")


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "hsr_tf.train.loop"]


def test_noprogress_logs_step_lines_and_evaluations(tmp_path, caplog):
    calls = []

    def eval_fn(model, step):
        # A figure computed from the weights, so the logged value can be checked against an independent one.
        value = float(sum(np.abs(w.numpy()).sum() for w in model.weights))
        calls.append((step, value))
        return {"weight_l1": value, "per_joint": np.zeros(3)}

    tr = toys.make_trainer(tmp_path / "a", 9, log_every=4, eval_every=6)
    tr.eval_fn = eval_fn
    with caplog.at_level(logging.INFO, logger="hsr_tf.train.loop"):
        tr.train()
    lines = [m for m in _messages(caplog) if LINE.match(m)]
    steps = [int(LINE.match(m).group(1)) for m in lines]
    assert steps == [4, 8, 9]  # every 4 steps and the last
    by_step = {h["step"]: h for h in tr.history}
    for m in lines:
        step, total, epoch, loss, rate, lr, eta = LINE.match(m).groups()
        step = int(step)
        assert int(total) == 9 and int(epoch) == (step - 1) // toys.STEPS_PER_EPOCH
        assert loss == f"{by_step[step]['loss']:.4g}"
        assert float(rate) > 0
        # lr = 1e-3 * 0.9 ** floor(step / steps_per_epoch) (decay per epoch of this data), logged after the step.
        assert float(lr) == pytest.approx(float(f"{1e-3 * 0.9 ** (step // toys.STEPS_PER_EPOCH):.3g}"))
        assert (eta == "0s") if step == 9 else bool(re.fullmatch(r"\d+s|\d+m\d\ds", eta)), eta
    evals = [m for m in _messages(caplog) if " held-out: " in m]
    assert [c[0] for c in calls] == [6, 9]
    assert len(evals) == 2
    for (step, value), m in zip(calls, evals):
        assert m.startswith(f"step {step} held-out: weight_l1 {value:.4g} (")  # arrays left out of the line
        assert "per_joint" not in m


def test_progress_bar_runs_log_no_step_lines(tmp_path, caplog):
    tr = toys.make_trainer(tmp_path / "b", 4, progress=True)
    with caplog.at_level(logging.INFO, logger="hsr_tf.train.loop"):
        tr.train()
    assert not [m for m in _messages(caplog) if LINE.match(m)]


def test_log_every_defaults_to_summary_every(tmp_path, caplog):
    tr = toys.make_trainer(tmp_path / "c", 5)  # summary_every=2
    with caplog.at_level(logging.INFO, logger="hsr_tf.train.loop"):
        tr.train()
    assert [int(LINE.match(m).group(1)) for m in _messages(caplog) if LINE.match(m)] == [2, 4, 5]


def test_tensorboard_runs_are_named_after_the_workdir(tmp_path):
    for name in ("run_a", "run_b"):
        toys.make_trainer(tmp_path / name, 2).train()
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    runs = set(mux.Runs())
    assert {"run_a/train", "run_b/train"} <= runs, runs
    assert not any("tb" in r.split(os.sep) for r in runs), runs
    assert "loss" in mux.GetAccumulator("run_a/train").Tags()["tensors"]


def test_durations_read_naturally():
    assert [progress.format_duration(s) for s in (0, 44.6, 60, 725, 3600 * 3 + 7 * 60, 86400 * 2 + 3600 * 4)] == \
        ["0s", "45s", "1m00s", "12m05s", "3h07m", "2d04h"]
    assert progress.format_duration(float("nan")) == "?" and progress.format_duration(math.inf) == "?"
    with pytest.raises(ValueError, match="log_every"):
        progress.ProgressLog(logging.getLogger("x"), 10, 0, 0)
