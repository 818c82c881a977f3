"""HDF5 shard schema: atomic writer, validator and loader.

One HDF5 file per shard, ``F`` frames; every dataset has frames as its first axis.

| dataset       | dtype   | shape        | meaning                                                        |
|---------------|---------|--------------|----------------------------------------------------------------|
| points        | float32 | [F, P, 3]    | sampled hand points, NORMALISED (see center/scale/rotation)    |
| joints        | float32 | [F, J, 3]    | dataset joints, mm, camera frame                               |
| center        | float32 | [F, 3]       | normalisation centre, mm, camera frame                         |
| scale         | float32 | [F]          | normalisation scale, mm                                        |
| rotation      | float32 | [F, 3, 3]    | optional; OBB axes (columns); absent = identity                |
| vertices      | float32 | [F, V, 3]    | optional; ground-truth mesh, mm, camera frame (synthetic)      |
| uvd           | float32 | [F, J, 3]    | optional; joints projected: u, v pixels (full image), d mm     |
| depth         | uint16  | [F, S, S]    | optional; depth crop (mm, 0 = missing) resized to S x S        |
| crop_window   | int32   | [F, 4]       | optional; (u0, v0, u1, v1) full-image window of ``depth``      |
| theta         | float32 | [F, 21, 3]   | optional; generator pose (axis-angle, theta[:,0] = global rot) |
| translation   | float32 | [F, 3]       | optional; camera = generator pose(theta) + translation, mm     |
| subject, pose, view | int32 | [F]      | optional; ids of the generating subject / pose / viewpoint      |
| frame_id      | int64   | [F]          | optional; unique id of the frame within the dataset            |

normalised = (camera_mm - center) @ rotation / scale  (row vectors);
camera_mm  = scale * normalised @ rotation^T + center.

File attributes (all required): ``dataset`` (str), ``split`` (str), ``camera``
(JSON of fx, fy, cx, cy, width, height), ``joint_names`` (list of J str),
``schema_version`` (int, 1 or 2; the writer writes SCHEMA_VERSION = 2). Writers may add more attributes.

Content digests (schema version 2, required there; version-1 shards have none and stay readable unchecked):
every dataset carries the attribute ``crc32`` (uint32 [F]): the CRC-32 of each frame's row (little-endian,
C order, seeded with the dtype and per-frame shape; UTF-8 for strings), checked whenever rows are read; the
file carries ``attrs_crc32`` (uint32): the CRC-32 of the other file attributes (canonical JSON), checked by
the validator. Why: HDF5's Fletcher-32 filter covers chunk data only, so a damaged object header (datatype,
dataspace, layout, filter pipeline) could load changed values without any error.

Legend: F frames, P points, J joints, V vertices, S crop size.
"""
from __future__ import annotations

import json
import os

import numpy as np

# The content digests (schema version 2) live in shard_integrity; re-exported here for the RGB schema and callers.
from hsr_tf.data.shard_integrity import (ATTRS_DIGEST, DIGEST_ATTR, DIGESTS_SINCE, attrs_digest,  # noqa: F401
                                         check_digests as _check_digests, digests_of as _digests_of, fixed_text,
                                         row_digests, write_attr)

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)  # 1: no content digests (older shards), 2: digests required
REQUIRED_ATTRS = ("dataset", "split", "camera", "joint_names", "schema_version")

# name -> (dtype, trailing shape; None = any size, must agree across a dataset's shards; 'J' = len(joint_names))
FIELDS = {
    "points": (np.float32, (None, 3)),
    "joints": (np.float32, ("J", 3)),
    "center": (np.float32, (3,)),
    "scale": (np.float32, ()),
    "rotation": (np.float32, (3, 3)),
    "vertices": (np.float32, (None, 3)),
    "uvd": (np.float32, ("J", 3)),
    "depth": (np.uint16, (None, None)),
    "crop_window": (np.int32, (4,)),
    "theta": (np.float32, (None, 3)),
    "translation": (np.float32, (3,)),
    "subject": (np.int32, ()),
    "pose": (np.int32, ()),
    "view": (np.int32, ()),
    "frame_id": (np.int64, ()),
}
REQUIRED_FIELDS = ("points", "joints", "center", "scale")


