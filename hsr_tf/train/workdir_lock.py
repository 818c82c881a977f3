"""One training run per workdir: an exclusive lock file that names its holder.

``<workdir>/.lock`` holds a JSON record {pid, host, started (UTC), command} of the run that owns the
workdir, and that run holds an exclusive ``fcntl.flock`` on it for its whole life. A second run fails to
take the flock and raises :class:`WorkdirLockedError` naming the holder's pid, host, start time and command.

Stale locks: the kernel drops a flock when its process dies, however it dies (SIGKILL included), so a lock
file left by a dead run is simply taken over by the next run, with a warning naming the dead holder; no
pid guessing is involved (a recycled pid cannot keep a dead run's lock). The file is not deleted on exit:
deleting it would let a third run lock a new inode while a second still waits on the old one.

Within one process the lock is reentrant: a program holds it for its whole run (before it writes anything into
the workdir) and the training loop's own acquisition inside it nests.

Shared filesystems: ``flock`` works across hosts on NFSv4 and Lustre (with flock enabled); on a filesystem
that cannot lock (``ENOLCK``/``EOPNOTSUPP``), the lock falls back to the record alone: it refuses while the
recorded process is alive on this host, or while a record from another host is younger than
``stale_after_s`` (a record of a dead run on another host cannot be checked from here; delete the file by
hand, as the message says).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_HELD: dict = {}  # realpath of a workdir -> [the WorkdirLock holding its flock in this process, nesting depth]


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


def _describe(record: dict) -> str:
    if not record:
        return "an unknown process (empty lock record)"
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}, "
            f"command: {record.get('command')}")


def _alive_here(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (TypeError, ValueError):
        return False
    return True


class WorkdirLock:
    """Exclusive lock of a workdir for the lifetime of one run (context manager, or acquire/release).

    Args:
      workdir: run directory (created if missing).
      command: text recorded for the message a second run prints (default: this process's argv).
      stale_after_s: see the module docstring (only used where flock is unavailable).
    """

    def __init__(self, workdir: str, command: Optional[str] = None, stale_after_s: float = 24 * 3600.0):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.command = command if command is not None else " ".join([sys.executable] + sys.argv)
        self.stale_after_s = float(stale_after_s)
        self._fd: Optional[int] = None
        self._nested: Optional[str] = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._nested is not None

    def _read_record(self, fd=None) -> dict:
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 1 << 16).decode("utf-8", "replace")
            else:
                with open(self.path) as f:
                    text = f.read()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _write_record(self, fd) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": self.command,
                  "time": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)

    def acquire(self) -> "WorkdirLock":
        """Take the lock or raise :class:`WorkdirLockedError` naming the holder."""
        if self.held:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        key = os.path.realpath(self.workdir)
        if key in _HELD:  # this process holds it already (the program around the training loop)
            _HELD[key][1] += 1
            self._nested = key
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                use_flock = True
            except BlockingIOError:
                holder = self._read_record(fd)
                os.close(fd)
                raise WorkdirLockedError(
                    f"{self.workdir}: expected a workdir no other run is using, found it locked by "
                    f"{_describe(holder)} ({self.path}). Wait for that run to finish, stop it, or choose "
                    "another --workdir") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                use_flock = False
            # Between our open() and flock() the previous holder may have replaced the file: lock the
            # inode that the path names now, or try again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read_record(fd)
            if not use_flock:
                self._refuse_if_recorded_holder_alive(fd, previous)
            if previous and previous.get("pid") != os.getpid():
                log.warning("%s: taking over the lock left by %s, which no longer runs", self.workdir,
                            _describe(previous))
            self._write_record(fd)
            self._fd = fd
            _HELD[key] = [self, 1]
            return self

    def _refuse_if_recorded_holder_alive(self, fd, previous: dict) -> None:
        if not previous or previous.get("pid") == os.getpid():
            return
        here = previous.get("host") == socket.gethostname()
        young = time.time() - float(previous.get("time", 0)) < self.stale_after_s
        if (here and _alive_here(previous.get("pid"))) or (not here and young):
            os.close(fd)
            raise WorkdirLockedError(
                f"{self.workdir}: expected a workdir no other run is using, found a lock record of "
                f"{_describe(previous)} ({self.path}; this filesystem has no flock, so the record is all there "
                "is). If that run is gone, delete the file")

    def release(self) -> None:
        if self._nested is not None:
            entry = _HELD.get(self._nested)
            if entry is not None:
                entry[1] -= 1
            self._nested = None
            return
        if self._fd is None:
            return
        _HELD.pop(os.path.realpath(self.workdir), None)
        try:  # an empty record = released cleanly; a record left behind = its run died (see acquire)
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
