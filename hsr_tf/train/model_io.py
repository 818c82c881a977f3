"""The model files of a run: its Keras config, the variables a checkpoint holds, and reloading both.

``<workdir>/model_config.json`` is the Keras serialisation of the model (class and config, no weights);
``<workdir>/checkpoints`` holds the training checkpoints (:mod:`hsr_tf.train.checkpoints`).
:func:`load_model_from_workdir` rebuilds the model from the first and restores the newest of the second, which
is what evaluation, export and the pretrained loader do.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Optional

import tensorflow as tf
import keras

from hsr_tf.train import checkpoints as checkpoints_lib

CHECKPOINT_SUBDIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"


def save_model_config(model: keras.Model, workdir: str) -> str:
    """Write the Keras serialisation of ``model`` (class + config, no weights) to the workdir."""
    path = os.path.join(workdir, MODEL_CONFIG_FILE)
    # Atomic: every worker of a multi-worker run may write the same file.
    checkpoints_lib.atomic_write_text(
        path, json.dumps(keras.saving.serialize_keras_object(model), indent=1, sort_keys=True))
    return path


def model_checkpoint_objects(model: keras.Model) -> dict:
    """Trackables that put *every* variable of ``model`` into a ``tf.train.Checkpoint``.

    Keras 3 keeps sublayers held in lists/dicts in its own trackers, which TensorFlow's object graph does not
    follow: through ``model=`` alone a checkpoint reaches only some layers, trainable weights otherwise only via
    the optimizer, and BatchNorm moving statistics not at all. Listing every variable fixes that; the list is
    positional (``model.variables`` order, fixed by the architecture) because auto-generated layer names, hence
    variable paths, differ between two instances of the same model in one process.
    """
    variables = list(model.variables)
    return {"model": model, "model_variables": variables}


def load_model_from_workdir(workdir: str, checkpoint: Optional[str] = None,
                            example_points_shape=(1, 1024, 3), example_input=None) -> tuple[keras.Model, str]:
    """Rebuild the model of a run from its model_config.json and restore its newest checkpoint.

    Args:
      workdir: run directory written by :class:`Trainer`.
      checkpoint: explicit checkpoint prefix; default the newest in ``workdir/checkpoints``.
      example_points_shape: shape of the dummy input used to build the variables.
      example_input: the dummy input itself (e.g. a dict); default the model's ``example_input()`` when it has
        one, else zeros of ``example_points_shape``.
    Returns:
      (model with restored weights, checkpoint path).
    Raises:
      FileNotFoundError naming what is missing.
    """
    cfg_path = os.path.join(workdir, MODEL_CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: expected the model config written by training, found no file")
    with open(cfg_path) as f:
        serialized = json.load(f)
    if serialized.get("module"):
        # Registers the model class (and its layers) before deserialising.
        importlib.import_module(serialized["module"])
    model = keras.saving.deserialize_keras_object(serialized)
    # Layers rebuilt from a config whose constants live in the weights (HandModelLayer with a non-packaged
    # hand model) refuse to run until their weights are loaded; the checkpoint restores those weights below,
    # after one dummy call has created every variable of the network.
    awaiting = [layer for layer in model._flatten_layers() if getattr(layer, "_awaiting_weights", False)]
    for layer in awaiting:
        layer._awaiting_weights = False
    if example_input is None:
        example_input = model.example_input() if hasattr(model, "example_input") else \
            tf.zeros(example_points_shape, tf.float32)
    model(example_input, training=False)
    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_SUBDIR))
        if checkpoint is None:
            raise FileNotFoundError(f"{os.path.join(workdir, CHECKPOINT_SUBDIR)}: expected a training checkpoint, "
                                    "found none")
    status = tf.train.Checkpoint(**model_checkpoint_objects(model)).restore(checkpoint)
    status.expect_partial()  # optimizer slots and the step are not needed for inference
    status.assert_existing_objects_matched()
    return model, checkpoint