# What h5py raises on a damaged file: OSError (truncated, bad superblock, checksum), RuntimeError (bad B-tree or
# attribute metadata), KeyError/ValueError (inconsistent object headers).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


class ShardError(ValueError):
    """A shard file is missing, unreadable, truncated, or does not follow the schema."""


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def digests_of(f, path, schema_version, num_frames: int, error=None) -> dict:
    """Stored row digests of an open shard (see shard_integrity.digests_of); raises ShardError by default."""
    return _digests_of(f, path, schema_version, num_frames, error=error or ShardError)


def check_digests(path, name, data, stored, start: int = 0, error=None) -> None:
    """Rows against their stored digests (see shard_integrity.check_digests); raises ShardError by default."""
    _check_digests(path, name, data, stored, start, error=error or ShardError)


def write_shard(path: str, arrays: dict, attrs: dict) -> None:
    """Write a shard atomically: built in memory, written to ``path + '.tmp'``, then ``os.replace``.

    Args:
      path: final file name (…/split-00000.h5).
      arrays: field -> array with frames first (see the table); unknown fields raise;
        values are cast to the schema dtypes.
      attrs: must contain dataset, split, camera (dict or JSON), joint_names; the
        schema_version is added. Values must be str/int/float/list of str.
    Raises:
      ShardError (naming the field) if arrays violate the schema; ShardWriteError (an OSError) when the disk is
      full or the write fails, leaving no partial file and an existing ``path`` intact.
    """
    import h5py

    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if k not in FIELDS:
            raise ShardError(f"{path}: field '{k}': not in the schema (known: {sorted(FIELDS)})")
        arrays[k] = v.astype(FIELDS[k][0], copy=False)  # e.g. float64 -> float32 (schema dtypes)
    attrs = dict(attrs)
    attrs["schema_version"] = SCHEMA_VERSION
    if isinstance(attrs.get("camera"), dict):
        attrs["camera"] = json.dumps(attrs["camera"], sort_keys=True)
    _check_arrays(path, arrays, attrs)

    def fill(f):
        for name, arr in arrays.items():
            # Fletcher-32 checksums (chunked storage): a flipped byte in the data fails the read instead of
            # loading silently wrong values. Empty fields cannot be chunked and carry no data to protect.
            ds = f.create_dataset(name, data=arr.astype(FIELDS[name][0], copy=False), fletcher32=arr.size > 0)
            ds.attrs[DIGEST_ATTR] = row_digests(arr)  # also covers what Fletcher-32 cannot: headers
        for key, value in attrs.items():
            write_attr(f.attrs, key, value)
        # Digest of the attributes as the reader will decode them (so types round-trip identically).
        f.attrs[ATTRS_DIGEST] = np.uint32(attrs_digest(_attrs_of(f)))

    write_hdf5_atomically(path, fill)


class ShardWriteError(OSError):
    """A shard could not be written (disk full, I/O error); nothing partial was left and older files are intact."""


def write_hdf5_atomically(path: str, fill) -> None:
    """Build an HDF5 file in memory with ``fill(h5py.File)``, then write it to ``path + '.tmp'``, fsync, rename.

    Why in memory: when the disk fills up under HDF5's own writes, h5py reports the failure only while
    releasing objects (an "exception ignored" message) and can then crash the process (seen: a segmentation
    fault in ``File.flush`` under a file-size limit), so no clear error could be raised. Plain Python writes
    raise ``OSError`` (ENOSPC, EFBIG, EIO) reliably. Cost: the file's bytes are held in memory once more.

    Raises:
      ShardWriteError (an OSError with the original errno) naming ``path``; the partial temporary file is
      removed and an existing ``path`` is left as it was.
    """
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise ShardWriteError(e.errno, f"{path}: writing the shard failed ({e.strerror or e}); the partial file "
                              f"{tmp} was removed and existing shards are untouched. Free space on the device of "
                              f"{os.path.dirname(os.path.abspath(path))} and rerun (finished shards are "
                              "skipped)") from e


