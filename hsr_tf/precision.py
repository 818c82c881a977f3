"""Mixed-precision policy of training and export: float32, mixed_bfloat16, mixed_float16, or auto.

Under a mixed policy the shared MLPs of the set-abstraction levels and the hidden layers of the regression
heads compute in the 16-bit type while their variables stay float32 (Keras' ``mixed_*`` dtype policies).
Everything geometric stays float32 whatever the policy: the containers that run the PointNet++ custom ops
(``SetAbstraction``, ``GlobalSetAbstraction``, ``ShapeNetwork``: the ops take float32, activations are cast
around them), the heads' last layers (regressed theta / beta / joints), the hand model layer, Procrustes and the
palm frame (inside ``HandShapeNet``, a float32 layer), the joint regression layer, the losses and the metrics.
Those layers pass ``dtype=FLOAT32_POLICY`` to Keras (see :func:`float32_layer_kwargs`).

``auto`` picks ``mixed_bfloat16`` only where the hardware computes bfloat16 natively -- a CPU with AMX-BF16
or AVX512-BF16 (``/proc/cpuinfo`` flags ``amx_bf16`` / ``avx512_bf16``), or a GPU of compute capability >= 8.0
-- and ``float32`` elsewhere (bfloat16 emulated on an AVX2 CPU runs no faster than float32; measured in
docs/training.md). It never picks float16, which needs loss scaling: ``mixed_float16`` must be asked for;
:func:`wrap_optimizer` then adds Keras' dynamic ``LossScaleOptimizer``.
"""
from __future__ import annotations

import logging
from typing import Optional

import keras

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
FLOAT32_POLICY = "float32"
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU listed in ``cpuinfo_path`` (empty set where it cannot be read)."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) compute capability of every visible GPU (empty without GPUs)."""
    import tensorflow as tf

    caps = []
    for dev in tf.config.list_physical_devices("GPU"):
        cap = tf.config.experimental.get_device_details(dev).get("compute_capability")
        if cap:
            caps.append((int(cap[0]), int(cap[1])))
    return caps


def auto_precision(flags: Optional[set] = None, gpu_caps: Optional[list] = None) -> tuple[str, str]:
    """The policy ``auto`` resolves to on this machine, with the reason.

    Args:
      flags: CPU feature flags (default: read /proc/cpuinfo).
      gpu_caps: GPU compute capabilities (default: the visible GPUs').
    Returns:
      (policy name, human-readable reason).
    """
    gpu_caps = gpu_compute_capabilities() if gpu_caps is None else list(gpu_caps)
    if gpu_caps:
        if all(cap >= (8, 0) for cap in gpu_caps):
            return "mixed_bfloat16", f"GPU compute capability {min(gpu_caps)} >= 8.0 has native bfloat16"
        return "float32", f"GPU compute capability {min(gpu_caps)} < 8.0: no native bfloat16"
    flags = cpu_flags() if flags is None else set(flags)
    native = sorted(flags & set(CPU_BF16_FLAGS))
    if native:
        return "mixed_bfloat16", f"CPU flags {native} (native bfloat16)"
    return "float32", f"CPU has none of the flags {list(CPU_BF16_FLAGS)} (bfloat16 would be emulated)"


def resolve(precision: str) -> str:
    """``precision`` with ``auto`` replaced by the policy for this machine (logged with its reason)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
    if precision != "auto":
        return precision
    chosen, reason = auto_precision()
    log.info("precision=auto -> %s (%s)", chosen, reason)
    return chosen


def set_policy(precision: str) -> str:
    """Resolve ``precision`` and make it Keras' global dtype policy; call before building the model.

    Returns:
      The policy name in force ('float32', 'mixed_bfloat16' or 'mixed_float16').
    """
    name = resolve(precision)
    keras.mixed_precision.set_global_policy(name)
    log.info("Mixed-precision policy: %s (compute %s, variables %s)", name,
             keras.mixed_precision.global_policy().compute_dtype, keras.mixed_precision.global_policy().variable_dtype)
    return name


def current_policy() -> str:
    """Name of Keras' global dtype policy."""
    return keras.mixed_precision.global_policy().name


def float32_layer_kwargs(kwargs: dict) -> dict:
    """``kwargs`` with ``dtype`` defaulting to float32: for layers that must stay float32 under any policy."""
    kwargs = dict(kwargs)
    if kwargs.get("dtype") is None:
        kwargs["dtype"] = FLOAT32_POLICY
    return kwargs


def needs_loss_scaling(policy_name: Optional[str] = None) -> bool:
    return (policy_name or current_policy()) == "mixed_float16"


def wrap_optimizer(optimizer, policy_name: Optional[str] = None):
    """Wrap ``optimizer`` in a dynamic ``keras.optimizers.LossScaleOptimizer`` under mixed_float16.

    float16 underflows small gradients (below ~6e-8) to zero; the wrapper multiplies the loss by a scale
    (2^15 at first), divides the gradients by it, skips steps whose gradients are not finite and halves the
    scale then, and doubles it after 2,000 finite steps. Other policies return ``optimizer`` unchanged.
    """
    if not needs_loss_scaling(policy_name):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


__all__ = ["PRECISIONS", "FLOAT32_POLICY", "auto_precision", "cpu_flags", "current_policy", "float32_layer_kwargs",
           "gpu_compute_capabilities", "needs_loss_scaling", "resolve", "set_policy", "wrap_optimizer"]
