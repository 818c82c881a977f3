"""RGB hand shards (synthetic renders, STB, RHD): schema, atomic writer, validator and loader.

One HDF5 file per shard (``train-00000.h5``, ``test-00000.h5``, ...), ``F`` frames; every dataset has frames as
its first axis and is chunked by frame and compressed (gzip by default, lzf on request).

| dataset     | dtype   | shape        | meaning                                                              |
|-------------|---------|--------------|----------------------------------------------------------------------|
| image       | uint8   | [F, S, S, 3] | RGB crop, the hand only (background black, i.e. premultiplied)       |
| mask        | uint8   | [F, S, S]    | hand coverage 0..255 (255 = pixel fully covered; soft at the edges)  |
| depth       | uint16  | [F, S, S]    | depth of the same crop, mm, 0 = none                                 |
| joints      | float32 | [F, J, 3]    | joints, camera frame mm (x right, y up, z away), our joint order     |
| joints_uv   | float32 | [F, J, 2]    | joints projected into the crop, px (u right, v down, pixel centres)  |
| camera      | float32 | [F, 4]       | fx, fy, cx, cy of the S x S crop (u = cx + fx x/z, v = cy - fy y/z)  |
| bone_scale  | float32 | [F]          | mm, |joint 9 - joint 10| (middle MCP -> PIP), the global hand scale |
| root_depth  | float32 | [F]          | mm, z of joint 0 (the wrist)                                         |
| mirrored    | uint8   | [F]          | 1 = a left hand mirrored into our right-hand convention, else 0      |
| frame_index | int64   | [F]          | unique id of the frame within the dataset (synthetic: frame id)      |
| vertices    | float32 | [F, V, 3]    | optional; ground-truth mesh, camera mm (V = 1305, synthetic only)    |
| subject     | int32   | [F]          | optional; generating subject / person id                             |
| sequence    | int32 or str | [F]     | optional; sequence id or name (e.g. STB 'B1Counting')                |
| pose, view  | int32   | [F]          | optional; synthetic pose-library index / viewpoint index             |
| skin_tone, lighting | int32 | [F]    | optional; synthetic skin-tone / lighting set-up index (data_prep.synth_rgb) |

Pixel convention: integer pixel (row r, col c) is the ray through (u, v) = (c, r) (pixel centres), images are
indexed ``image[v, u]``. A crop resized by factor k maps u -> (u + 0.5) k - 0.5 (and cx, cy alike; fx, fy -> k f).

File attributes (required): ``dataset`` (str), ``split`` (str), ``image_size`` (int S), ``joint_names``
(list of J str), ``schema_version`` (1 or 2; the writer writes RGB_SCHEMA_VERSION = 2), ``kind`` (== "rgb",
added by the writer). Writers may add more (e.g. ``root_convention`` for real sets, ``skin_tones``, ``lighting``).

Content digests (schema version 2, required there; version-1 shards have none and stay readable unchecked),
as in the depth shards (hsr_tf.data.shards): every dataset carries ``crc32`` (uint32 [F], CRC-32 of each
frame's row), checked on every row read (the reader checks a frame's image, mask, depth and vertices when it
reads them, the small fields when a shard is first used); the file carries ``attrs_crc32`` (the other file
attributes), checked by the validator. A damaged HDF5 header can otherwise load changed values silently.

The writer checks the contract's redundancies too: ``root_depth`` == joints[:, 0, 2] and ``bone_scale`` ==
|joints[:, 9] - joints[:, 10]| (0.01 mm), and ``joints_uv`` == projection of ``joints`` by ``camera``
(0.05 px), so a shard that disagrees with itself is never written.

Legend: F frames, S crop size (pixels), J joints (21), V mesh vertices.
"""
from __future__ import annotations

import os

import numpy as np

from hsr_tf.data import shard_integrity, shards

RGB_SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)  # 1: no content digests (older shards), 2: digests required
KIND = "rgb"
REQUIRED_ATTRS = ("dataset", "split", "image_size", "joint_names", "schema_version", "kind")

