"""Checkpoints that are never left half written, and the fault-injection hook used to test that.

Layout of ``<workdir>/checkpoints`` (the same as ``tf.train.CheckpointManager``'s, so
``tf.train.latest_checkpoint`` and older workdirs keep working):

  ckpt-<step>.index, ckpt-<step>.data-00000-of-00001   one checkpoint per kept step
  checkpoint                                          state file: the kept checkpoints, newest last
  .staging-ckpt-<step>/                               only while a save is in progress

A save goes through four phases, each of which may be cut by a SIGKILL without harm:

  1. write   TensorFlow writes the checkpoint under ``.staging-ckpt-<step>/`` (nothing outside it changes);
  2. publish the data files, then the ``.index`` file, are renamed into place (same filesystem: atomic
             renames); a checkpoint without its index is not a checkpoint for TensorFlow;
  3. record  the state file is replaced atomically (temporary file, fsync, ``os.replace``); only now is
             the new checkpoint the one a restart resumes from;
  4. prune   checkpoints beyond ``max_to_keep`` are deleted (after the state file no longer lists them).

On start, :meth:`AtomicCheckpointer.sweep` removes what a kill can leave: staging directories and
``ckpt-*`` files the state file does not list. The restart then resumes from the newest *recorded*
checkpoint, which is complete by construction. ``tf.train.CheckpointManager.save`` writes the final
prefix directly and records it afterwards, so it too never records a torn checkpoint, but it leaves the
torn or unrecorded files behind and offers no point to inject faults between the phases; hence this class.

Disk full (or any OSError / TensorFlow I/O error) during a save: the staging directory is removed and
:class:`CheckpointWriteError` names the directory, the step and the newest intact checkpoint; the
previous checkpoints and the state file are untouched.

Fault injection (tests only): ``HSR_TF_FAULT=checkpoint:<phase>:<action>[:<step>]`` with phase one of
``before_write, after_write, mid_publish, after_publish, after_record`` and action ``kill`` (SIGKILL of
this process) or ``enospc`` (raise ``OSError(ENOSPC)`` at that point); ``<step>`` restricts it to the
save of that step.
"""
from __future__ import annotations

import errno
import glob
import logging
import os
import re
import shutil
import signal
import socket
from typing import Optional

import tensorflow as tf

log = logging.getLogger(__name__)

