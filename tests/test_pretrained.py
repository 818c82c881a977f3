"""The shipped depth model loads with one call and reproduces its shipped reference outputs."""
import os

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import pretrained


def test_load_depth_matches_shipped_reference_outputs():
    model = pretrained.load("depth")
    ref = np.load(os.path.join(pretrained.asset_dir("depth"), "reference.npz"))
    out = model(tf.constant(ref["points"]), training=False)
    for key in ("vertices", "joints", "dataset_joints"):
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-4, err_msg=key)
    # Trained weights, not an initialisation: a freshly built model of the same config gives other outputs.
    from hsr_tf.train import loop
    import json, keras
    with open(os.path.join(pretrained.asset_dir("depth"), "model_config.json")) as f:
        fresh = keras.saving.deserialize_keras_object(json.load(f))
    assert np.abs(fresh(tf.constant(ref["points"]), training=False)["joints"].numpy() - ref["joints"]).max() > 1e-3


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="name"):
        pretrained.load("rgb_unknown")
