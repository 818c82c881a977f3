"""RGB shard schema: round trip, atomic write, malformed shards raise naming the file and field."""
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsr_tf.data import rgb_shards as rs
from hsr_tf.hand_model.skeleton import JOINT_NAMES
from tests.test_fuzz_shards import flip_bytes

S = 16


def _arrays(num=3, seed=0, with_vertices=True, sequence=None):
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 40, (num, 21, 3))
    joints[..., 2] += 500.0
    cam = np.tile([[300.0, 310.0, 7.5, 8.0]], (num, 1)) + rng.normal(0, 1, (num, 4))
    uv = rs.project(joints, cam)
    a = {
        "image": rng.integers(0, 256, (num, S, S, 3)), "mask": rng.integers(0, 256, (num, S, S)),
        "depth": rng.integers(0, 2000, (num, S, S)), "joints": joints, "joints_uv": uv, "camera": cam,
        "bone_scale": np.linalg.norm(joints[:, 9] - joints[:, 10], axis=-1), "root_depth": joints[:, 0, 2],
        "mirrored": np.array([0, 1, 0][:num] + [0] * max(0, num - 3)), "frame_index": np.arange(num) * 7,
        "subject": np.arange(num),
    }
    if with_vertices:
        a["vertices"] = rng.normal(0, 50, (num, 1305, 3))
    if sequence is not None:
        a["sequence"] = sequence
    return a


ATTRS = {"dataset": "unit", "split": "train", "image_size": S, "joint_names": list(JOINT_NAMES)}


def test_round_trip_types_chunks_and_attrs(tmp_path):
    path = str(tmp_path / "train-00000.h5")
    a = _arrays(sequence=np.array(["B1Counting", "B2Random", "B1Counting"]))
    rs.write_rgb_shard(path, a, dict(ATTRS, skin_tones="0,1"))
    assert not os.path.exists(path + ".tmp")
    out, attrs = rs.read_rgb_shard(path)
    assert attrs["kind"] == "rgb" and attrs["schema_version"] == rs.RGB_SCHEMA_VERSION
    assert attrs["joint_names"] == list(JOINT_NAMES) and attrs["skin_tones"] == "0,1"
    assert out["image"].dtype == np.uint8 and out["depth"].dtype == np.uint16
    np.testing.assert_array_equal(out["image"], a["image"].astype(np.uint8))
    np.testing.assert_allclose(out["joints"], a["joints"], atol=1e-3)
    assert list(out["sequence"]) == ["B1Counting", "B2Random", "B1Counting"]
    with h5py.File(path) as f:
        assert f["image"].chunks == (1, S, S, 3) and f["image"].compression == "gzip"
    assert b"GCOL" not in open(path, "rb").read()  # text fixed-length: no global heap (see shards.fixed_text)
    part, _ = rs.read_rgb_shard(path, fields=["mask"], start=1, stop=3)
    np.testing.assert_array_equal(part["mask"], a["mask"][1:3].astype(np.uint8))
    assert rs.validate_rgb_shard(path)["num_frames"] == 3


def test_lzf_and_int_sequence_and_empty(tmp_path):
    path = str(tmp_path / "test-00000.h5")
    rs.write_rgb_shard(path, _arrays(with_vertices=False, sequence=np.array([3, 4, 5])), ATTRS, compression="lzf")
    out, _ = rs.read_rgb_shard(path)
    assert out["sequence"].dtype == np.int32 and "vertices" not in out
    empty = {k: v[:0] for k, v in _arrays().items()}
    rs.write_rgb_shard(str(tmp_path / "test-00001.h5"), empty, ATTRS)
    assert rs.validate_rgb_shard(str(tmp_path / "test-00001.h5"))["num_frames"] == 0
    assert rs.list_rgb_shards(str(tmp_path), "test") == [str(tmp_path / "test-00000.h5"),
                                                         str(tmp_path / "test-00001.h5")]


@pytest.mark.parametrize("mutate, field", [
    (lambda a: a.pop("mask"), "mask"),
    (lambda a: a.update(image=a["image"][:, :, :-1]), "image"),
    (lambda a: a.update(depth=a["depth"][:2]), "depth"),
    (lambda a: a.update(joints_uv=a["joints_uv"] + 0.5), "joints_uv"),
    (lambda a: a.update(root_depth=a["root_depth"] + 1.0), "root_depth"),
    (lambda a: a.update(bone_scale=a["bone_scale"] * 1.1), "bone_scale"),
    (lambda a: a.update(mirrored=np.array([0, 2, 1])), "mirrored"),
    (lambda a: a.update(depth=a["depth"] + 0.5), "depth"),
    (lambda a: a.update(joints=np.where(np.arange(3)[:, None, None] == 1, np.nan, a["joints"])), "joints"),
    (lambda a: a.update(colour=a["mask"]), "colour"),
])
def test_writer_rejects_bad_arrays(tmp_path, mutate, field):
    a = _arrays()
    mutate(a)
    path = str(tmp_path / "train-00000.h5")
    with pytest.raises(rs.RGBShardError, match=f"train-00000.h5: field '{field}'"):
        rs.write_rgb_shard(path, a, ATTRS)
    assert not os.path.exists(path)


def test_writer_rejects_bad_attrs(tmp_path):
    path = str(tmp_path / "train-00000.h5")
    with pytest.raises(rs.RGBShardError, match="attribute 'image_size'"):
        rs.write_rgb_shard(path, _arrays(), {k: v for k, v in ATTRS.items() if k != "image_size"})
    with pytest.raises(rs.RGBShardError, match="field 'image'"):
        rs.write_rgb_shard(path, _arrays(), dict(ATTRS, image_size=S * 2))


