"""Shards -> tf.data, the input contract of every model.

READER OUTPUT (one element = one batch dict; B = batch size; float32 unless said):

  points     [B, P, 3]  hand points, NORMALISED (P = 1024 for synth)
  joints     [B, J, 3]  ground-truth joints, normalised with the SAME centre/scale/rotation
  vertices   [B, V, 3]  ground-truth mesh, same normalisation -- only when every shard
                        has ``vertices`` and include_vertices=True (synthetic data)
  center     [B, 3]     normalisation centre, mm, camera frame
  scale      [B]        normalisation scale, mm (150 mm fixed for synth by default)
  rotation   [B, 3, 3]  normalisation rotation (identity unless the shards are OBB-normalised)
  aug_matrix [B, 3, 3]  augmentation M = S R (identity when augment=False)
  aug_shift  [B, 3]     augmentation shift t, normalised units (zeros when augment=False)
  subject    [B] int32, frame_id [B] int64 -- when the shards have them

Normalised coordinates of the batch (points, joints, vertices alike):
  x = M ((p_mm - center) @ rotation / scale) + t       (per sample, row-vector form)
To get millimetres back:
  * for losses/metrics in mm on an augmented batch, ``scale * x`` is the metric
    offset from the centre (augmentation acts as a new virtual sample; x/y scaling
    by up to 1.2 is part of it, as the paper intends), and
  * ``to_camera_mm(x, batch)`` undoes the augmentation and the normalisation exactly
    (original camera frame, mm).

The pipeline: list of shard files -> (shuffle files, repeat) -> parallel interleave
(each shard read whole with h5py in a tf.py_function, normalised, unbatched) ->
frame shuffle buffer -> batch -> augmentation (vectorised, stateless seeds from
``tf.data.Dataset.random(seed)``) -> prefetch. Every shard is validated when the
dataset is built (structure) and again when read (data); errors name the file and
the field.

Legend: B batch, P points, J joints, V vertices.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from hsr_tf.data import augment as augment_lib
from hsr_tf.data import shards as shards_lib
from hsr_tf.data.shards import ShardError

ID_FIELDS = {"subject": tf.int32, "frame_id": tf.int64}


def _inspect(files, include_vertices):
    """Validate every shard; return (non-empty files, field list, per-field trailing shapes)."""
    if not files:
        raise ShardError("no shard files given (expected at least one '<split>-*.h5')")
    infos = [(f, shards_lib.validate_shard(f)) for f in files]
    common = set.intersection(*(set(info["shapes"]) for _, info in infos))
    fields = ["points", "joints", "center", "scale"]
    if "rotation" in common:
        fields.append("rotation")
    if include_vertices and "vertices" in common:
        fields.append("vertices")
    fields += [k for k in ID_FIELDS if k in common]
    ref_file, ref = infos[0]
    trailing = {k: ref["shapes"][k][1:] for k in fields}
    for path, info in infos[1:]:
        for k in fields:
            if info["shapes"][k][1:] != trailing[k]:
                raise ShardError(f"{path}: field '{k}': expected per-frame shape {trailing[k]} like {ref_file}, "
                                 f"found {info['shapes'][k][1:]}")
        if info["attrs"]["joint_names"] != ref["attrs"]["joint_names"]:
            raise ShardError(f"{path}: attribute 'joint_names': expected {ref['attrs']['joint_names']} like "
                             f"{ref_file}, found {info['attrs']['joint_names']}")
    nonempty = [p for p, info in infos if info["num_frames"] > 0]
    if not nonempty:
        raise ShardError(f"all {len(files)} shards are empty (0 frames), e.g. {files[0]}")
    total = sum(info["num_frames"] for _, info in infos)
    return nonempty, fields, trailing, total


def _load_normalised(path, fields):
    """Read one shard and normalise joints/vertices like its points. Returns arrays in `fields` order."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    data = shards_lib.load_shard(path, fields)
    center = data["center"].astype(np.float32)
    scale = data["scale"].astype(np.float32)
    for key in ("joints", "vertices"):
        if key in data:
            x = (data[key] - center[:, None, :])
            if "rotation" in data:
                x = np.einsum("fnj,fji->fni", x, data["rotation"])
            data[key] = (x / scale[:, None, None]).astype(np.float32)
    return [data[k] for k in fields]


