"""Argument checks shared by both backends of hsr_tf.ops.

Static problems (known when the op is called or traced) raise :class:`OpArgumentError`, which is both a
``tf.errors.InvalidArgumentError`` (what the compiled kernels raise at run time) and a ``ValueError``
(the project's convention for shape errors found at trace time). Problems only visible at run time
(dynamic shapes, data-dependent checks) are raised inside the op as ``InvalidArgumentError``.
"""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf


class OpArgumentError(tf.errors.InvalidArgumentError, ValueError):
    """Invalid argument to an hsr_tf op, detected before running it."""

    def __init__(self, message: str):
        tf.errors.InvalidArgumentError.__init__(self, None, None, message)

    def __reduce__(self):
        return (type(self), (self.message,))


def as_cloud(x, op: str, name: str) -> tf.Tensor:
    """Converts to float32 and checks a [B,N,3] shape (static parts only)."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise OpArgumentError(f"{op}: {name} must be a float tensor, found dtype {x.dtype.name}")
    x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and (x.shape.rank != 3 or (x.shape[2] is not None and x.shape[2] != 3)):
        raise OpArgumentError(f"{op}: {name} must have shape [B,N,3], found {x.shape}")
    if x.shape.rank == 3 and x.shape[1] == 0:
        raise OpArgumentError(f"{op}: {name} is an empty cloud (N = 0); expected at least one point")
    return x


def same_batch(a: tf.Tensor, b: tf.Tensor, op: str, an: str, bn: str) -> None:
    if a.shape.rank and b.shape.rank and a.shape[0] is not None and b.shape[0] is not None \
            and a.shape[0] != b.shape[0]:
        raise OpArgumentError(f"{op}: batch size mismatch, {an} has {a.shape[0]}, {bn} has {b.shape[0]}")


def as_int(v, op: str, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        raise OpArgumentError(f"{op}: {name} must be a Python int, found {v!r}")
    return int(v)


def in_range(v: int, low: int, high, op: str, name: str) -> None:
    """low <= v (<= high when high, the static N, is known)."""
    if v < low or (high is not None and v > high):
        hi = "N" if high is None else f"N] = [{low}, {high}"
        raise OpArgumentError(f"{op}: {name} must be in [{low}, {hi}], found {v}")


def as_radius(r, op: str) -> float:
    if isinstance(r, bool) or not isinstance(r, (numbers.Real, np.floating, np.integer)):
        raise OpArgumentError(f"{op}: radius must be a Python float, found {r!r}")
    r32 = np.float32(r)
    if not np.isfinite(r32) or r32 <= 0:
        raise OpArgumentError(f"{op}: radius must be finite and > 0, found {r}")
    return float(r32)


def _as_rank3(x, op: str, name: str, integer: bool, shape: str) -> tf.Tensor:
    """``x`` as an int32 (``integer``) or float32 tensor of rank 3 (static rank only)."""
    x = tf.convert_to_tensor(x)
    if not (x.dtype.is_integer if integer else x.dtype.is_floating):
        kind = "an integer" if integer else "a float"
        raise OpArgumentError(f"{op}: {name} must be {kind} tensor, found dtype {x.dtype.name}")
    x = tf.cast(x, tf.int32 if integer else tf.float32)
    if x.shape.rank is not None and x.shape.rank != 3:
        raise OpArgumentError(f"{op}: {name} must have shape {shape}, found {x.shape}")
    return x


def as_indices(idx, op: str) -> tf.Tensor:
    return _as_rank3(idx, op, "indices", integer=True, shape="[B,M,S]")


def as_features(f, op: str) -> tf.Tensor:
    return _as_rank3(f, op, "features", integer=False, shape="[B,N,C]")