def _check_arrays(path, arrays, attrs):
    """Schema check of in-memory arrays (used by the writer and the loader)."""
    for key in REQUIRED_ATTRS:
        if key not in attrs:
            raise ShardError(f"{path}: attribute '{key}': expected, missing (found {sorted(map(str, attrs))})")
    _check_version(path, attrs["schema_version"])
    num_joints = len(list(attrs["joint_names"]))
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    dtypes = {k: np.dtype(v.dtype) for k, v in arrays.items()}
    _check_layout(path, shapes, dtypes, num_joints)


def _check_layout(path, shapes: dict, dtypes: dict, num_joints: int) -> int:
    for name in REQUIRED_FIELDS:
        if name not in shapes:
            raise ShardError(f"{path}: field '{name}': expected dataset, missing (found {sorted(shapes)})")
    num_frames = None
    for name, shape in shapes.items():
        if name not in FIELDS:
            raise ShardError(f"{path}: field '{name}': not in the schema (known: {sorted(FIELDS)})")
        dtype, trailing = FIELDS[name]
        if dtypes[name] != np.dtype(dtype):
            raise ShardError(f"{path}: field '{name}': expected dtype {np.dtype(dtype)}, found {dtypes[name]}")
        if len(shape) != 1 + len(trailing):
            raise ShardError(f"{path}: field '{name}': expected rank {1 + len(trailing)} "
                             f"[F{''.join(', ' + str(t if t is not None else '*') for t in trailing)}], "
                             f"found shape {shape}")
        for got, want in zip(shape[1:], trailing):
            want = num_joints if want == "J" else want
            if want is not None and got != want:
                raise ShardError(f"{path}: field '{name}': expected trailing shape "
                                 f"{tuple(num_joints if t == 'J' else t for t in trailing)}, found shape {shape}")
        if num_frames is None:
            num_frames = shape[0]
        elif shape[0] != num_frames:
            raise ShardError(f"{path}: field '{name}': expected {num_frames} frames (like the other fields), "
                             f"found {shape[0]}")
    return num_frames


def _check_version(path, version) -> int:
    try:
        v = int(version)
    except (TypeError, ValueError):
        v = None
    if v not in SUPPORTED_SCHEMA_VERSIONS:
        raise ShardError(f"{path}: attribute 'schema_version': expected one of {SUPPORTED_SCHEMA_VERSIONS} (this "
                         f"library writes {SCHEMA_VERSION}), found {version!r}")
    return v