def _dtype(field):
    return ID_FIELDS.get(field, tf.float32)


def make_dataset(data_dir: str | None = None, split: str = "train", files=None, batch_size: int = 32,
                 shuffle: bool = True, augment: bool = False,
                 augment_config: augment_lib.AugmentConfig | None = None, seed: int = 0, repeat: bool = False,
                 include_vertices: bool = True, cycle_length: int = 4, shuffle_buffer: int = 8192,
                 drop_remainder: bool = False, prefetch: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Build the batched tf.data pipeline described in the module docstring.

    Args:
      data_dir, split: read ``{data_dir}/{split}-*.h5``; or give ``files`` directly.
      batch_size: B. shuffle: shuffle shards and frames (seeded). augment: apply
        section III-E-1 augmentation with ``augment_config`` (seeded by ``seed``).
      repeat: repeat forever (shards reshuffled each pass).
      include_vertices: yield ``vertices`` when the shards have them.
      cycle_length: shards read concurrently (parallel interleave).
      shuffle_buffer: frames in the shuffle buffer.
    Returns:
      tf.data.Dataset of dicts (see READER OUTPUT).
    Raises:
      ShardError naming the file and field for any invalid shard.
    """
    if files is None:
        if data_dir is None:
            raise ValueError("make_dataset: expected data_dir or files, found neither")
        files = shards_lib.list_shards(data_dir, split)
        if not files:
            raise ShardError(f"{data_dir}: expected shards named '{split}-*.h5', found none")
    files = [str(f) for f in files]
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, found {batch_size}")
    files, fields, trailing, _ = _inspect(files, include_vertices)
    out_types = [_dtype(k) for k in fields]

    def load(path):
        arrays = tf.numpy_function(lambda p: _load_normalised(p, fields), [path], out_types, stateful=False)
        item = {}
        for k, a in zip(fields, arrays):
            a.set_shape((None,) + tuple(trailing[k]))
            item[k] = a
        return tf.data.Dataset.from_tensor_slices(item)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.interleave(load, cycle_length=max(1, min(cycle_length, len(files))),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:  # file order, frame order
        ds = ds.interleave(load, cycle_length=1)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

    def finish(batch, aug_seed=None):
        b = tf.shape(batch["points"])[0]
        if "rotation" not in batch:
            batch["rotation"] = tf.eye(3, batch_shape=[b])
        if aug_seed is not None:
            batch = augment_lib.augment_batch(batch, aug_seed, augment_config or augment_lib.AugmentConfig())
        else:
            batch["aug_matrix"] = tf.eye(3, batch_shape=[b])
            batch["aug_shift"] = tf.zeros([b, 3])
        return batch

    if augment:
        seeds = tf.data.Dataset.random(seed=seed + 2).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(prefetch)


def to_camera_mm(x, batch: dict, undo_augmentation: bool = True):
    """Map normalised coordinates of a batch back to camera-frame millimetres.

    Args:
      x: [B, N, 3] normalised (points, joints, vertices or predictions).
      batch: a reader batch (needs center, scale, rotation; aug_matrix/aug_shift if
        undo_augmentation).
    Returns:
      [B, N, 3] float32 mm: scale * (M^-1 (x - t)) @ rotation^T + center.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 3 or x.shape[-1] != 3:
        raise ValueError(f"x: expected shape [B, N, 3], found {x.shape}")
    if undo_augmentation:
        x = augment_lib.invert_transform(x, batch["aug_matrix"], batch["aug_shift"])
    x = x * batch["scale"][:, None, None]
    x = tf.einsum("bnj,bij->bni", x, batch["rotation"])
    return x + batch["center"][:, None, :]


def count_frames(data_dir: str, split: str) -> int:
    """Total frames of a split (validates every shard)."""
    return sum(shards_lib.validate_shard(f)["num_frames"] for f in shards_lib.list_shards(data_dir, split))
