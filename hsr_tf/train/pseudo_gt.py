"""Pseudo-ground-truth meshes of weak supervision (Ge et al. 2019, section 4.4): make, store, load, attach.

Legend: B batch, F frames of a shard, S crop size (px), H heat-map size, V vertices (1305), J joints (21).

The pretrained (fully supervised) network is run on the training images of the target set with the
GROUND-TRUTH heat-maps in place of its own (:func:`predict_with_heatmaps`: hourglass features, given
heat-maps -> residual encoder -> mesh Graph CNN), without augmentation. Its meshes are stored beside the
shards, one file per shard: ``<data_dir>/pseudo_gt/<tag>/<shard name>`` (a sub-folder, so the shard globs
``{split}-*.h5`` never see them), written to ``.tmp`` and renamed, and skipped when already complete
(:func:`generate`). Each file holds, per frame of its shard (same order):

  frame_index  int64   [F]        the shard's frame_index (the join key)
  vertices     float32 [F, V, 3]  pseudo-GT mesh, camera mm, in the STORED crop's camera frame
  joints_uv    float32 [F, J, 2]  the stored 2-D joints (px at the stored size), to undo the reader's jitter
  camera       float32 [F, 4]     the stored crop camera
attrs: ``source`` (shard file name), ``num_frames``, ``model`` (checkpoint path), ``kind`` = "pseudo_gt".

Training with augmentation rotates the camera about its optical axis (hsr_tf.data.rgb_reader): edge lengths
do not change but the Laplacian term compares offset vectors, so the stored mesh is rotated into the batch's
frame by :func:`augmentation_rotation`, recovered from the stored and the batch's 2-D joints (an affine map
that is exact for the reader's warp). :func:`attach` adds ``pseudo_vertices`` and ``has_pseudo`` to batches.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from hsr_tf.data import rgb_reader
from hsr_tf.geometry import uvd as uvd_lib

SUBDIR = "pseudo_gt"
KIND = "pseudo_gt"


class PseudoGTError(ValueError):
    """A pseudo-GT file is missing, incomplete or does not match its shard."""


def predict_with_heatmaps(model, inputs, heatmaps, training=False):
    """Mesh of an :class:`hsr_tf.models.rgb_mesh_net.RGBMeshNet` ("mesh" variant) fed given heat-maps.

    Args:
      model: RGBMeshNet with ``variant == "mesh"``. inputs: its input dict (image [B,S,S,3] in [0, 1], camera,
        root_depth, bone_scale). heatmaps: [B, H, H, J] (the reader's ground-truth heat-maps).
    Returns:
      dict ``uvd`` [B, V, 3] (normalised), ``vertices`` [B, V, 3] camera mm.
    """
    if getattr(model, "variant", None) != "mesh":
        raise ValueError(f"model: pseudo-GT meshes need an RGBMeshNet of variant 'mesh', found "
                         f"{getattr(model, 'variant', type(model).__name__)!r}")
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    want = (model.heatmap_size, model.heatmap_size, model.num_joints)
    if tuple(heatmaps.shape[1:]) != want:
        raise ValueError(f"heatmaps: expected [B, {want[0]}, {want[1]}, {want[2]}], found {heatmaps.shape}")
    hg = model.hourglass(tf.cast(inputs["image"], tf.float32) - 0.5, training=training)  # as RGBMeshNet.call
    latent = model.encoder(hg["features"], heatmaps, training=training)
    uvd = model.mesh_gcn(latent, training=training)
    verts = uvd_lib.normalized_uvd_to_camera(uvd, inputs["camera"], inputs["root_depth"], inputs["bone_scale"],
                                             model.image_size)
    return {"uvd": uvd, "vertices": verts}


def output_dir(data_dir: str, tag: str) -> str:
    return os.path.join(data_dir, SUBDIR, tag)


def _complete(path: str, num_frames: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("kind") == KIND and int(f.attrs["num_frames"]) == num_frames \
                and f["vertices"].shape[0] == num_frames
    except (OSError, KeyError, ValueError):
        return False


def generate(model, data_dir: str, split: str = "train", tag: str = "default", batch_size: int = 16,
             model_path: str = "", log=print, heatmap_sigma=None) -> dict:
    """Writes the pseudo-GT file of every ``{split}-*.h5`` shard of ``data_dir`` that lacks a complete one.

    ``heatmap_sigma``: px at the heat-map size, as the model was trained with; default the RGB programs' rule,
    the paper's 4 px at 64 x 64 for a 256 input scaled with S (4 S / 256).
    Returns {"written": [...], "skipped": [...]} (shard file names).
    """
    import h5py

    from hsr_tf.data import rgb_shards

    files = rgb_shards.list_rgb_shards(data_dir, split)
    if not files:
        raise PseudoGTError(f"{data_dir}: expected RGB shards named '{split}-*.h5', found none")
    out = output_dir(data_dir, tag)
    os.makedirs(out, exist_ok=True)
    done = {"written": [], "skipped": []}

    @tf.function(reduce_retracing=True)  # eager Keras calls are several times slower
    def predict(inputs, heatmaps):
        return predict_with_heatmaps(model, inputs, heatmaps)["vertices"]

    for path in files:
        name = os.path.basename(path)
        target = os.path.join(out, name)
        stored, _ = rgb_shards.read_rgb_shard(path, fields=("frame_index", "joints_uv", "camera"))
        n = len(stored["frame_index"])
        if _complete(target, n):
            done["skipped"].append(name)
            continue
        sigma = 4.0 * model.image_size / 256.0 if heatmap_sigma is None else heatmap_sigma
        ds = rgb_reader.make_rgb_dataset(path, split, batch_size, image_size=model.image_size, augment=False,
                                         shuffle=False, seed=0, heatmap_size=model.heatmap_size,
                                         heatmap_sigma=sigma)
        verts, ids = [], []
        for batch in ds:
            inputs = {k: batch[k] for k in ("image", "camera", "root_depth", "bone_scale")}
            verts.append(predict(inputs, batch["heatmaps"]).numpy())
            ids.append(batch["frame_id"].numpy())
        ids = np.concatenate(ids) if ids else np.zeros([0], np.int64)
        if not np.array_equal(ids, stored["frame_index"]):
            raise PseudoGTError(f"{path}: the reader's frame order differs from the shard's frame_index")
        tmp = f"{target}.{os.getpid()}.tmp"  # two runs making the same pseudo-GT never share a temporary file
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frame_index", data=ids.astype(np.int64))
            f.create_dataset("vertices", data=np.concatenate(verts).astype(np.float32) if verts else
                             np.zeros([0, rgb_reader.NUM_VERTICES, 3], np.float32))
            f.create_dataset("joints_uv", data=np.asarray(stored["joints_uv"], np.float32))
            f.create_dataset("camera", data=np.asarray(stored["camera"], np.float32))
            f.attrs.update({"kind": KIND, "source": name, "num_frames": n, "model": str(model_path)})
        os.replace(tmp, target)
        done["written"].append(name)
        log(f"pseudo-GT: {target} ({n} frames)")
    return done


def default_tag(model_workdir: str) -> str:
    """The pseudo-GT sub-folder of a pretrained run: its workdir's base name (runs never mix)."""
    return os.path.basename(os.path.normpath(model_workdir))


def generate_from_workdir(data_dir: str, model_workdir: str, split: str = "train", tag=None, batch_size: int = 16,
                          checkpoint=None, log=print):
    """Loads a pretrained run (``hsr_tf.train.loop.load_model_from_workdir``) and writes the missing pseudo-GT
    files of ``data_dir``; returns (tag, :func:`generate`'s report)."""
    from hsr_tf.train import loop

    model, ckpt = loop.load_model_from_workdir(model_workdir, checkpoint)
    tag = tag or default_tag(model_workdir)
    report = generate(model, data_dir, split, tag, batch_size=batch_size, model_path=ckpt, log=log)
    log(f"pseudo-GT ({tag}, {ckpt}): {len(report['written'])} shards written, {len(report['skipped'])} skipped")
    return tag, report


def load(data_dir: str, split: str = "train", tag: str = "default") -> dict:
    """All pseudo-GT frames of a shard set: dict of NumPy arrays (frame_index, vertices, joints_uv, camera).

    Raises PseudoGTError when a shard has no complete pseudo-GT file.
    """
    import h5py

    from hsr_tf.data import rgb_shards

    parts = {k: [] for k in ("frame_index", "vertices", "joints_uv", "camera")}
    for path in rgb_shards.list_rgb_shards(data_dir, split):
        n = rgb_shards.validate_rgb_shard(path)["num_frames"]
        target = os.path.join(output_dir(data_dir, tag), os.path.basename(path))
        if not _complete(target, n):
            raise PseudoGTError(f"{target}: expected the complete pseudo-GT meshes of {path} ({n} frames), not "
                                f"found or incomplete: run `python -m data_prep.pseudo_gt` first")
        with h5py.File(target, "r") as f:
            for k in parts:
                parts[k].append(f[k][...])
    if not parts["frame_index"]:
        raise PseudoGTError(f"{data_dir}: expected RGB shards named '{split}-*.h5', found none")
    return {k: np.concatenate(v) for k, v in parts.items()}


def augmentation_rotation(stored_uv, stored_camera, uv, camera):
    """The camera rotation about the optical axis that the reader's jitter applied.

    The reader maps stored pixels to output pixels by an affine map whose linear part is
    [[fx' c / fx, fx' s / fy], [-fy' s / fx, fy' c / fy]] (fx, fy stored, fx', fy' augmented). It is fitted by
    least squares to the 2-D joints, and (c, s) read off and normalised.

    Args:
      stored_uv: [B, J, 2] px of the stored crop. stored_camera: [B, 4]. uv: [B, J, 2] px of the batch.
      camera: [B, 4] of the batch.
    Returns:
      R [B, 3, 3] with batch points = stored points @ R^T.
    """
    stored_uv = tf.cast(stored_uv, tf.float32)
    uv = tf.cast(uv, tf.float32)
    a = tf.concat([stored_uv, tf.ones_like(stored_uv[..., :1])], -1)  # [B, J, 3]
    m = tf.linalg.lstsq(tf.cast(a, tf.float64), tf.cast(uv, tf.float64))  # [B, 3, 2]: uv = a m
    m = tf.cast(m, tf.float32)
    fx, fy = tf.cast(stored_camera, tf.float32)[:, 0], tf.cast(stored_camera, tf.float32)[:, 1]
    fx1 = tf.cast(camera, tf.float32)[:, 0]
    c = m[:, 0, 0] * fx / fx1  # m[:, i, j]: input coordinate i -> output coordinate j
    s = m[:, 1, 0] * fy / fx1
    norm = tf.maximum(tf.sqrt(c * c + s * s), 1e-12)
    c, s = c / norm, s / norm
    zero, one = tf.zeros_like(c), tf.ones_like(c)
    return tf.stack([tf.stack([c, -s, zero], -1), tf.stack([s, c, zero], -1), tf.stack([zero, zero, one], -1)], 1)


def attach(dataset: tf.data.Dataset, pseudo: dict) -> tf.data.Dataset:
    """Adds ``pseudo_vertices`` [B, V, 3] (rotated into the batch's camera frame) and ``has_pseudo`` [B] (0 for
    frames without a pseudo-GT mesh, whose vertices are then zeros) to batches of hsr_tf.data.rgb_reader."""
    ids = tf.constant(np.asarray(pseudo["frame_index"], np.int64))
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, tf.range(tf.size(ids, tf.int64),
                                                                                         dtype=tf.int64)), -1)
    verts = tf.constant(np.asarray(pseudo["vertices"], np.float32))
    uv = tf.constant(np.asarray(pseudo["joints_uv"], np.float32))
    cam = tf.constant(np.asarray(pseudo["camera"], np.float32))

    def add(batch):
        row = table.lookup(batch["frame_id"])
        has = row >= 0
        r = tf.maximum(row, 0)
        rot = augmentation_rotation(tf.gather(uv, r), tf.gather(cam, r), batch["joints_uv"], batch["camera"])
        v = tf.einsum("bvc,bkc->bvk", tf.gather(verts, r), rot)
        out = dict(batch)
        out["pseudo_vertices"] = tf.where(has[:, None, None], v, tf.zeros_like(v))
        out["has_pseudo"] = tf.cast(has, tf.float32)
        return out

    return dataset.map(add)
