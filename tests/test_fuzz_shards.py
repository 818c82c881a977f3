"""Damaged depth shards (hsr_tf.data.shards): truncated files, flipped bytes, missing datasets or attributes,
wrong dtypes, a newer schema version. Every case raises ShardError naming the file (and the field or attribute
where one is at fault) -- never a crash, a hang or data read silently wrong. Flipped bytes are checked with
hypothesis: a corrupted shard either raises ShardError or loads bit-identical data (the flip hit unused bytes).
"""
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsr_tf.data import shards

ATTRS = {"dataset": "synth", "split": "train", "camera": {"fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0,
                                                         "width": 8, "height": 8},
         "joint_names": [f"j{i}" for i in range(21)]}


def arrays(f=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"points": rng.normal(size=(f, 32, 3)).astype(np.float32),
            "joints": rng.normal(size=(f, 21, 3)).astype(np.float32),
            "center": rng.normal(size=(f, 3)).astype(np.float32), "scale": np.full(f, 150.0, np.float32),
            "frame_id": np.arange(f, dtype=np.int64)}


@pytest.fixture
def shard(tmp_path):
    path = str(tmp_path / "train-00000.h5")
    shards.write_shard(path, arrays(), ATTRS)
    return path


def test_truncated_file(shard):
    data = open(shard, "rb").read()
    for keep in (0, 100, len(data) // 2, len(data) - 10):
        with open(shard, "wb") as f:
            f.write(data[:keep])
        with pytest.raises(shards.ShardError, match=f"{shard}.*(truncated|corrupt)"):
            shards.load_shard(shard)


def test_missing_dataset_and_attribute(shard):
    with h5py.File(shard, "a") as f:
        del f["center"]
    with pytest.raises(shards.ShardError, match=f"{shard}: field 'center': expected dataset, missing"):
        shards.validate_shard(shard)
    shards.write_shard(shard, arrays(), ATTRS)
    with h5py.File(shard, "a") as f:
        del f.attrs["joint_names"]
    with pytest.raises(shards.ShardError, match=f"{shard}: attribute 'joint_names': expected, missing"):
        shards.load_shard(shard)


def test_wrong_dtype_and_shape(shard):
    with h5py.File(shard, "a") as f:
        del f["scale"]
        f["scale"] = np.full(6, 150.0, np.float64)
    with pytest.raises(shards.ShardError, match=f"{shard}: field 'scale': expected dtype float32, found float64"):
        shards.validate_shard(shard)
    with h5py.File(shard, "a") as f:
        del f["scale"]
        f["scale"] = np.full(5, 150.0, np.float32)
    with pytest.raises(shards.ShardError, match="field 'scale': expected 6 frames"):
        shards.validate_shard(shard)


def test_newer_schema_version(shard):
    with h5py.File(shard, "a") as f:
        f.attrs["schema_version"] = shards.SCHEMA_VERSION + 1
    with pytest.raises(shards.ShardError, match=rf"{shard}: attribute 'schema_version': expected one of \(1, 2\) "
                                                rf".*found {shards.SCHEMA_VERSION + 1}"):
        shards.load_shard(shard)


def test_non_finite_data(shard):
    a = arrays()
    a["joints"][2, 3, 1] = np.nan
    shards.write_shard(shard, a, ATTRS)  # the writer stores NaN (with a matching digest); the loader refuses it
    with pytest.raises(shards.ShardError, match=f"{shard}: field 'joints': expected finite values"):
        shards.load_shard(shard)


def test_changed_values_fail_their_digest(shard):
    """A value rewritten in place (valid HDF5, Fletcher-32 recomputed by h5py) is caught by the row digest."""
    with h5py.File(shard, "a") as f:
        f["points"][4, 7, 2] = f["points"][4, 7, 2] + 1e-3
    with pytest.raises(shards.ShardError, match=f"{shard}: field 'points': frame 4: content digest mismatch"):
        shards.load_shard(shard)
    assert shards.load_shard(shard, ["joints"])["joints"].shape == (6, 21, 3)  # other fields stay readable


def test_damaged_digest_attributes(shard):
    with h5py.File(shard, "a") as f:
        del f["scale"].attrs[shards.DIGEST_ATTR]
    with pytest.raises(shards.ShardError, match=f"{shard}: field 'scale': expected the attribute 'crc32'"):
        shards.validate_shard(shard)
    shards.write_shard(shard, arrays(), ATTRS)
    with h5py.File(shard, "a") as f:
        f["scale"].attrs[shards.DIGEST_ATTR] = np.zeros(5, np.uint32)
    with pytest.raises(shards.ShardError, match=r"field 'scale': attribute 'crc32': expected uint32 \[6\]"):
        shards.validate_shard(shard)
    shards.write_shard(shard, arrays(), ATTRS)
    with h5py.File(shard, "a") as f:
        f.attrs["camera"] = f.attrs["camera"].decode().replace('"fx": 1.0', '"fx": 2.0')  # still valid JSON
    with pytest.raises(shards.ShardError, match=f"{shard}: attribute 'attrs_crc32'"):
        shards.validate_shard(shard)


def test_no_global_heap(shard):
    """Text is stored fixed-length, so the file has no HDF5 global heap ('GCOL'): a flipped byte in a heap
    object's size made the HDF5 library loop forever reading a variable-length string (fuzz finding)."""
    assert b"GCOL" not in open(shard, "rb").read()
    assert shards.read_attrs(shard)["joint_names"] == ATTRS["joint_names"]


def test_version_1_shard_without_digests_is_read(shard):
    """Shards written before the digests (schema version 1) load unchecked; version 2 requires them."""
    with h5py.File(shard, "a") as f:
        for name in f:
            del f[name].attrs[shards.DIGEST_ATTR]
        del f.attrs[shards.ATTRS_DIGEST]
        f.attrs["schema_version"] = 1
    info = shards.validate_shard(shard)
    assert info["digests"] == {} and info["attrs"]["schema_version"] == 1
    got = shards.load_shard(shard)
    for k, v in arrays().items():
        np.testing.assert_array_equal(got[k], v)


def test_row_digests_hand_values():
    """CRC-32 per row against zlib on hand-built bytes: little-endian, seeded with dtype and per-frame shape."""
    import zlib

    x = np.array([[1, 2], [3, 4]], dtype=">i4")  # big-endian input hashes like its little-endian value
    seed = zlib.crc32(b"<i4(2,)")
    want = [zlib.crc32(b"\x01\0\0\0\x02\0\0\0", seed), zlib.crc32(b"\x03\0\0\0\x04\0\0\0", seed)]
    np.testing.assert_array_equal(shards.row_digests(x), np.array(want, np.uint32))
    assert shards.row_digests(x.astype(np.float32))[0] != want[0]  # same numbers, other type: other digest
    np.testing.assert_array_equal(shards.row_digests(np.array(["ab", b"ab"], dtype=object)), [zlib.crc32(b"ab")] * 2)


def flip_bytes(path, positions):
    """XOR 0xFF into the bytes of ``path`` at ``positions`` (each taken modulo the file size)."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for p in positions:
            f.seek(p % size)
            b = f.read(1)
            f.seek(p % size)
            f.write(bytes([b[0] ^ 0xFF]))


def _check_flipped(tmp_path, positions):
    path = str(tmp_path / "train-00001.h5")
    ref = arrays(seed=3)
    shards.write_shard(path, ref, ATTRS)
    flip_bytes(path, positions)
    try:
        got = shards.load_shard(path)
    except shards.ShardError as e:
        assert path in str(e)
        return "raised"
    # no error: then the data must be what was written (a flip of padding or of a free byte)
    for k, v in ref.items():
        assert k in got and got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    return "intact"


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4))
def test_flipped_bytes_raise_or_leave_data_intact(tmp_path_factory, positions):
    _check_flipped(tmp_path_factory.mktemp("flip"), positions)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8))
def test_flipped_bytes_many(tmp_path_factory, positions):
    _check_flipped(tmp_path_factory.mktemp("flip"), positions)
