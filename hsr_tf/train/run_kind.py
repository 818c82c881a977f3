"""Which kind of model a run directory holds, so one tool (evaluate, export, predict) can serve every run.

A run written by the RGB programs (``experiments.rgb_synth`` and the weak RGB programs built on
``experiments.rgb_common``) carries ``WORKDIR/run_kind.txt`` with one word, ``rgb``. Depth runs predate the file:
a workdir without it is a depth run (``depth``).
"""
from __future__ import annotations

import os

RUN_KIND_FILE = "run_kind.txt"
KINDS = ("depth", "rgb")


def write_run_kind(workdir: str, kind: str) -> str:
    """Write ``kind`` ('depth' or 'rgb') to ``workdir/run_kind.txt``; returns the path."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, found {kind!r}")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RUN_KIND_FILE)
    with open(path, "w") as f:
        f.write(kind + "\n")
    return path


def read_run_kind(workdir: str) -> str:
    """'rgb' or 'depth' (the default when ``workdir`` has no run_kind.txt). Raises on an unknown word."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir}: expected a run directory, not found")
    path = os.path.join(workdir, RUN_KIND_FILE)
    if not os.path.exists(path):
        return "depth"
    with open(path) as f:
        kind = f.read().strip()
    if kind not in KINDS:
        raise ValueError(f"{path}: expected one of {KINDS}, found {kind!r}")
    return kind
