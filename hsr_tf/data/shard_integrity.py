"""Content digests of the HDF5 shards (schema version 2 of both hsr_tf.data.shards and hsr_tf.data.rgb_shards).

Every dataset carries ``crc32`` (uint32 [F]): the CRC-32 of each frame's row; the file carries ``attrs_crc32``
(uint32): the CRC-32 of the other file attributes as canonical JSON. Why: HDF5's Fletcher-32 filter covers
chunk data only, and a damaged object header (datatype, dataspace, layout, filter pipeline) could load changed
values without any error (fuzz finding, issue 15). Text is written fixed-length (:func:`fixed_text`) so that a
file has no HDF5 global heap (a damaged heap object made the HDF5 library loop forever).

Legend: F frames.
"""
from __future__ import annotations

import json
import zlib

import numpy as np

DIGESTS_SINCE = 2  # the first schema version with digests (both schemas)
DIGEST_ATTR = "crc32"  # per dataset: uint32 [F], CRC-32 of each frame's row
ATTRS_DIGEST = "attrs_crc32"  # per file: uint32, CRC-32 of the other file attributes


def row_digests(arr) -> np.ndarray:
    """CRC-32 of each frame's row of ``arr`` ([F, ...], any numeric dtype, or [F] str/bytes).

    Numbers are hashed as little-endian C-order bytes, the CRC seeded with the dtype and per-frame shape (so the
    same bytes read as another type or shape do not match); strings as UTF-8. Returns uint32 [F].
    """
    arr = np.asarray(arr)
    if arr.ndim == 0:
        raise ValueError(f"arr: expected frames first (rank >= 1), found a scalar of dtype {arr.dtype}")
    if arr.dtype.kind in "OSU":
        if arr.ndim != 1:
            raise ValueError(f"arr: expected strings of shape [F], found shape {arr.shape}")
        return np.array([zlib.crc32(v if isinstance(v, bytes) else str(v).encode("utf-8")) for v in arr],
                        dtype=np.uint32)
    canon = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    seed = zlib.crc32(f"{canon.dtype.str}{canon.shape[1:]}".encode())
    flat = canon.reshape(len(canon), -1).view(np.uint8) if canon.size else None
    if flat is None:
        return np.full(len(canon), seed, dtype=np.uint32)
    return np.array([zlib.crc32(row, seed) for row in flat], dtype=np.uint32)


def attrs_digest(attrs: dict) -> int:
    """CRC-32 of decoded file attributes (without ``attrs_crc32``), as canonical JSON (sorted keys)."""
    body = {k: v for k, v in attrs.items() if k != ATTRS_DIGEST}
    return zlib.crc32(json.dumps(body, sort_keys=True, default=repr).encode("utf-8"))


def digests_of(f, path, schema_version, num_frames: int, error=ValueError) -> dict:
    """Stored row digests of every dataset of an open h5py file: field -> uint32 [F] (empty for version 1).

    Raises ``error`` (the caller's ShardError / RGBShardError) naming the file and field when a version-2 dataset
    lacks its digest or the digest has the wrong type or length (a damaged header)."""
    if int(schema_version) < DIGESTS_SINCE:
        return {}
    out = {}
    for name, obj in f.items():
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)  # damaged names can be bytes
        stored = obj.attrs.get(DIGEST_ATTR)
        if stored is None:
            raise error(f"{path}: field '{name}': expected the attribute '{DIGEST_ATTR}' (content digest, schema "
                        f"version {schema_version}), missing: the file is damaged")
        stored = np.asarray(stored)
        if stored.dtype != np.uint32 or stored.shape != (num_frames,):
            raise error(f"{path}: field '{name}': attribute '{DIGEST_ATTR}': expected uint32 [{num_frames}], found "
                        f"{stored.dtype} {stored.shape}: the file is damaged")
        out[name] = stored
    return out


def check_digests(path, name, data, stored, start: int = 0, error=ValueError) -> None:
    """Compare the rows ``data`` (frames ``start ..``) with their stored digests (skipped when ``stored`` is None).

    Raises ``error`` (the caller's ShardError / RGBShardError) naming the file, field and first mismatching frame."""
    if stored is None:
        return
    want = stored[start:start + len(data)]
    got = row_digests(data)
    if got.shape != want.shape:
        raise error(f"{path}: field '{name}': expected {len(want)} rows from frame {start}, found {len(got)}: the "
                    "file is damaged")
    bad = np.flatnonzero(got != want)
    if len(bad):
        i = int(bad[0])
        raise error(f"{path}: field '{name}': frame {start + i}: content digest mismatch (stored CRC-32 "
                    f"{int(want[i]):08x}, computed {int(got[i]):08x}; {len(bad)} of {len(got)} rows differ): the "
                    "file is damaged, regenerate it")


def fixed_text(values) -> tuple:
    """Text as a fixed-length UTF-8 array (numpy ``S<n>``, n >= 1) and its h5py dtype.

    Why fixed length: HDF5 keeps variable-length strings in a global heap, and one flipped byte in a heap
    object's size makes the HDF5 library loop forever when the string is read (found by the fuzz test:
    a hang in ``attrs['dataset']``). Fixed-length strings live in the object's own data, so a schema-version-2
    file has no global heap at all."""
    import h5py

    arr = np.asarray(values, dtype=object)
    enc = [(v if isinstance(v, bytes) else str(v).encode("utf-8")) for v in arr.reshape(-1)]
    n = max([1] + [len(e) for e in enc])
    dtype = h5py.string_dtype("utf-8", n)
    return np.array(enc, dtype=f"S{n}").reshape(arr.shape).astype(dtype), dtype


def write_attr(target, key: str, value) -> None:
    """Store one file attribute: str and lists of str as fixed-length UTF-8 (see :func:`fixed_text`)."""
    if isinstance(value, (list, tuple)):
        data, dtype = fixed_text([str(v) for v in value])
        target.create(key, data, dtype=dtype)
    elif isinstance(value, str):
        data, dtype = fixed_text(value)
        target.create(key, data, dtype=dtype)
    else:
        target[key] = value
