"""Pretrained models shipped in the package (hsr_tf/assets/pretrained/<name>/).

    model = hsr_tf.pretrained.load("depth")   # HandShapeNet with trained weights, normalised input frame
    model = hsr_tf.pretrained.load("rgb")     # RGBMeshNet (Ge et al.): image + camera -> mesh and joints, mm

Each directory, written by ``python -m experiments.package_pretrained``, holds:

  model_config.json   the Keras serialisation written by training (class + config, no weights)
  ckpt-<step>.*       ONE checkpoint of the model's variables only (no optimizer slots), restored by ``load``;
                      a full training checkpoint (with slots and step) loads as well
  run_kind.txt        RGB models only: 'rgb' (``hsr_tf.train.run_kind``; a directory without it holds a depth model)
  data_info.json      what an export needs from the training shards. Depth: normalisation rule, points per cloud,
                      joint names, camera, dataset name. RGB: joint names, shard and network crop sizes (px),
                      heat-map size and sigma, the background seed
  training_data.json  the data_prep.synth (depth) or data_prep.synth_rgb (RGB) manifest of the training set (its
                      test split = the held-out subjects)
  reference.npz       a fixed input and the outputs the shipped weights give on it, checked by tests/test_pretrained.py.
                      Depth: normalised points [B, N, 3] with their centre [B, 3] and scale [B] in mm; outputs
                      REFERENCE_KEYS, normalised. RGB: image uint8 [B, S, S, 3] (S = the network's input size),
                      camera [B, 4] (fx, fy, cx, cy, px of that crop), root_depth [B] and bone_scale [B] in mm;
                      outputs RGB_REFERENCE_KEYS (vertices, joints camera mm; joints_uv px of the S crop)
  card.json           training facts and held-out errors quoted by docs/model_card_<name>.md

The asset root is the package's (ASSET_ROOT) unless ``root`` is given or the environment variable
``HSR_TF_PRETRAINED_ROOT`` names another (e.g. a package written with --out_root, for programs that take
``pretrained:NAME``).

Legend: B batch, N points (1024), V vertices (1305), J joints (21), S crop side (px).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

ASSET_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained")
ROOT_ENV = "HSR_TF_PRETRAINED_ROOT"
NAMES = ("depth", "rgb")
NAME_KINDS = {"depth": "depth", "rgb": "rgb"}  # the kind of model each shipped name must hold
ARTICLED = {"depth": "a depth", "rgb": "an RGB"}  # for messages
REFERENCE_KEYS = ("vertices", "joints", "dataset_joints")
RGB_REFERENCE_INPUTS = ("image", "camera", "root_depth", "bone_scale")
RGB_REFERENCE_KEYS = ("vertices", "joints", "joints_uv")


def asset_dir(name: str, root: Optional[str] = None) -> str:
    """Directory of the shipped model ``name`` (under ``root``, default $HSR_TF_PRETRAINED_ROOT or the package's);
    raises naming what is missing."""
    root = root or os.environ.get(ROOT_ENV) or None
    if root is None and name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, found {name!r}")
    path = os.path.join(root or ASSET_ROOT, name)
    if not os.path.isfile(os.path.join(path, "model_config.json")):
        raise FileNotFoundError(f"{path}: expected model_config.json of the shipped '{name}' model, found none "
                                f"(a package is written by python -m experiments.package_pretrained --name={name})")
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


def kind(name: str, root: Optional[str] = None) -> str:
    """'depth' or 'rgb': the kind of model the package ``name`` holds (its run_kind.txt, absent = depth)."""
    from hsr_tf.train import run_kind

    return run_kind.read_run_kind(asset_dir(name, root))


def check_kind(name: str, root: Optional[str] = None) -> str:
    """The package's kind; raises ValueError when a shipped name ('depth', 'rgb') holds the other kind."""
    found = kind(name, root)
    expected = NAME_KINDS.get(name)
    if expected is not None and found != expected:
        raise ValueError(f"{asset_dir(name, root)}: expected the '{name}' package to hold {ARTICLED[expected]} model, "
                         f"found {ARTICLED[found]} model (run_kind.txt)")
    return found


def load(name: str = "depth", root: Optional[str] = None):
    """The shipped model with its trained weights (Keras model).

    Returns:
      'depth': ``HandShapeNet``, called on normalised points [B, N, 3] (``hsr_tf.models.hand_shape_net``);
      'rgb': ``RGBMeshNet``, called on {"image": [B, S, S, 3] float in [0, 1], "camera": [B, 4] (fx, fy, cx, cy,
      px of the S crop), "root_depth": [B] mm, "bone_scale": [B] mm} -> vertices [B, V, 3] and joints [B, J, 3]
      (camera mm), joints_uv [B, J, 2] (px), ... (``hsr_tf.models.rgb_mesh_net``); S = ``model.image_size``.
    """
    from hsr_tf.train import loop

    check_kind(name, root)
    model, _ = loop.load_model_from_workdir(asset_dir(name, root), checkpoint_prefix(name, root))
    return model


def reference_batch(name: str, root: Optional[str] = None) -> dict:
    """The reference frames as a reader batch (identity rotation and augmentation), for checks that map outputs
    to camera mm with ``hsr_tf.data.reader.to_camera_mm``: points [B, N, 3] normalised, center [B, 3] mm,
    scale [B] mm, rotation / aug_matrix [B, 3, 3], aug_shift [B, 3]; plus the shipped outputs under
    ``reference/<key>`` ([B, K, 3], normalised)."""
    import numpy as np
    import tensorflow as tf

    path = os.path.join(asset_dir(name, root), "reference.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected the reference outputs of the shipped '{name}' model, found no file")
    ref = np.load(path)
    missing = [k for k in ("points", "center", "scale") + REFERENCE_KEYS if k not in ref]
    if missing:
        raise ValueError(f"{path}: expected arrays points, center, scale, {', '.join(REFERENCE_KEYS)}; missing {missing}")
    b = ref["points"].shape[0]
    batch = {"points": tf.constant(ref["points"], tf.float32), "center": tf.constant(ref["center"], tf.float32),
             "scale": tf.constant(np.reshape(ref["scale"], [b]), tf.float32), "rotation": tf.eye(3, batch_shape=[b]),
             "aug_matrix": tf.eye(3, batch_shape=[b]), "aug_shift": tf.zeros([b, 3])}
    batch.update({f"reference/{k}": tf.constant(ref[k], tf.float32) for k in REFERENCE_KEYS})
    return batch


def rgb_reference_batch(name: str = "rgb", root: Optional[str] = None) -> dict:
    """The RGB package's reference frames as the network's input: image [B, S, S, 3] float32 in [0, 1] (the stored
    uint8 / 255), camera [B, 4] px, root_depth [B] mm, bone_scale [B] mm; ``image_uint8`` [B, S, S, 3] as stored;
    plus the shipped outputs under ``reference/<key>`` (RGB_REFERENCE_KEYS, camera mm / px)."""
    import numpy as np
    import tensorflow as tf

    if kind(name, root) != "rgb":
        raise ValueError(f"{asset_dir(name, root)}: expected an RGB package (run_kind.txt 'rgb'), found a depth one")
    path = os.path.join(asset_dir(name, root), "reference.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected the reference outputs of the shipped '{name}' model, found no file")
    ref = np.load(path)
    missing = [k for k in RGB_REFERENCE_INPUTS + RGB_REFERENCE_KEYS if k not in ref]
    if missing:
        raise ValueError(f"{path}: expected arrays {', '.join(RGB_REFERENCE_INPUTS + RGB_REFERENCE_KEYS)}; "
                         f"missing {missing}")
    if ref["image"].dtype != np.uint8 or ref["image"].ndim != 4:
        raise ValueError(f"{path}: expected image uint8 [B, S, S, 3], found {ref['image'].dtype} {ref['image'].shape}")
    batch = {"image": tf.constant(ref["image"].astype(np.float32) / 255.0), "image_uint8": ref["image"]}
    batch.update({k: tf.constant(ref[k], tf.float32) for k in RGB_REFERENCE_INPUTS[1:]})
    batch.update({f"reference/{k}": tf.constant(ref[k], tf.float32) for k in RGB_REFERENCE_KEYS})
    return batch


def write_weights(model, directory: str, step: int) -> str:
    """Write ``model``'s variables only (no optimizer, no step) as ``directory/ckpt-<step>``; returns the prefix.

    The objects are those of a training checkpoint (``loop.model_checkpoint_objects``) plus the checkpoint's own
    save counter, so ``load`` restores it exactly as it restores a training checkpoint.
    """
    import tensorflow as tf

    from hsr_tf.train import loop

    if int(step) < 1:
        raise ValueError(f"step: expected a training step >= 1, found {step}")
    ckpt = tf.train.Checkpoint(**loop.model_checkpoint_objects(model))
    ckpt.save_counter.assign(int(step) - 1)  # save() numbers the file with the incremented counter
    prefix = ckpt.save(os.path.join(directory, "ckpt"))
    state = os.path.join(directory, "checkpoint")  # the CheckpointManager state file: not part of a package
    if os.path.exists(state):
        os.remove(state)
    return prefix


__all__ = ["ARTICLED", "ASSET_ROOT", "NAMES", "NAME_KINDS", "REFERENCE_KEYS", "RGB_REFERENCE_INPUTS", "RGB_REFERENCE_KEYS",
           "ROOT_ENV", "asset_dir", "check_kind", "checkpoint_prefix", "data_info", "kind", "load", "read_json",
           "reference_batch", "rgb_reference_batch", "write_weights"]
