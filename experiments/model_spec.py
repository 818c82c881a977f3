"""Models named on the command line: ``pretrained:NAME`` (a package shipped in hsr_tf/assets/pretrained) or a run
WORKDIR; their kind (depth or RGB), their training manifest, and ``--init_from`` for the depth programs.

Used by the depth and RGB programs (experiments.common.run, rgb_run, real_common, export, reconstruct); it imports
no other program module (experiments.common re-exports :func:`workdir_flag`).
"""
from __future__ import annotations

import contextlib
import os

from absl import logging


def workdir_flag(workdir: str, name: str):
    """The value of ``--name`` recorded in ``workdir/flags.txt`` (string), or None when absent."""
    path = os.path.join(workdir, "flags.txt")
    if not os.path.exists(path):
        return None
    value = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(f"--{name}="):
                value = line.split("=", 1)[1]
    return value


PRETRAINED_PREFIX = "pretrained:"


def load_model_spec(spec: str, num_points: int = 1024):
    """The trained model named by ``spec``: ``pretrained:NAME`` (shipped weights) or a run WORKDIR (newest checkpoint).

    Returns:
      (Keras model with restored weights, checkpoint prefix it came from).
    """
    if spec.startswith(PRETRAINED_PREFIX):
        from hsr_tf import pretrained

        name = spec[len(PRETRAINED_PREFIX):]
        return pretrained.load(name), pretrained.checkpoint_prefix(name)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"{spec}: expected a run WORKDIR (model_config.json, checkpoints/) or "
                                f"'{PRETRAINED_PREFIX}NAME', found no directory")
    from hsr_tf.train import loop

    return loop.load_model_from_workdir(spec, example_points_shape=(1, num_points, 3))


def spec_kind(spec: str) -> str:
    """'depth' or 'rgb': the kind of model ``spec`` names (``pretrained:NAME``: the package's run_kind.txt, checked
    against the name; a WORKDIR: its run_kind.txt, ``hsr_tf.train.run_kind``)."""
    if spec.startswith(PRETRAINED_PREFIX):
        from hsr_tf import pretrained

        return pretrained.check_kind(spec[len(PRETRAINED_PREFIX):])
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"{spec}: expected a run WORKDIR (model_config.json, checkpoints/) or "
                                f"'{PRETRAINED_PREFIX}NAME', found no directory")
    from hsr_tf.train import run_kind

    return run_kind.read_run_kind(spec)


def training_manifest_path(spec: str) -> str:
    """The data_prep.synth manifest of the set the model named by ``spec`` was trained on (the shipped model's
    ``training_data.json``, or ``manifest.json`` in the run's recorded --data_dir)."""
    if spec.startswith(PRETRAINED_PREFIX):
        from hsr_tf import pretrained

        return os.path.join(pretrained.asset_dir(spec[len(PRETRAINED_PREFIX):]), "training_data.json")
    data_dir = workdir_flag(spec, "data_dir")
    if data_dir is None:
        raise FileNotFoundError(f"{os.path.join(spec, 'flags.txt')}: expected the run's --data_dir, found none")
    return os.path.join(data_dir, "manifest.json")


def init_from(model, spec: str, num_points: int, scope=None) -> int:
    """Copy the weights of the model named by ``spec`` (see :func:`load_model_spec`) into ``model``.

    Variables are matched by path and shape. The hand model's constants (``model.hand_model_layer``) are not
    copied: they come from --hand_model; a warning says when the source was trained with other values.
    ``scope``: the distribution strategy's scope in which ``model`` builds its variables (default none).
    Returns:
      the number of variables copied (none raises: the two models share no variable).
    """
    import numpy as np
    import tensorflow as tf

    if spec_kind(spec) != "depth":
        raise ValueError(f"--init_from={spec}: expected a depth model for this depth program, found an RGB model "
                         "(fine-tune it with experiments.rgb_synth --init_from)")
    src, ckpt = load_model_spec(spec, num_points)
    with scope or contextlib.nullcontext():  # the model's variables are created here
        model(tf.zeros((1, num_points, 3)), training=False)
    by_path = {v.path: v for v in src.variables}
    hand_layer = getattr(model, "hand_model_layer", None)
    constants = {id(v) for v in hand_layer.variables} if hand_layer is not None else set()
    copied, skipped, other_hand_model = 0, [], []
    for v in model.variables:
        s = by_path.get(v.path)
        fits = s is not None and tuple(s.shape) == tuple(v.shape)
        if id(v) in constants:
            if not fits or not np.allclose(s.numpy(), v.numpy(), rtol=1e-5, atol=1e-5):
                other_hand_model.append(v.path)
            continue
        if fits:
            v.assign(s)
            copied += 1
        else:
            skipped.append(v.path)
    if copied == 0:
        raise ValueError(f"--init_from={spec}: expected variables matching this model, found none ({ckpt})")
    if other_hand_model:
        logging.warning("--init_from=%s was trained with another hand model (%s differ from --hand_model's); its "
                        "network weights are used with this run's hand model", spec, other_hand_model[:4])
    logging.info("Initialised %d variables from %s; %d left as initialised: %s", copied, ckpt, len(skipped),
                 skipped[:8])
    return copied
