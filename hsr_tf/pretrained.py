"""Pretrained models shipped in the package (hsr_tf/assets/pretrained/<name>/).

    model = hsr_tf.pretrained.load("depth")   # HandShapeNet with trained weights, normalised input frame

Each directory, written by ``python -m experiments.package_pretrained``, holds:

  model_config.json   the Keras serialisation written by training (class + config, no weights)
  ckpt-<step>.*       ONE checkpoint of the model's variables only (no optimizer slots), restored by ``load``;
                      a full training checkpoint (with slots and step) loads as well
  data_info.json      what the exported SavedModel needs from the training shards: normalisation rule, points per
                      cloud, joint names, camera, dataset name
  training_data.json  the data_prep.synth manifest of the training set (its test split = the held-out subjects)
  reference.npz       a fixed input (normalised points [B, N, 3], with their centre [B, 3] and scale [B] in mm) and
                      the outputs the shipped weights give on it, checked by tests/test_pretrained.py
  card.json           training facts and held-out errors quoted by docs/model_card_<name>.md

Legend: B batch, N points (1024), V vertices (1305), J joints (21).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

ASSET_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained")
NAMES = ("depth",)
REFERENCE_KEYS = ("vertices", "joints", "dataset_joints")


def asset_dir(name: str, root: Optional[str] = None) -> str:
    """Directory of the shipped model ``name`` (under ``root``, default the package's); raises naming what is missing."""
    if root is None and name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, found {name!r}")
    path = os.path.join(root or ASSET_ROOT, name)
    if not os.path.isfile(os.path.join(path, "model_config.json")):
        raise FileNotFoundError(f"{path}: expected model_config.json of the shipped '{name}' model, found none")
    return path


def checkpoint_prefix(name: str, root: Optional[str] = None) -> str:
    """Prefix of the shipped checkpoint (``.../ckpt-<step>``)."""
    found = sorted(glob.glob(os.path.join(asset_dir(name, root), "ckpt-*.index")))
    if len(found) != 1:
        raise FileNotFoundError(f"{asset_dir(name, root)}: expected exactly one ckpt-*.index, found {len(found)}")
    return found[0][:-len(".index")]


def read_json(name: str, file: str, root: Optional[str] = None) -> dict:
    """One of the JSON files of the shipped model ``name`` (data_info.json, training_data.json, card.json)."""
    path = os.path.join(asset_dir(name, root), file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected {file} of the shipped '{name}' model (written by "
                                "experiments.package_pretrained), found no file")
    with open(path) as f:
        return json.load(f)


def data_info(name: str, root: Optional[str] = None) -> dict:
    """The training shards' facts an export needs, as ``hsr_tf.train.pipeline.read_data_info`` returns them."""
    return read_json(name, "data_info.json", root)


def load(name: str = "depth", root: Optional[str] = None):
    """The shipped model with its trained weights (Keras model; call it on normalised points [B, N, 3]).

    Returns:
      The model (``HandShapeNet`` for 'depth'); its input and outputs follow ``hsr_tf.models.hand_shape_net``.
    """
    from hsr_tf.train import loop

    model, _ = loop.load_model_from_workdir(asset_dir(name, root), checkpoint_prefix(name, root))
    return model


def write_weights(model, prefix: str) -> str:
    """Write ``model``'s variables only (no optimizer, no step) as a checkpoint at ``prefix``; returns the prefix.

    The objects are those of a training checkpoint (``loop.model_checkpoint_objects``), so ``load`` restores it
    exactly as it restores a training checkpoint.
    """
    import tensorflow as tf

    from hsr_tf.train import loop

    return tf.train.Checkpoint(**loop.model_checkpoint_objects(model)).write(prefix)


__all__ = ["ASSET_ROOT", "NAMES", "REFERENCE_KEYS", "asset_dir", "checkpoint_prefix", "data_info", "load",
           "read_json", "write_weights"]