def test_malformed_files_raise(tmp_path):
    good = str(tmp_path / "train-00000.h5")
    rs.write_rgb_shard(good, _arrays(), ATTRS)
    with pytest.raises(rs.RGBShardError, match="not found"):
        rs.validate_rgb_shard(str(tmp_path / "missing.h5"))
    trunc = str(tmp_path / "train-00001.h5")
    with open(good, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[: len(data) // 3])
    with pytest.raises(rs.RGBShardError, match="train-00001.h5"):
        rs.read_rgb_shard(trunc)
    with h5py.File(good, "a") as f:
        f.attrs["kind"] = "depth"
    with pytest.raises(rs.RGBShardError, match="attribute 'kind'"):
        rs.validate_rgb_shard(good)
    other = str(tmp_path / "train-00002.h5")
    rs.write_rgb_shard(other, _arrays(), ATTRS)
    with h5py.File(other, "a") as f:
        del f["camera"]
        f.create_dataset("camera", data=np.zeros((3, 3), np.float32))
    with pytest.raises(rs.RGBShardError, match="train-00002.h5: field 'camera'"):
        rs.validate_rgb_shard(other)
    third = str(tmp_path / "train-00003.h5")
    rs.write_rgb_shard(third, _arrays(), ATTRS)
    with h5py.File(third, "a") as f:
        f["joints"][1, 3, 0] = f["joints"][1, 3, 0] + 30.0  # joints no longer project to joints_uv
    with pytest.raises(rs.RGBShardError, match="train-00003.h5: field 'joints': frame 1: content digest mismatch"):
        rs.read_rgb_shard(third)
    with h5py.File(third, "a") as f:  # a consistent digest: now the schema's redundancy check has to catch it
        f["joints"].attrs["crc32"] = rs.shards.row_digests(f["joints"][()])
    with pytest.raises(rs.RGBShardError, match="field 'joints_uv'"):
        rs.read_rgb_shard(third)


def test_changed_pixel_fails_its_frame_digest(tmp_path):
    """A pixel rewritten in place (valid HDF5, chunk re-compressed) fails the digest of its frame only, in the
    loader and in the training reader's per-frame path."""
    from hsr_tf.data import rgb_reader

    path = str(tmp_path / "train-00000.h5")
    a = _arrays()
    rs.write_rgb_shard(path, a, ATTRS)
    with h5py.File(path, "a") as f:
        f["image"][2, 5, 5, 1] = (int(f["image"][2, 5, 5, 1]) + 1) % 256
    part, _ = rs.read_rgb_shard(path, fields=["image"], start=0, stop=2)
    np.testing.assert_array_equal(part["image"], a["image"][:2].astype(np.uint8))
    with pytest.raises(rs.RGBShardError, match="train-00000.h5: field 'image': frame 2: content digest mismatch"):
        rs.read_rgb_shard(path, fields=["image"], start=-1)
    source = rgb_reader._FrameSource([path])
    np.testing.assert_array_equal(source.read(1)[0], a["image"][1].astype(np.uint8))
    with pytest.raises(rs.RGBShardError, match="train-00000.h5: field 'image': frame 2: content digest mismatch"):
        source.read(2)


def test_version_1_shard_without_digests_is_read(tmp_path):
    path = str(tmp_path / "train-00000.h5")
    a = _arrays(sequence=np.array(["x", "y", "z"]))
    rs.write_rgb_shard(path, a, ATTRS)
    with h5py.File(path, "a") as f:
        for name in f:
            del f[name].attrs["crc32"]
        del f.attrs["attrs_crc32"]
        f.attrs["schema_version"] = 1
    assert rs.validate_rgb_shard(path)["digests"] == {}
    out, attrs = rs.read_rgb_shard(path)
    assert attrs["schema_version"] == 1 and list(out["sequence"]) == ["x", "y", "z"]
    np.testing.assert_array_equal(out["depth"], a["depth"].astype(np.uint16))
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 2  # version 2 without digests: refused
    with pytest.raises(rs.RGBShardError, match="train-00000.h5: attribute 'attrs_crc32'|expected the attribute "
                                               "'crc32'"):
        rs.read_rgb_shard(path)


def _check_flipped(path, positions):
    ref = _arrays(seed=5, sequence=np.array(["B1Counting", "B2Random", "B1Counting"]))
    rs.write_rgb_shard(path, ref, ATTRS)
    flip_bytes(path, positions)
    try:
        got, attrs = rs.read_rgb_shard(path)
    except rs.RGBShardError as e:
        assert path in str(e)
        return
    # no error: the flips hit unused bytes, and every value must be what was written
    for k, v in ref.items():
        v = np.asarray(v)
        if v.dtype.kind in "OSU":
            assert list(got[k]) == list(v), k
        else:
            assert np.array_equal(got[k], v.astype(rs.FIELDS[k][0])), k
    assert {k: attrs[k] for k in ATTRS} == ATTRS


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4))
def test_flipped_bytes_raise_or_leave_data_intact(tmp_path_factory, positions):
    _check_flipped(str(tmp_path_factory.mktemp("flip") / "train-00000.h5"), positions)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8))
def test_flipped_bytes_many(tmp_path_factory, positions):
    _check_flipped(str(tmp_path_factory.mktemp("flip") / "train-00000.h5"), positions)