# name -> (dtype, trailing shape); 'S' = image_size attr, 'J' = len(joint_names), None = any (constant per file);
# dtype 'seq' = int32 or a string dtype.
FIELDS = {
    "image": (np.uint8, ("S", "S", 3)),
    "mask": (np.uint8, ("S", "S")),
    "depth": (np.uint16, ("S", "S")),
    "joints": (np.float32, ("J", 3)),
    "joints_uv": (np.float32, ("J", 2)),
    "camera": (np.float32, (4,)),
    "bone_scale": (np.float32, ()),
    "root_depth": (np.float32, ()),
    "mirrored": (np.uint8, ()),
    "frame_index": (np.int64, ()),
    "vertices": (np.float32, (None, 3)),
    "subject": (np.int32, ()),
    "sequence": ("seq", ()),
    "pose": (np.int32, ()),
    "view": (np.int32, ()),
    "skin_tone": (np.int32, ()),
    "lighting": (np.int32, ()),
}
REQUIRED_FIELDS = ("image", "mask", "depth", "joints", "joints_uv", "camera", "bone_scale", "root_depth",
                   "mirrored", "frame_index")
UV_TOLERANCE_PX = 0.05
MM_TOLERANCE = 0.01


class RGBShardError(ValueError):
    """An RGB shard is missing, unreadable, truncated, or does not follow the schema."""


def _is_string_dtype(dtype) -> bool:
    return np.dtype(dtype).kind in "OSU"


def _cast(path, name, value):
    arr = np.asarray(value)
    dtype = FIELDS[name][0]
    if dtype == "seq":
        if _is_string_dtype(arr.dtype):
            return np.array([str(v.decode() if isinstance(v, bytes) else v) for v in arr.reshape(-1)],
                            dtype=object).reshape(arr.shape)
        if arr.dtype.kind not in "iu":
            raise RGBShardError(f"{path}: field '{name}': expected int or str values, found dtype {arr.dtype}")
        return arr.astype(np.int32)
    if np.dtype(dtype).kind in "iu" and arr.dtype.kind == "f":
        raise RGBShardError(f"{path}: field '{name}': expected integer values ({np.dtype(dtype)}), found {arr.dtype}")
    return arr.astype(dtype, copy=False)


def project(joints, camera):
    """Project camera-frame points with per-frame intrinsics.

    Args:
      joints: [..., N, 3] mm (z > 0). camera: [..., 4] (fx, fy, cx, cy).
    Returns:
      [..., N, 2] float64 (u, v) px: u = cx + fx x/z, v = cy - fy y/z.
    """
    j = np.asarray(joints, dtype=np.float64)
    c = np.asarray(camera, dtype=np.float64)[..., None, :]
    return np.stack([c[..., 2] + c[..., 0] * j[..., 0] / j[..., 2],
                     c[..., 3] - c[..., 1] * j[..., 1] / j[..., 2]], axis=-1)


