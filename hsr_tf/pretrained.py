"""Pretrained models shipped in the package (hsr_tf/assets/pretrained/<name>/).

    model = hsr_tf.pretrained.load("depth")   # HandShapeNet with trained weights, normalised input frame

Each directory holds ``model_config.json`` (the Keras serialisation written by training), one checkpoint
(``ckpt-<step>.index`` / ``.data-*``) and ``reference.npz`` (a fixed input and the outputs the shipped weights
give on it, checked by tests/test_pretrained.py). What each model was trained on, for how long, and the
held-out errors it reaches are in docs/model_card_<name>.md.

Legend: B batch, N points (1024), V vertices (1305), J joints (21).
"""
from __future__ import annotations

import glob
import os

ASSET_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained")
NAMES = ("depth",)


def asset_dir(name: str) -> str:
    """Directory of the shipped model ``name``; raises naming what is missing."""
    if name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, found {name!r}")
    path = os.path.join(ASSET_ROOT, name)
    if not os.path.isfile(os.path.join(path, "model_config.json")):
        raise FileNotFoundError(f"{path}: expected model_config.json of the shipped '{name}' model, found none")
    return path


def checkpoint_prefix(name: str) -> str:
    """Prefix of the shipped checkpoint (``.../ckpt-<step>``)."""
    found = sorted(glob.glob(os.path.join(asset_dir(name), "ckpt-*.index")))
    if len(found) != 1:
        raise FileNotFoundError(f"{asset_dir(name)}: expected exactly one ckpt-*.index, found {len(found)}")
    return found[0][:-len(".index")]


def load(name: str = "depth"):
    """The shipped model with its trained weights (Keras model; call it on normalised points [B, N, 3]).

    Returns:
      The model (``HandShapeNet`` for 'depth'); its input and outputs follow ``hsr_tf.models.hand_shape_net``.
    """
    from hsr_tf.train import loop

    model, _ = loop.load_model_from_workdir(asset_dir(name), checkpoint_prefix(name))
    return model


__all__ = ["ASSET_ROOT", "NAMES", "asset_dir", "checkpoint_prefix", "load"]
