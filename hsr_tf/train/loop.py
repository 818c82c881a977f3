"""Custom training loop: tf.function step, Adam with staircase decay per samples seen, resumable checkpoints.

Resume contract (tested in tests/test_train_resume.py): the training data of epoch ``e`` is
``train_dataset_fn(e)``, a tf.data pipeline that must be a deterministic function of
(seed, e) -- the same batches in the same order every time it is built. The loop keeps the
global step in the checkpoint; on restart it restores model, optimizer (moments, iteration
count, hence the learning rate) and step from the newest checkpoint, rebuilds the dataset of
epoch ``step // steps_per_epoch`` and skips its first ``step % steps_per_epoch`` batches, so
an interrupted run continues with exactly the batches an uninterrupted run would have seen.

We chose this over checkpointing the tf.data iterator: an iterator checkpoint stores the
whole shuffle buffer (1024 x 3 floats per buffered frame) and does not work through
``py_function``/generator stages (h5py readers), whereas (seed, epoch) determinism costs
only the re-read of the skipped batches of one epoch.

Workdir layout: ``checkpoints/`` (:mod:`hsr_tf.train.checkpoints`: written atomically, kill-safe),
``train/`` and ``eval/`` (TensorBoard event files of the training and held-out scalars; the hparams at the
workdir itself, so ``tensorboard --logdir runs`` lists ``<run>/train`` and ``<run>/eval`` per workdir),
``flags.txt``, ``command.txt``, ``model_config.json``, ``.lock`` (:mod:`hsr_tf.train.workdir_lock`: a second
run on the same workdir refuses to start).

Distribution (:mod:`hsr_tf.train.distribute`): the Trainer takes a ``tf.distribute`` strategy; each global
batch of ``train_dataset_fn`` is split over the replicas, so the data order and the resume contract above do
not depend on the number of replicas. Only the chief writes checkpoints, summaries and workdir files.

Faults: a non-finite loss (or gradient) stops the run before the update is applied, with a message naming
the step and the frames of the batch, so no checkpoint ever holds the poisoned weights; with
``on_nonfinite="skip"`` the batch is skipped instead and counted (``faults/nonfinite_skipped``).

Legend: B batch, N points (1024), V vertices (1305), J joints.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Mapping, Optional

import numpy as np
import tensorflow as tf
import keras

from hsr_tf.train import checkpoints as checkpoints_lib
from hsr_tf.train import distribute as distribute_lib
from hsr_tf.train import progress as progress_lib
from hsr_tf.train import step as step_lib
from hsr_tf.train import summaries as summaries_lib
from hsr_tf.train import workdir_lock
# Kept importable from here (programs use loop.TrainConfig, loop.load_model_from_workdir, ...).
from hsr_tf.train.config import NONFINITE_POLICIES, TrainConfig, make_optimizer  # noqa: F401
from hsr_tf.train.model_io import (CHECKPOINT_SUBDIR, MODEL_CONFIG_FILE, load_model_from_workdir,  # noqa: F401
                                   model_checkpoint_objects, save_model_config)

log = logging.getLogger(__name__)

TRAIN_SUMMARY_SUBDIR = "train"  # TensorBoard run <workdir>/train
EVAL_SUMMARY_SUBDIR = "eval"  # TensorBoard run <workdir>/eval (beside the evaluation reports)
class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient is NaN/Inf; no update was applied from the batch."""


model_input = step_lib.model_input  # kept here for callers of loop.model_input