def _check_layout(path, shapes: dict, dtypes: dict, attrs: dict) -> int:
    """Structure check shared by the writer and the validator. Returns the number of frames."""
    for key in REQUIRED_ATTRS:
        if key not in attrs:
            raise RGBShardError(f"{path}: attribute '{key}': expected, missing (found {sorted(attrs)})")
    try:
        version = int(attrs["schema_version"])
    except (TypeError, ValueError):
        version = None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise RGBShardError(f"{path}: attribute 'schema_version': expected one of {SUPPORTED_SCHEMA_VERSIONS} "
                            f"(this library writes {RGB_SCHEMA_VERSION}), found {attrs['schema_version']!r}")
    if attrs["kind"] != KIND:
        raise RGBShardError(f"{path}: attribute 'kind': expected {KIND!r}, found {attrs['kind']!r}")
    if not isinstance(attrs["joint_names"], (list, tuple)):
        raise RGBShardError(f"{path}: attribute 'joint_names': expected a list of names, found "
                            f"{attrs['joint_names']!r}")
    try:
        size = int(attrs["image_size"])
    except (TypeError, ValueError):
        raise RGBShardError(f"{path}: attribute 'image_size': expected an int, found {attrs['image_size']!r}") from None
    if size < 1:
        raise RGBShardError(f"{path}: attribute 'image_size': expected >= 1, found {size}")
    sub = {"S": size, "J": len(attrs["joint_names"])}
    for name in REQUIRED_FIELDS:
        if name not in shapes:
            raise RGBShardError(f"{path}: field '{name}': expected dataset, missing (found {sorted(shapes)})")
    num_frames = None
    for name, shape in shapes.items():
        if name not in FIELDS:
            raise RGBShardError(f"{path}: field '{name}': not in the RGB schema (known: {sorted(FIELDS)})")
        dtype, trailing = FIELDS[name]
        got = np.dtype(dtypes[name])
        if dtype == "seq":
            ok = _is_string_dtype(got) or got == np.dtype(np.int32)
        else:
            ok = got == np.dtype(dtype)
        if not ok:
            raise RGBShardError(f"{path}: field '{name}': expected dtype "
                                f"{'int32 or str' if dtype == 'seq' else np.dtype(dtype)}, found {got}")
        want = tuple(sub.get(t, t) if isinstance(t, str) else t for t in trailing)
        if len(shape) != 1 + len(want) or any(w is not None and g != w for g, w in zip(shape[1:], want)):
            raise RGBShardError(f"{path}: field '{name}': expected shape [F, "
                                f"{', '.join('*' if w is None else str(w) for w in want)}], found {tuple(shape)}")
        if num_frames is None:
            num_frames = shape[0]
        elif shape[0] != num_frames:
            raise RGBShardError(f"{path}: field '{name}': expected {num_frames} frames (like the other fields), "
                                f"found {shape[0]}")
    return num_frames


def check_values(path, arrays: dict) -> None:
    """Value checks of in-memory arrays: finite floats, positive depth, mirrored 0/1, focal > 0 and the
    redundancies of the schema (root_depth, bone_scale, joints_uv). Raises RGBShardError naming the field."""
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise RGBShardError(f"{path}: field '{name}': expected finite values, found NaN/Inf")
    if len(arrays["joints"]) == 0:
        return
    joints, cam = arrays["joints"].astype(np.float64), arrays["camera"].astype(np.float64)
    if np.any(joints[..., 2] <= 0):
        raise RGBShardError(f"{path}: field 'joints': expected z > 0 (in front of the camera), found min z "
                            f"{joints[..., 2].min()}")
    if np.any(cam[:, :2] <= 0):
        raise RGBShardError(f"{path}: field 'camera': expected fx, fy > 0, found min {cam[:, :2].min()}")
    if not np.all(np.isin(arrays["mirrored"], (0, 1))):
        raise RGBShardError(f"{path}: field 'mirrored': expected 0 or 1, found {np.unique(arrays['mirrored'])}")
    err = np.abs(arrays["root_depth"] - joints[:, 0, 2]).max()
    if err > MM_TOLERANCE:
        raise RGBShardError(f"{path}: field 'root_depth': expected joints[:, 0, 2] (wrist z), found a difference "
                            f"of {err:.4f} mm")
    if joints.shape[1] > 10:
        err = np.abs(arrays["bone_scale"] - np.linalg.norm(joints[:, 9] - joints[:, 10], axis=-1)).max()
        if err > MM_TOLERANCE:
            raise RGBShardError(f"{path}: field 'bone_scale': expected |joints[:, 9] - joints[:, 10]| (middle "
                                f"MCP -> PIP), found a difference of {err:.4f} mm")
    err = np.abs(project(joints, cam) - arrays["joints_uv"]).max()
    if err > UV_TOLERANCE_PX:
        raise RGBShardError(f"{path}: field 'joints_uv': expected the projection of 'joints' by 'camera' "
                            f"(within {UV_TOLERANCE_PX} px), found a difference of {err:.3f} px")