def read_attrs(path: str) -> dict:
    """File attributes decoded (camera stays a JSON string; joint_names -> list)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _attrs_of(f)
    except H5_ERRORS as e:
        raise ShardError(f"{path}: cannot open as HDF5 (missing, truncated or corrupt): {e}") from e


def _attrs_of(f) -> dict:
    out = {}
    for key, value in f.attrs.items():
        key = str(_decode(key))  # a damaged name can come back as bytes
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = [_decode(v) for v in value.tolist()]
        elif isinstance(value, np.generic):
            out[key] = _decode(value.item())
        else:
            out[key] = _decode(value)
    return out


def validate_shard(path: str) -> dict:
    """Check a shard's structure and its attributes' digest without reading its data.

    Returns:
      dict ``num_frames``, ``shapes`` (field -> shape), ``dtypes``, ``attrs`` (without ``attrs_crc32``, which is
      checked here), ``digests`` (field -> stored row digests uint32 [F]; empty for a version-1 shard).
    Raises:
      ShardError naming the file and the offending field or attribute.
    """
    import h5py

    if not os.path.isfile(path):
        raise ShardError(f"{path}: expected a shard file, not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = _attrs_of(f)
            shapes, dtypes = {}, {}
            for name, obj in f.items():
                name = str(_decode(name))  # a damaged name can come back as bytes
                if not isinstance(obj, h5py.Dataset):
                    raise ShardError(f"{path}: field '{name}': expected a dataset, found a group")
                shapes[name] = tuple(obj.shape)
                dtypes[name] = np.dtype(obj.dtype)
            num_frames, version = _check_structure(path, attrs, shapes, dtypes)
            digests = digests_of(f, path, version, num_frames)
    except ShardError:
        raise
    except H5_ERRORS + (TypeError,) as e:
        raise ShardError(f"{path}: cannot open as HDF5 (missing, truncated or corrupt): {e}") from e
    return {"num_frames": num_frames, "shapes": shapes, "dtypes": dtypes, "attrs": attrs, "digests": digests}


def _check_structure(path, attrs: dict, shapes: dict, dtypes: dict):
    """Attributes (required, version, digest, camera, joint_names) and layout; pops ``attrs_crc32`` from
    ``attrs``. Returns (num_frames, schema_version)."""
    for key in REQUIRED_ATTRS:
        if key not in attrs:
            raise ShardError(f"{path}: attribute '{key}': expected, missing (found {sorted(map(str, attrs))})")
    version = _check_version(path, attrs["schema_version"])
    stored = attrs.pop(ATTRS_DIGEST, None)
    try:
        json.loads(attrs["camera"])
    except (TypeError, ValueError) as e:
        raise ShardError(f"{path}: attribute 'camera': expected JSON of fx, fy, cx, cy, width, height, "
                         f"found {attrs['camera']!r}") from e
    if not isinstance(attrs["joint_names"], list):
        raise ShardError(f"{path}: attribute 'joint_names': expected a list of names, found {attrs['joint_names']!r}")
    num_frames = _check_layout(path, shapes, dtypes, len(attrs["joint_names"]))
    # After the structure checks, so that a file that breaks the schema gets the more specific message.
    if version >= DIGESTS_SINCE and (type(stored) is not int or stored != attrs_digest(attrs)):
        raise ShardError(f"{path}: attribute '{ATTRS_DIGEST}': expected the CRC-32 of the file attributes "
                         f"({attrs_digest(attrs):08x}), found {stored!r}: an attribute is damaged")
    return num_frames, version


def load_shard(path: str, fields=None) -> dict:
    """Read fields of a shard into memory, checking that the data is readable, matches its digests and is finite.

    Args:
      fields: iterable of field names (default: all present).
    Returns:
      field -> numpy array (frames first).
    Raises:
      ShardError naming the file (and field) on any failure, including a truncated file.
    """
    import h5py

    info = validate_shard(path)
    names = list(info["shapes"]) if fields is None else list(fields)
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for name in names:
                if name not in f:
                    raise ShardError(f"{path}: field '{name}': requested but missing (found {sorted(f.keys())})")
                try:
                    out[name] = f[name][()]
                except (OSError, RuntimeError, ValueError, KeyError) as e:
                    raise ShardError(f"{path}: field '{name}': cannot read data (truncated or corrupt): {e}") from e
                check_digests(path, name, out[name], info["digests"].get(name))
                if out[name].dtype.kind == "f" and not np.all(np.isfinite(out[name])):
                    raise ShardError(f"{path}: field '{name}': expected finite values, found NaN/Inf")
    except ShardError:
        raise
    except H5_ERRORS as e:
        raise ShardError(f"{path}: cannot open as HDF5 (missing, truncated or corrupt): {e}") from e
    return out


def list_shards(data_dir: str, split: str) -> list:
    """Sorted finished shard files ``{data_dir}/{split}-*.h5`` (``.tmp`` files ignored)."""
    if not os.path.isdir(data_dir):
        raise ShardError(f"{data_dir}: expected a directory of shards, not found")
    names = sorted(n for n in os.listdir(data_dir) if n.startswith(split + "-") and n.endswith(".h5"))
    return [os.path.join(data_dir, n) for n in names]