STATE_FILE = "checkpoint"
STAGING_PREFIX = ".staging-"
FAULT_ENV = "HSR_TF_FAULT"
PHASES = ("before_write", "after_write", "mid_publish", "after_publish", "after_record")
_CKPT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoints are intact."""


def fault_point(area: str, phase: str, step: Optional[int] = None) -> None:
    """Test hook: act as ``HSR_TF_FAULT`` says when it names this (area, phase[, step]); otherwise nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{FAULT_ENV}: expected '<area>:<phase>:<action>[:<step>]', found {spec!r}")
    if parts[0] != area or parts[1] != phase:
        return
    if len(parts) == 4 and step is not None and int(parts[3]) != int(step):
        return
    if parts[2] == "kill":
        log.warning("%s=%s: killing this process (SIGKILL)", FAULT_ENV, spec)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif parts[2] == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV}={spec})")
    else:
        raise ValueError(f"{FAULT_ENV}: action expected 'kill' or 'enospc', found {parts[2]!r}")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems refuse fsync on a directory; the renames are still atomic
        pass


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader sees the old or the new content, never a mix."""
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique per process, also on a shared disk
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class AtomicCheckpointer:
    """Saves and finds the checkpoints of one run (see the module docstring for the guarantees).

    Args:
      checkpoint: the ``tf.train.Checkpoint`` to save / restore.
      directory: ``<workdir>/checkpoints``.
      max_to_keep: newest checkpoints kept on disk (>= 1).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep: expected >= 1, found {max_to_keep}")
        self.checkpoint = checkpoint
        self.directory = directory
        self.max_to_keep = int(max_to_keep)

    # ------------------------------------------------------------------ state
    def recorded(self) -> list[str]:
        """Prefixes listed in the state file, oldest first (absolute paths)."""
        if not os.path.exists(os.path.join(self.directory, STATE_FILE)):
            return []
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
        # get_checkpoint_state already joins relative entries with the directory it was given (itself possibly
        # relative to the working directory), so joining again would double a relative workdir.
        return [os.path.abspath(p) for p in paths if p]

    @property
    def latest_checkpoint(self) -> Optional[str]:
        """The newest recorded checkpoint, or None. Raises if the state file names a checkpoint that is gone."""
        paths = self.recorded()
        if not paths:
            return None
        latest = paths[-1]
        if not os.path.exists(latest + ".index"):
            raise FileNotFoundError(f"{os.path.join(self.directory, STATE_FILE)}: names {latest} as the newest "
                                    f"checkpoint, but {latest}.index does not exist (files removed by hand?)")
        return latest

    def _write_state(self, paths: list[str]) -> None:
        names = [os.path.relpath(p, self.directory) for p in paths]
        lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
        atomic_write_text(os.path.join(self.directory, STATE_FILE), "\n".join(lines) + "\n")

    # ------------------------------------------------------------------ save
    def save(self, step: int) -> str:
        """Write ``ckpt-<step>`` through the four phases; returns its prefix.

        Raises:
          CheckpointWriteError when the write fails (disk full, I/O error), after removing the staging
          directory; earlier checkpoints and the state file are unchanged.
        """
        os.makedirs(self.directory, exist_ok=True)
        name = f"ckpt-{int(step)}"
        staging = os.path.join(self.directory, STAGING_PREFIX + name)
        final = os.path.join(self.directory, name)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            fault_point("checkpoint", "before_write", step)
            os.makedirs(staging)
            # write() skips the save counter that save() keeps; keep it, so old and new checkpoints hold the
            # same objects (restores assert that every object is matched).
            self.checkpoint.save_counter.assign_add(1)
            self.checkpoint.write(os.path.join(staging, name))
            files = sorted(os.listdir(staging))
            for fname in files:
                _fsync_file(os.path.join(staging, fname))
            fault_point("checkpoint", "after_write", step)
            index = name + ".index"
            if index not in files:
                raise OSError(errno.EIO, f"{staging}: TensorFlow wrote no {index} (found {files})")
            data = [f for f in files if f != index]
            for i, fname in enumerate(data):  # the index last: its presence marks the checkpoint complete
                os.replace(os.path.join(staging, fname), os.path.join(self.directory, fname))
                if i == 0:
                    fault_point("checkpoint", "mid_publish", step)
            os.replace(os.path.join(staging, index), os.path.join(self.directory, index))
            _fsync_dir(self.directory)
            fault_point("checkpoint", "after_publish", step)
            kept = [p for p in self.recorded() if p != final] + [final]
            self._write_state(kept[-self.max_to_keep:])
            fault_point("checkpoint", "after_record", step)
        except (OSError, tf.errors.OpError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                intact = self.latest_checkpoint
            except FileNotFoundError:
                intact = None
            raise CheckpointWriteError(
                getattr(e, "errno", None) or errno.EIO,
                f"{self.directory}: writing checkpoint {name} failed ({e}). The previous checkpoints are intact "
                f"(newest: {intact or 'none'}); free space or fix the directory, then rerun the same command "
                f"to resume") from e
        shutil.rmtree(staging, ignore_errors=True)
        self._prune(kept[:-self.max_to_keep])
        return final

    def _prune(self, dropped: list[str]) -> None:
        for prefix in dropped:
            for path in glob.glob(glob.escape(prefix) + ".*"):
                if _CKPT_FILE.match(os.path.basename(path)):
                    os.remove(path)

    # ------------------------------------------------------------------ recovery
    def sweep(self) -> list[str]:
        """Remove staging directories and ``ckpt-*`` files the state file does not list (what a kill leaves).

        Returns:
          the removed paths (logged).
        """
        if not os.path.isdir(self.directory):
            return []
        keep = {os.path.basename(p) for p in self.recorded()}
        removed = []
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            match = _CKPT_FILE.match(entry)
            if entry.startswith(STAGING_PREFIX) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif match and f"ckpt-{match.group(1)}" not in keep:
                os.remove(path)
                removed.append(path)
            elif entry.startswith(STATE_FILE + ".tmp-"):
                os.remove(path)
                removed.append(path)
        if removed:
            log.warning("%s: removed %d files of interrupted checkpoint writes: %s", self.directory, len(removed),
                        [os.path.basename(p) for p in removed])
        return removed