def write_rgb_shard(path: str, arrays: dict, attrs: dict, compression: str = "gzip") -> None:
    """Validate and write an RGB shard atomically (``path + '.tmp'``, then ``os.replace``).

    Args:
      path: final file name (.../train-00000.h5).
      arrays: field -> array, frames first (see the table); unknown fields raise; values are cast to the
        schema dtypes (floats given for an integer field raise).
      attrs: dataset, split, image_size, joint_names (required) and any extra str/int/float/list-of-str
        values; schema_version and kind are added.
      compression: 'gzip' (level 4, portable) or 'lzf' (faster, h5py only).
    Raises:
      RGBShardError naming the file and field for any schema or value violation; ShardWriteError (an OSError)
      when the disk is full or the write fails, leaving no partial file and an existing ``path`` intact.
    """
    import h5py

    if compression not in ("gzip", "lzf"):
        raise ValueError(f"compression: expected 'gzip' or 'lzf', found {compression!r}")
    for k in arrays:
        if k not in FIELDS:
            raise RGBShardError(f"{path}: field '{k}': not in the RGB schema (known: {sorted(FIELDS)})")
    arrays = {k: _cast(path, k, v) for k, v in arrays.items()}
    attrs = dict(attrs)
    attrs["schema_version"] = RGB_SCHEMA_VERSION
    attrs["kind"] = KIND
    shapes = {k: v.shape for k, v in arrays.items()}
    dtypes = {k: v.dtype for k, v in arrays.items()}
    num_frames = _check_layout(path, shapes, dtypes, attrs)
    check_values(path, arrays)
    def fill(f):
        for name, arr in arrays.items():
            if _is_string_dtype(arr.dtype):  # fixed-length UTF-8: no global heap (see shard_integrity.fixed_text)
                data, dtype = shard_integrity.fixed_text(arr)
                ds = f.create_dataset(name, data=data, dtype=dtype)
            else:
                kw = {}
                if num_frames > 0 and arr.ndim > 1:
                    kw = {"chunks": (1,) + arr.shape[1:], "compression": compression}
                    if compression == "gzip":
                        kw["compression_opts"] = 4
                ds = f.create_dataset(name, data=arr, **kw)
            ds.attrs[shard_integrity.DIGEST_ATTR] = shard_integrity.row_digests(arr)
        for key, value in attrs.items():
            shard_integrity.write_attr(f.attrs, key, value)
        # Digest of the attributes as the reader will decode them (so types round-trip identically).
        f.attrs[shard_integrity.ATTRS_DIGEST] = np.uint32(shard_integrity.attrs_digest(_attrs_of(f)))

    # In memory, then one checked write + rename: a full disk raises ShardWriteError, never a torn shard.
    shards.write_hdf5_atomically(path, fill)


def check_digests(path, name, data, stored, start: int = 0) -> None:
    """Rows ``data`` (frames ``start ..``) against their stored digests (None: version-1 shard, not checked).

    Raises RGBShardError naming the file, field and frame on a mismatch (see hsr_tf.data.shard_integrity.check_digests)."""
    shard_integrity.check_digests(path, name, data, stored, start, error=RGBShardError)


def _attrs_of(f) -> dict:
    out = {}
    for key, value in f.attrs.items():
        key = key.decode("utf-8") if isinstance(key, bytes) else str(key)  # a damaged name can come back as bytes
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
        if isinstance(out[key], bytes):
            out[key] = out[key].decode()
    return out


