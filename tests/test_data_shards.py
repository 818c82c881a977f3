"""Shard schema: atomic writes, validation errors naming file and field, corrupt/truncated files."""
import os

import numpy as np
import pytest

from hsr_tf.data import shards
from hsr_tf.data.shards import ShardError
from hsr_tf.hand_model.skeleton import JOINT_NAMES

CAMERA = {"fx": 588.03, "fy": 587.07, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480}


def make_arrays(rng, frames=7, points=64, verts=50, obb=False):
    a = {"points": rng.normal(size=(frames, points, 3)).astype(np.float32),
         "joints": (rng.normal(size=(frames, 21, 3)) * 50 + [0, 0, 500]).astype(np.float32),
         "vertices": (rng.normal(size=(frames, verts, 3)) * 50 + [0, 0, 500]).astype(np.float32),
         "center": (rng.normal(size=(frames, 3)) * 20 + [0, 0, 500]).astype(np.float32),
         "scale": np.full((frames,), 150.0, np.float32),
         "subject": np.arange(frames, dtype=np.int32),
         "frame_id": np.arange(frames, dtype=np.int64) + 1000}
    if obb:
        from scipy.spatial.transform import Rotation
        a["rotation"] = Rotation.random(frames, random_state=1).as_matrix().astype(np.float32)
    return a


def attrs(split="train"):
    return {"dataset": "unit", "split": split, "camera": CAMERA, "joint_names": list(JOINT_NAMES)}


def test_write_validate_load_roundtrip(tmp_path, rng):
    path = str(tmp_path / "train-00000.h5")
    arrays = make_arrays(rng)
    shards.write_shard(path, arrays, attrs())
    assert os.listdir(tmp_path) == ["train-00000.h5"]  # no temporary left behind
    info = shards.validate_shard(path)
    assert info["num_frames"] == 7 and info["attrs"]["joint_names"] == list(JOINT_NAMES)
    assert info["attrs"]["schema_version"] == shards.SCHEMA_VERSION
    loaded = shards.load_shard(path)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v)
    assert shards.list_shards(str(tmp_path), "train") == [path]


def test_writer_rejects_bad_arrays_naming_field(tmp_path, rng):
    path = str(tmp_path / "x.h5")
    bad = make_arrays(rng)
    bad["joints"] = bad["joints"][:, :20]
    with pytest.raises(ShardError, match=r"x\.h5: field 'joints'.*\(21, 3\).*\(7, 20, 3\)"):
        shards.write_shard(path, bad, attrs())
    bad = make_arrays(rng)
    bad["center"] = bad["center"][:5]
    with pytest.raises(ShardError, match="field 'center': expected 7 frames"):
        shards.write_shard(path, bad, attrs())
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")


def _write_raw(path, arrays, attr_dict):
    import h5py
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in attr_dict.items():
            f.attrs[k] = v


def test_validator_names_file_and_wrong_field(tmp_path, rng):
    import json
    # Written by hand without content digests, so declared as schema version 1 (digests not required there).
    base = {"dataset": "unit", "split": "train", "camera": json.dumps(CAMERA), "joint_names": list(JOINT_NAMES),
            "schema_version": 1}
    p = str(tmp_path / "train-00001.h5")
    arrays = make_arrays(rng)
    arrays["points"] = arrays["points"].astype(np.float64)
    _write_raw(p, arrays, base)
    with pytest.raises(ShardError, match=r"train-00001\.h5: field 'points': expected dtype float32, found float64"):
        shards.validate_shard(p)
    arrays = make_arrays(rng)
    arrays["vertices"] = arrays["vertices"][..., :2]
    _write_raw(p, arrays, base)
    with pytest.raises(ShardError, match=r"train-00001\.h5: field 'vertices'"):
        shards.validate_shard(p)
    arrays = make_arrays(rng)
    del arrays["scale"]
    _write_raw(p, arrays, base)
    with pytest.raises(ShardError, match=r"train-00001\.h5: field 'scale': expected dataset, missing"):
        shards.validate_shard(p)
    arrays = make_arrays(rng)
    arrays["bogus"] = np.zeros((7,), np.float32)
    _write_raw(p, arrays, base)
    with pytest.raises(ShardError, match="field 'bogus': not in the schema"):
        shards.validate_shard(p)
    no_attr = dict(base)
    del no_attr["camera"]
    _write_raw(p, make_arrays(rng), no_attr)
    with pytest.raises(ShardError, match=r"train-00001\.h5: attribute 'camera'"):
        shards.validate_shard(p)
    nan = make_arrays(rng)
    nan["joints"][2, 3, 1] = np.nan
    _write_raw(p, nan, base)
    with pytest.raises(ShardError, match=r"train-00001\.h5: field 'joints': expected finite"):
        shards.load_shard(p)


def test_truncated_and_garbage_files_raise_with_path(tmp_path, rng):
    p = str(tmp_path / "train-00002.h5")
    shards.write_shard(p, make_arrays(rng, frames=40), attrs())
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ShardError, match=r"train-00002\.h5: cannot open as HDF5"):
        shards.validate_shard(p)
    with open(p, "wb") as f:
        f.write(b"not an hdf5 file at all" * 10)
    with pytest.raises(ShardError, match=r"train-00002\.h5"):
        shards.load_shard(p)
    with pytest.raises(ShardError, match=r"missing\.h5: expected a shard file, not found"):
        shards.validate_shard(str(tmp_path / "missing.h5"))