class Trainer:
    """Runs (and resumes) the optimisation of a Keras model with a custom loss.

    Args:
      model: Keras model called as ``model(batch[input_key], training=...)`` returning a dict. Under a
        strategy other than the default, create it inside ``strategy.scope()``.
      loss_fn: ``loss_fn(batch, outputs, epoch) -> (total scalar, {term name: scalar})``, the mean over the
        batch it is given (a replica's slice under a strategy); ``epoch`` is an int32 scalar tensor (0-based)
        so schedules inside the loss do not retrace.
      train_dataset_fn: ``epoch -> tf.data.Dataset`` of global batch dicts; deterministic in epoch (see
        module docstring). It is cut to ``steps_per_epoch`` batches.
      config: :class:`TrainConfig`.
      eval_fn: optional ``(model, step) -> {metric name: float}`` run every ``eval_every`` steps and
        at the end (chief only); its results go to TensorBoard ``eval`` and are returned by :meth:`train`.
      visual_fn: optional ``(model, step, writer) -> None`` writing mesh/image summaries (chief only).
      run_info: optional {"flags": text, "command": text, "hparams": {name: value}} written to
        the workdir (flags.txt, command.txt) and TensorBoard (text, hparams).
      input_key: key of the model input in the batch dict, or a tuple of keys (the model gets a dict).
      variables_fn: optional ``model -> list of variables`` trained (e.g. one sub-network per phase of a
        schedule); default ``model.trainable_variables``.
      seed: seeds Python/NumPy/TF global generators (model initialisation).
      strategy: a ``tf.distribute`` strategy (:func:`hsr_tf.train.distribute.make_strategy`); default the
        current one (TensorFlow's default strategy: one device).
    """

    def __init__(self, model: keras.Model, loss_fn: Callable, train_dataset_fn: Callable[[int], tf.data.Dataset],
                 config: TrainConfig, eval_fn: Optional[Callable] = None, visual_fn: Optional[Callable] = None,
                 run_info: Optional[Mapping] = None, input_key="points", seed: int = 0,
                 variables_fn: Optional[Callable] = None, strategy: Optional[tf.distribute.Strategy] = None):
        self.model = model
        self.loss_fn = loss_fn
        self.train_dataset_fn = train_dataset_fn
        self.config = config
        self.eval_fn = eval_fn
        self.visual_fn = visual_fn
        self.run_info = dict(run_info or {})
        self.input_key = input_key
        self.variables_fn = variables_fn
        self.seed = seed
        self.strategy = strategy or tf.distribute.get_strategy()
        self.is_chief = distribute_lib.is_chief(self.strategy)
        if config.batch_size is not None:
            distribute_lib.replica_batch_size(self.strategy, config.batch_size)  # fail before any work
        os.makedirs(config.workdir, exist_ok=True)
        with self.strategy.scope():
            self.optimizer = make_optimizer(config)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_skipped")
        self._built = False
        self._step_fns = None
        self.history: list[dict] = []  # per-step {"step", "loss", terms...}, this process only
        self.skipped_batches: list[dict] = []  # {"step", "epoch", "batch", "loss", ids...}, this process only

    # ------------------------------------------------------------------ setup
    def _build(self, example_batch):
        if self._built:
            return
        strategy = self.strategy
        with strategy.scope():
            self.model(model_input(example_batch, self.input_key), training=False)
            self.optimizer.build(self._variables())
        if strategy is not tf.distribute.get_strategy() or strategy.num_replicas_in_sync > 1:
            outside = [v.path for v in self.model.variables
                       if not strategy.extended.variable_created_in_scope(getattr(v, "value", v))]
            if outside:
                raise ValueError(f"model: expected every variable created under strategy.scope() (construct and "
                                 f"build the model inside `with strategy.scope():`), found {len(outside)} created "
                                 f"outside, e.g. {outside[:3]}")
        if self.config.sync_batchnorm and strategy.num_replicas_in_sync > 1:
            n = distribute_lib.synchronize_batchnorm(self.model)
            log.info("BatchNorm statistics over the global batch (%d layers synchronised across replicas)", n)
        self._objects = dict(model_checkpoint_objects(self.model), optimizer=self.optimizer, step=self.step)
        self.checkpoint = tf.train.Checkpoint(**self._objects, nonfinite_skipped=self.skipped)
        self.checkpoint.save_counter  # created now, on every worker alike, rather than lazily by the first save
        self.checkpointer = checkpoints_lib.AtomicCheckpointer(
            self.checkpoint, os.path.join(self.config.workdir, CHECKPOINT_SUBDIR), self.config.max_to_keep)
        self._built = True

    def restore(self) -> int:
        """Restore the newest checkpoint if any; returns the step to continue from."""
        latest = self.checkpointer.latest_checkpoint
        if latest is None:
            return 0
        names = {name for name, _ in tf.train.list_variables(latest)}
        # Checkpoints written before the skip counter existed restore without it (it stays 0).
        has_skips = any(name.startswith("nonfinite_skipped/") for name in names)
        ckpt = self.checkpoint if has_skips else tf.train.Checkpoint(**self._objects)
        ckpt.restore(latest).assert_existing_objects_matched()
        step = int(self.step.numpy())
        applied = step - int(self.skipped.numpy())
        # A loss-scaled optimizer (float16) does not count the steps it skipped for non-finite gradients.
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        iterations = int(self.optimizer.iterations.numpy())
        if iterations != applied and not (scaled and iterations <= applied):
            raise RuntimeError(f"{latest}: optimizer iterations {iterations} disagree with the stored step {step} "
                               f"minus {step - applied} skipped non-finite batches")
        log.info("Resumed from %s at step %d", latest, step)
        return step

    def _variables(self):
        return list(self.variables_fn(self.model)) if self.variables_fn is not None else \
            self.model.trainable_variables

    def _make_step_fns(self):
        return step_lib.make_step_fns(self.strategy, self.model, self.loss_fn, self.optimizer, self._variables,
                                      self.input_key)

    def _save(self, step: int) -> None:
        if self.is_chief:
            self.checkpointer.save(step)
            return
        # Every worker takes part in a save (MultiWorkerMirroredStrategy); the others' copies are thrown away.
        tmp = tempfile.mkdtemp(prefix="hsr_tf_worker_ckpt_")
        try:
            self.checkpoint.write(os.path.join(tmp, "ckpt"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_run_info(self, writer, root_writer):
        flags_text = self.run_info.get("flags")
        command = self.run_info.get("command")
        wd = self.config.workdir
        if flags_text is not None:
            path = os.path.join(wd, "flags.txt")
            if os.path.exists(path):
                with open(path) as f:
                    old = f.read()
                if old != flags_text:
                    backup = os.path.join(wd, f"flags.{time.strftime('%Y%m%d-%H%M%S')}.txt")
                    os.replace(path, backup)
                    log.warning("Flags differ from the previous run in %s; old flags kept in %s", wd, backup)
            with open(path, "w") as f:
                f.write(flags_text)
        if command is not None:
            with open(os.path.join(wd, "command.txt"), "a") as f:
                f.write(command + "\n")
        with writer.as_default(step=int(self.step.numpy())):
            if flags_text is not None:
                tf.summary.text("run/flags", summaries_lib.as_markdown_code(flags_text))
            if command is not None:
                tf.summary.text("run/command", summaries_lib.as_markdown_code(command))
        if self.run_info.get("hparams"):
            # At the TensorBoard root of the run so the plugin finds the metrics in the "eval" sub-run.
            with root_writer.as_default(step=int(self.step.numpy())):
                summaries_lib.write_hparams(self.run_info["hparams"], self.run_info.get("hparam_metrics", ()))
            root_writer.flush()

    # ------------------------------------------------------------------ main loop
    def train(self, stop_after: Optional[int] = None) -> dict:
        """Train until ``config.total_steps`` (resuming if checkpoints exist), holding the workdir lock.

        Args:
          stop_after: test hook simulating a kill: return after this many steps of THIS process
            without the final checkpoint (only periodic checkpoints survive, as after SIGKILL).
        Returns:
          {"step": final step, "eval": last evaluation metrics or {}, "interrupted": bool,
           "skipped": non-finite batches skipped in total}.
        Raises:
          WorkdirLockedError when another live run holds the workdir; NonFiniteLossError (on_nonfinite="stop");
          CheckpointWriteError when a checkpoint cannot be written (previous ones intact).
        """
        lock = None
        if self.is_chief:
            lock = workdir_lock.WorkdirLock(self.config.workdir, command=self.run_info.get("command")).acquire()
        try:
            return self._train(stop_after)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, stop_after: Optional[int]) -> dict:
        cfg = self.config
        keras.utils.set_random_seed(self.seed)
        spe = cfg.steps_per_epoch
        first = next(iter(self.train_dataset_fn(0).take(1)), None)
        if first is None:
            raise ValueError("train_dataset_fn(0): expected at least one batch, found an empty dataset")
        self._build(first)
        if self.is_chief:
            self.checkpointer.sweep()
        start = self.restore()
        if self._step_fns is None:
            self._step_fns = self._make_step_fns()
        compute, apply = self._step_fns
        wd = cfg.workdir
        if self.is_chief:
            train_writer = tf.summary.create_file_writer(os.path.join(wd, TRAIN_SUMMARY_SUBDIR))
            eval_writer = tf.summary.create_file_writer(os.path.join(wd, EVAL_SUMMARY_SUBDIR))
            self._write_run_info(train_writer, tf.summary.create_file_writer(wd))
        else:
            train_writer = eval_writer = tf.summary.create_noop_writer()
        first_key = self.input_key if isinstance(self.input_key, str) else self.input_key[0]
        log.info("%s", distribute_lib.describe(self.strategy, int(first[first_key].shape[0])))
        total = cfg.total_steps
        last_eval: dict = {}
        if start >= total:
            log.info("Nothing to train: step %d >= total %d", start, total)
            if self.eval_fn is not None and self.is_chief:
                last_eval = self._evaluate(eval_writer)
            return {"step": start, "eval": last_eval, "interrupted": False, "skipped": int(self.skipped.numpy())}

        bar = plog = None
        if cfg.progress and self.is_chief:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train")
        elif self.is_chief:
            plog = progress_lib.ProgressLog(log, total, start, cfg.log_every or cfg.summary_every)
        self._plog = plog
        step = start
        done_here = 0
        consecutive_skips = 0
        acc: dict[str, list] = {}
        t_interval = time.perf_counter()
        n_interval = 0
        samples_interval = 0
        interrupted = False
        try:
            epoch = step // spe
            while step < total and not interrupted:
                skip = step - epoch * spe
                ds = self.train_dataset_fn(epoch).take(spe).skip(skip)
                epoch_t = tf.constant(epoch, tf.int32)
                for index, batch in enumerate(ds, start=skip):
                    loss, terms, grads, finite = compute(distribute_lib.distribute_batch(self.strategy, batch), epoch_t)
                    loss_v = float(loss.numpy())
                    ok = bool(finite.numpy()) and np.isfinite(loss_v)
                    if ok:
                        apply(grads)
                        consecutive_skips = 0
                    else:
                        message = step_lib.nonfinite_message(step + 1, epoch, index, batch, loss_v, terms)
                        if cfg.on_nonfinite == "stop":
                            raise NonFiniteLossError(
                                f"{message}. No update was applied from this batch and no checkpoint holds it "
                                f"(newest checkpoint: {self.checkpointer.latest_checkpoint or 'none'}). "
                                "on_nonfinite='skip' (--on_nonfinite=skip) skips such batches and counts them")
                        consecutive_skips += 1
                        self.skipped.assign_add(1)
                        self.skipped_batches.append({"step": step + 1, "epoch": epoch, "batch": index,
                                                     "loss": loss_v, "message": message})
                        log.warning("Skipped a non-finite batch (%d so far): %s", int(self.skipped.numpy()), message)
                        if consecutive_skips >= cfg.max_consecutive_skips:
                            raise NonFiniteLossError(
                                f"{consecutive_skips} non-finite batches in a row (max_consecutive_skips); the "
                                f"weights hold no update from them, so the data or the loss is at fault. Last: "
                                f"{message}")
                    step += 1
                    done_here += 1
                    self.step.assign(step)
                    n_interval += 1
                    samples_interval += int(batch[first_key].shape[0])
                    if ok:
                        rec = {"step": step, "loss": loss_v, **{k: float(v) for k, v in terms.items()}}
                        self.history.append(rec)
                        for k, v in rec.items():
                            if k != "step":
                                acc.setdefault(k, []).append(v)
                    lr = float(self.optimizer.learning_rate.numpy())
                    if plog is not None:
                        plog.step(step, epoch, loss_v, int(batch[first_key].shape[0]), lr)
                    if step % cfg.summary_every == 0 or step == total:
                        dt = max(time.perf_counter() - t_interval, 1e-9)
                        rate = samples_interval / dt
                        with train_writer.as_default(step=step):
                            for k, vals in acc.items():
                                tf.summary.scalar(("loss/" if k != "loss" else "") + k, float(np.mean(vals)))
                            tf.summary.scalar("optim/learning_rate", lr)
                            tf.summary.scalar("optim/epoch", float(epoch))
                            tf.summary.scalar("speed/samples_per_second", rate)
                            tf.summary.scalar("speed/seconds_per_step", dt / max(n_interval, 1))
                            if int(self.skipped.numpy()):
                                tf.summary.scalar("faults/nonfinite_skipped", float(self.skipped.numpy()))
                        train_writer.flush()
                        acc.clear()
                        t_interval, n_interval, samples_interval = time.perf_counter(), 0, 0
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss_v:.4g}", samples_s=f"{rate:.1f}", epoch=epoch)
                    if bar is not None:
                        bar.update(1)
                    if step % cfg.checkpoint_every == 0:
                        self._save(step)
                    if self.is_chief and self.visual_fn is not None and cfg.visual_every and \
                            step % cfg.visual_every == 0:
                        self.visual_fn(self.model, step, train_writer)
                        train_writer.flush()
                    if self.is_chief and self.eval_fn is not None and cfg.eval_every and \
                            step % cfg.eval_every == 0 and step < total:
                        last_eval = self._evaluate(eval_writer)
                    if stop_after is not None and done_here >= stop_after:
                        interrupted = True
                        break
                    if step >= total:
                        break
                else:
                    # The epoch's dataset ran out before steps_per_epoch batches.
                    if step < (epoch + 1) * spe:
                        raise ValueError(f"train_dataset_fn({epoch}): expected {spe} batches per epoch "
                                         f"(steps_per_epoch), the dataset ended after {step - epoch * spe}")
                epoch += 1
        finally:
            if bar is not None:
                bar.close()
        skipped = int(self.skipped.numpy())
        if interrupted:
            train_writer.flush()
            return {"step": step, "eval": last_eval, "interrupted": True, "skipped": skipped}
        if step % cfg.checkpoint_every != 0:  # the same decision on every worker (all must take part)
            self._save(step)
        if self.is_chief and self.visual_fn is not None and cfg.visual_every and step % cfg.visual_every != 0:
            self.visual_fn(self.model, step, train_writer)
        if self.is_chief and self.eval_fn is not None:
            last_eval = self._evaluate(eval_writer)
        train_writer.flush()
        return {"step": step, "eval": last_eval, "interrupted": False, "skipped": skipped}

    def _evaluate(self, writer) -> dict:
        step = int(self.step.numpy())
        t0 = time.perf_counter()
        metrics = self.eval_fn(self.model, step)
        seconds = time.perf_counter() - t0
        with writer.as_default(step=step):
            for k, v in metrics.items():
                if np.ndim(v) == 0:
                    tf.summary.scalar(f"metrics/{k}", float(v))
            tf.summary.scalar("speed/eval_seconds", seconds)
        writer.flush()
        plog = getattr(self, "_plog", None)
        if plog is not None:
            plog.evaluation(step, metrics, seconds)
        else:
            log.info("step %d held-out: %s", step, progress_lib.format_metrics(metrics))
        return metrics