def validate_rgb_shard(path: str) -> dict:
    """Check an RGB shard's structure without reading its data.

    Returns:
      dict ``num_frames``, ``shapes`` (field -> shape), ``dtypes``, ``attrs`` (without ``attrs_crc32``, which is
      checked here), ``digests`` (field -> stored row digests uint32 [F]; empty for a version-1 shard).
    Raises:
      RGBShardError naming the file and the offending field or attribute.
    """
    import h5py

    if not os.path.isfile(path):
        raise RGBShardError(f"{path}: expected an RGB shard file, not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = _attrs_of(f)
            stored = attrs.pop(shard_integrity.ATTRS_DIGEST, None)
            shapes, dtypes = {}, {}
            for name, obj in f.items():
                name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
                if not isinstance(obj, h5py.Dataset):
                    raise RGBShardError(f"{path}: field '{name}': expected a dataset, found a group")
                shapes[name] = tuple(obj.shape)
                dtypes[name] = np.dtype(obj.dtype)
            num_frames = _check_layout(path, shapes, dtypes, attrs)
            version = int(attrs["schema_version"])
            digests = shard_integrity.digests_of(f, path, version, num_frames, error=RGBShardError)
    except RGBShardError:
        raise
    except shards.H5_ERRORS + (TypeError,) as e:
        raise RGBShardError(f"{path}: cannot open as HDF5 (missing, truncated or corrupt): {e}") from e
    if version >= shard_integrity.DIGESTS_SINCE and (type(stored) is not int or stored != shard_integrity.attrs_digest(attrs)):
        raise RGBShardError(f"{path}: attribute '{shard_integrity.ATTRS_DIGEST}': expected the CRC-32 of the file attributes "
                            f"({shard_integrity.attrs_digest(attrs):08x}), found {stored!r}: an attribute is damaged")
    return {"num_frames": num_frames, "shapes": shapes, "dtypes": dtypes, "attrs": attrs, "digests": digests}


def read_rgb_shard(path: str, fields=None, start: int = 0, stop: int | None = None, check: bool = True):
    """Read fields of an RGB shard (frames [start, stop)) into memory, checking the rows against their digests.

    Args:
      fields: iterable of field names (default: all present). check: run :func:`check_values` when every
        field it needs was read.
    Returns:
      (arrays: field -> numpy array, frames first; attrs dict). String sequences come back as str objects.
    Raises:
      RGBShardError naming the file (and field) on any failure, including a truncated file.
    """
    import h5py

    info = validate_rgb_shard(path)
    names = list(info["shapes"]) if fields is None else list(fields)
    first = range(info["num_frames"])[start:stop].start  # the frame index of the first row read (digests)
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for name in names:
                if name not in f:
                    raise RGBShardError(f"{path}: field '{name}': requested but missing (found {sorted(f.keys())})")
                try:
                    data = f[name][start:stop]
                except (OSError, RuntimeError, ValueError) as e:
                    raise RGBShardError(f"{path}: field '{name}': cannot read data (truncated or corrupt): {e}") from e
                check_digests(path, name, data, info["digests"].get(name), first)
                if _is_string_dtype(data.dtype):
                    data = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in data], dtype=object)
                out[name] = data
    except RGBShardError:
        raise
    except shards.H5_ERRORS as e:
        raise RGBShardError(f"{path}: cannot open as HDF5 (missing, truncated or corrupt): {e}") from e
    if check:
        needed = ("joints", "camera", "joints_uv", "root_depth", "bone_scale", "mirrored")
        if all(k in out for k in needed):
            check_values(path, out)
        else:
            for name, arr in out.items():
                if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                    raise RGBShardError(f"{path}: field '{name}': expected finite values, found NaN/Inf")
    return out, info["attrs"]


def list_rgb_shards(data_dir: str, split: str) -> list:
    """Sorted finished shard files ``{data_dir}/{split}-*.h5`` (``.tmp`` files ignored)."""
    if not os.path.isdir(data_dir):
        raise RGBShardError(f"{data_dir}: expected a directory of RGB shards, not found")
    names = sorted(n for n in os.listdir(data_dir) if n.startswith(split + "-") and n.endswith(".h5"))
    return [os.path.join(data_dir, n) for n in names]
