"""Shards -> tf.data reader: output contract, exact inverse to camera mm, shuffling coverage, errors with paths."""
import os

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.data import reader, shards
from hsr_tf.data.shards import ShardError
from tests.test_data_shards import attrs, make_arrays


def _write_split(tmp_path, rng, n_shards=3, frames=10, obb=False, start=0):
    paths = []
    for i in range(n_shards):
        a = make_arrays(rng, frames=frames, obb=obb)
        a["frame_id"] = np.arange(frames, dtype=np.int64) + start + i * frames
        p = str(tmp_path / f"train-{i:05d}.h5")
        shards.write_shard(p, a, attrs())
        paths.append(p)
    return paths


def _collect(ds):
    out = {}
    for b in ds:
        for k, v in b.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("obb", [False, True])
def test_output_contract_and_inverse(tmp_path, rng, obb):
    paths = _write_split(tmp_path, rng, obb=obb)
    raw = {k: np.concatenate([shards.load_shard(p)[k] for p in paths]) for k in ("joints", "vertices", "frame_id")}
    ds = reader.make_dataset(str(tmp_path), "train", batch_size=4, shuffle=True, augment=True, seed=3)
    spec = ds.element_spec
    assert spec["points"].shape.as_list() == [None, 64, 3]
    assert spec["joints"].shape.as_list() == [None, 21, 3] and spec["vertices"].shape.as_list() == [None, 50, 3]
    assert spec["rotation"].shape.as_list() == [None, 3, 3] and spec["scale"].shape.as_list() == [None]
    assert spec["frame_id"].dtype == tf.int64 and spec["subject"].dtype == tf.int32
    got = {}
    for b in ds:
        j_mm = reader.to_camera_mm(b["joints"], b).numpy()
        v_mm = reader.to_camera_mm(b["vertices"], b).numpy()
        for fid, j, v in zip(b["frame_id"].numpy(), j_mm, v_mm):
            got[fid] = (j, v)
    assert sorted(got) == sorted(raw["frame_id"].tolist())  # every frame exactly once per epoch
    for i, fid in enumerate(raw["frame_id"]):
        assert np.allclose(got[fid][0], raw["joints"][i], atol=1e-2)
        assert np.allclose(got[fid][1], raw["vertices"][i], atol=1e-2)


def test_normalisation_matches_points_convention(tmp_path, rng):
    # joints normalised by the reader must equal (joints_mm - center) @ R / scale computed here
    paths = _write_split(tmp_path, rng, n_shards=1, obb=True)
    raw = shards.load_shard(paths[0])
    d = _collect(reader.make_dataset(str(tmp_path), "train", batch_size=3, shuffle=False))
    want = np.einsum("fnj,fji->fni", raw["joints"] - raw["center"][:, None], raw["rotation"]) / raw["scale"][:, None,
                                                                                                            None]
    assert np.allclose(d["joints"], want, atol=1e-5)
    assert np.array_equal(d["points"], raw["points"])
    assert np.allclose(d["aug_matrix"], np.eye(3)) and np.all(d["aug_shift"] == 0)


def test_seeded_order_and_shuffle(tmp_path, rng):
    _write_split(tmp_path, rng, n_shards=4)
    ids = [_collect(reader.make_dataset(str(tmp_path), "train", batch_size=5, seed=s, augment=True))
           for s in (1, 1, 2)]
    assert np.array_equal(ids[0]["frame_id"], ids[1]["frame_id"])
    assert np.allclose(ids[0]["points"], ids[1]["points"])
    assert not np.array_equal(ids[0]["frame_id"], ids[2]["frame_id"])
    assert not np.array_equal(np.sort(ids[0]["frame_id"]), ids[0]["frame_id"])  # shuffled across shards
    # repeat: two epochs from one iterator, each a permutation of all frames
    ds = reader.make_dataset(str(tmp_path), "train", batch_size=8, repeat=True, drop_remainder=True, seed=0)
    seen = np.concatenate([b["frame_id"].numpy() for b in ds.take(10)])
    assert len(seen) == 80 and set(seen[:40].tolist()) <= set(range(40))


def test_corrupt_shard_raises_with_path(tmp_path, rng):
    paths = _write_split(tmp_path, rng, n_shards=2)
    with open(paths[1], "r+b") as f:
        f.truncate(os.path.getsize(paths[1]) // 3)
    with pytest.raises(ShardError, match=r"train-00001\.h5"):
        reader.make_dataset(str(tmp_path), "train")
    # corrupted after the dataset was built: iterating raises an error naming the file
    shards.write_shard(paths[1], make_arrays(rng, frames=10), attrs())
    ds = reader.make_dataset(str(tmp_path), "train", batch_size=4)
    with open(paths[1], "r+b") as f:
        f.truncate(os.path.getsize(paths[1]) // 3)
    with pytest.raises(tf.errors.OpError, match=r"train-00001\.h5"):
        for _ in ds:
            pass


def test_inconsistent_shards_and_empty_dir(tmp_path, rng):
    _write_split(tmp_path, rng, n_shards=1)
    shards.write_shard(str(tmp_path / "train-00001.h5"), make_arrays(rng, points=32), attrs())
    with pytest.raises(ShardError, match=r"train-00001\.h5: field 'points': expected per-frame shape \(64, 3\)"):
        reader.make_dataset(str(tmp_path), "train")
    with pytest.raises(ShardError, match="expected shards named 'test-"):
        reader.make_dataset(str(tmp_path), "test")
