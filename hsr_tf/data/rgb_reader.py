"""RGB shards -> tf.data: background compositing, crop jitter, colour jitter, 2-D heat-maps.

READER OUTPUT (one element = one batch dict; B batch, S = image_size, H = heatmap_size; float32 unless said):

  image        [B, S, S, 3]  RGB in [0, 1], the stored hand composited over a background
  mask         [B, S, S]     hand coverage in [0, 1]
  depth        [B, S, S]     reference depth, mm, 0 = none (nearest-neighbour warped)
  heatmaps     [B, H, H, 21] Gaussians (sigma = heatmap_sigma px at H x H, peak 1) at joints_uv mapped to H
  joints       [B, 21, 3]    camera mm (x right, y up, z away)
  joints_uv    [B, 21, 2]    px in the S x S crop (pixel centres, u right, v down)
  camera       [B, 4]        fx, fy, cx, cy of the (augmented) S x S crop: joints_uv = project(joints, camera)
  vertices     [B, 1305, 3]  camera mm (zeros when the shard has none)
  has_vertices [B]           1 / 0
  bone_scale   [B]           mm (|joint 9 - joint 10|; unchanged by augmentation)
  root_depth   [B]           mm (z of joint 0; unchanged: the rotation is about the optical axis)
  mirrored     [B]           1 / 0
  frame_id     [B] int64     the shard's frame_index (unique within a dataset)

Geometry of the crop jitter (exact for any fx != fy): the camera is rotated about its optical axis by beta
(3-D points X -> R_z(beta) X, so joints and vertices rotate and z is unchanged), its focal lengths scaled by
s (zoom), and its principal point moved so that the stored crop's centre lands at the output centre + t.
For a rotation about z the induced image map is affine, so the warp of image, mask and depth is one affine
``ImageProjectiveTransformV3`` (output pixel -> input pixel, integer coordinates = pixel centres), and
joints_uv is moved by the same map (tests check that it equals the projection of the new joints by the new
camera). With augment=False, beta = 0, s = 1, t = 0; a shard of another size than image_size is resized
(u -> (u + 0.5) k - 0.5, k = image_size / stored size); at the stored size nothing is warped.

Colour jitter (augment=True): one affine colour map per frame (``colour_matrix``: brightness, contrast about
the mean colour, saturation towards Rec. 601 luma, hue as a rotation about the grey axis), then zero-mean
uniform camera noise, clipped to [0, 1]. Speed and its history: docs/rgb_synthetic_data.md.

Determinism (the resume contract of hsr_tf/train/loop.py): the frame order of epoch e is the permutation
``np.random.default_rng([seed, e])`` of all frames (file order when shuffle=False), and every random draw of
a frame (augmentation, background) comes from a stateless seed folded from (seed, e, frame position in the
file list), so the batches of (seed, epoch) are the same every time, whatever the parallelism.

Legend: B batch, S crop size, H heat-map size, J joints (21), V vertices (1305).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from hsr_tf.data import backgrounds as bg_lib
from hsr_tf.data import rgb_shards
from hsr_tf.data.rgb_shards import RGBShardError

NUM_JOINTS = 21
NUM_VERTICES = 1305


@dataclasses.dataclass(frozen=True)
class RGBAugmentConfig:
    scale: tuple = (0.9, 1.1)        # zoom factor range
    shift: float = 0.05              # +- fraction of S, uniform per axis
    rotation_deg: float = 20.0       # +- in-plane rotation
    brightness: float = 0.2          # multiplicative U(1 - b, 1 + b)
    contrast: tuple = (0.8, 1.2)
    saturation: tuple = (0.7, 1.3)
    hue: float = 0.04                # +- fraction of the hue circle
    noise_std: float = 0.02          # camera noise (uniform, zero mean), its std ~ U(0, noise_std)
    background_image_prob: float = 0.7


def resolve_files(data_dir_or_paths, split: str) -> list:
    """Shard files from a directory, one file, or a list of directories/files (directories give their
    ``{split}-*.h5``). Raises RGBShardError when nothing is found."""
    items = [data_dir_or_paths] if isinstance(data_dir_or_paths, (str, os.PathLike)) else list(data_dir_or_paths)
    files = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = rgb_shards.list_rgb_shards(item, split)
            if not found:
                raise RGBShardError(f"{item}: expected RGB shards named '{split}-*.h5', found none")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise RGBShardError(f"{item}: expected an RGB shard file or a directory of them, not found")
    if not files:
        raise RGBShardError(f"data_dir_or_paths: expected at least one RGB shard, found none in {items!r}")
    return files


class _FrameSource:
    """Random access to the frames of a list of shards.

    h5py handles and dataset objects are cached per file; the small per-frame fields (joints, joints_uv, camera,
    bone_scale, root_depth, mirrored, frame_index: ~0.5 KB a frame) of a shard are read whole on its first use
    and checked once, so a frame costs one chunk read each of image, mask, depth and vertices (the gzip inflate
    is most of the remaining time; h5py serialises access)."""

    SMALL = ("joints", "joints_uv", "camera", "bone_scale", "root_depth", "mirrored", "frame_index")
    LARGE = ("image", "mask", "depth")

    def __init__(self, files):
        self.files = list(files)
        self.infos = [rgb_shards.validate_rgb_shard(f) for f in self.files]
        ref = self.infos[0]["attrs"]["joint_names"]
        for f, info in zip(self.files, self.infos):
            if len(info["attrs"]["joint_names"]) != NUM_JOINTS or info["attrs"]["joint_names"] != ref:
                raise RGBShardError(f"{f}: attribute 'joint_names': expected the 21 names of {self.files[0]}, found "
                                    f"{info['attrs']['joint_names']}")
            if "vertices" in info["shapes"] and info["shapes"]["vertices"][1] != NUM_VERTICES:
                raise RGBShardError(f"{f}: field 'vertices': expected [F, {NUM_VERTICES}, 3], found "
                                    f"{info['shapes']['vertices']}")
        counts = np.array([info["num_frames"] for info in self.infos], np.int64)
        if counts.sum() == 0:
            raise RGBShardError(f"all {len(self.files)} RGB shards are empty (0 frames), e.g. {self.files[0]}")
        self.file_of = np.repeat(np.arange(len(self.files)), counts)
        self.local = np.concatenate([np.arange(c) for c in counts])
        self.num_frames = int(counts.sum())
        self._open = {}  # file index -> (h5py.File, {large field: Dataset}, {small field: array [F, ...]})

    def order(self, seed: int, epoch: int, shuffle: bool):
        if not shuffle:
            return np.arange(self.num_frames, dtype=np.int64)
        return np.random.default_rng([int(seed), int(epoch)]).permutation(self.num_frames).astype(np.int64)

    def _shard(self, i):
        import h5py

        if i not in self._open:
            path = self.files[i]
            f = h5py.File(path, "r")
            large = {k: f[k] for k in self.LARGE + (("vertices",) if "vertices" in f else ())}
            small = {k: f[k][()] for k in self.SMALL}
            digests = self.infos[i]["digests"]  # empty for a version-1 shard (no digests stored)
            for k, v in small.items():
                rgb_shards.check_digests(path, k, v, digests.get(k))
            for name in ("joints", "joints_uv", "camera"):
                bad = np.flatnonzero(~np.isfinite(small[name].reshape(len(small[name]), -1)).all(-1))
                if len(bad):
                    raise RGBShardError(f"{path}: field '{name}': frame {bad[0]}: expected finite values, found "
                                        f"NaN/Inf")
            self._open[i] = (f, large, small)
        return self._open[i]

    def read(self, g):
        i, j = int(self.file_of[g]), int(self.local[g])
        path = self.files[i]
        try:
            _, large, small = self._shard(i)
            img, mask, depth = (large[k][j] for k in self.LARGE)
            has_v = "vertices" in large
            verts = large["vertices"][j] if has_v else np.zeros((NUM_VERTICES, 3), np.float32)
            digests = self.infos[i]["digests"]
            for k, v in zip(self.LARGE + ("vertices",), (img, mask, depth, verts if has_v else None)):
                if v is not None:
                    rgb_shards.check_digests(path, k, v[None], digests.get(k), j)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            if isinstance(e, RGBShardError):
                raise
            raise RGBShardError(f"{path}: frame {j}: cannot read (truncated or corrupt): {e}") from e
        if not np.all(np.isfinite(verts)):
            raise RGBShardError(f"{path}: field 'vertices': frame {j}: expected finite values, found NaN/Inf")
        joints, uv, cam, bone, root, mirrored, fid = (small[k][j] for k in self.SMALL)
        return (img, mask, depth.astype(np.int32), joints.astype(np.float32), uv.astype(np.float32),
                cam.astype(np.float32), verts.astype(np.float32), np.float32(has_v), np.float32(bone),
                np.float32(root), np.float32(mirrored), np.int64(fid))


_READ_TYPES = (tf.uint8, tf.uint8, tf.int32, tf.float32, tf.float32, tf.float32, tf.float32, tf.float32,
               tf.float32, tf.float32, tf.float32, tf.int64)


def heatmaps_from_uv(uv, image_size: int, heatmap_size: int = 64, sigma: float = 4.0):
    """Gaussian heat-maps.

    Args:
      uv: [..., J, 2] px in the S x S crop (pixel centres). image_size: S. heatmap_size: H. sigma: px at H.
    Returns:
      [..., H, H, J] float32, exp(-|p - uv_H|^2 / (2 sigma^2)) with uv_H = (uv + 0.5) H / S - 0.5.
    """
    uv = tf.convert_to_tensor(uv, tf.float32)
    if uv.shape.rank is not None and (uv.shape.rank < 2 or uv.shape[-1] != 2):
        raise ValueError(f"uv: expected shape [..., J, 2], found {uv.shape}")
    p = (uv + 0.5) * (heatmap_size / image_size) - 0.5
    r = tf.range(heatmap_size, dtype=tf.float32)
    dx = r[:, None] - p[..., None, :, 0]  # [..., H(x), J]
    dy = r[:, None] - p[..., None, :, 1]  # [..., H(y), J]
    gx = tf.exp(-dx ** 2 / (2 * sigma ** 2))
    gy = tf.exp(-dy ** 2 / (2 * sigma ** 2))
    return gy[..., :, None, :] * gx[..., None, :, :]


def crop_transform(camera, in_size, out_size: int, scale, rotation, shift):
    """The augmented crop camera and the affine maps of the crop jitter (see the module docstring).

    Args:
      camera: [4] stored (fx, fy, cx, cy) at in_size. scale, rotation (rad): scalars; shift: [2] px at out_size.
    Returns:
      (new camera [4], R [3, 3] rotation of camera-frame points, transform [8] output -> input pixel map of
      ImageProjectiveTransformV3, forward [2, 3] input pixel -> output pixel).
    """
    fx, fy, cx, cy = camera[0], camera[1], camera[2], camera[3]
    k = out_size / tf.cast(in_size, tf.float32)
    fx1, fy1 = fx * k * scale, fy * k * scale
    c, s = tf.cos(rotation), tf.sin(rotation)
    centre_in = (tf.cast(in_size, tf.float32) - 1.0) / 2.0
    dx, dy = (centre_in - cx) / fx, (cy - centre_in) / fy  # ray through the stored crop's centre
    rdx, rdy = c * dx - s * dy, s * dx + c * dy
    centre_out = (out_size - 1.0) / 2.0
    ncx = centre_out + shift[0] - fx1 * rdx
    ncy = centre_out + shift[1] + fy1 * rdy
    # output pixel (u', v') -> ray d' -> R^T d' -> input pixel
    a0, a1 = fx * c / fx1, -fx * s / fy1
    b0, b1 = fy * s / fx1, fy * c / fy1
    a2 = cx - a0 * ncx - a1 * ncy
    b2 = cy - b0 * ncx - b1 * ncy
    zero, one = tf.zeros_like(c), tf.ones_like(c)
    transform = tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])
    # forward: input pixel -> ray d -> R d -> output pixel
    f0, f1 = fx1 * c / fx, fx1 * s / fy
    g0, g1 = -fy1 * s / fx, fy1 * c / fy
    forward = tf.stack([tf.stack([f0, f1, ncx - f0 * cx - f1 * cy]), tf.stack([g0, g1, ncy - g0 * cx - g1 * cy])])
    rot = tf.stack([tf.stack([c, -s, zero]), tf.stack([s, c, zero]), tf.stack([zero, zero, one])])
    return tf.stack([fx1, fy1, ncx, ncy]), rot, transform, forward


def _warp(image, transform, out_size, interpolation):
    """[h, w, C] (float32; int32 with NEAREST) -> [S, S, C] by the output->input map ``transform`` [8]; 0 outside."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.constant([out_size, out_size], tf.int32),
        fill_value=tf.constant(0.0), interpolation=interpolation, fill_mode="CONSTANT")[0]


# Rec. 601 luma weights: the grey a saturation change moves towards (as PIL's ImageEnhance.Color)
LUMA = (0.299, 0.587, 0.114)


def colour_matrix(brightness, contrast, saturation, hue, mean):
    """The colour jitter as one affine colour map: rgb' = M rgb + o.

    brightness b, contrast c, saturation s, hue h (fraction of a turn): scalars; mean: [3] the image's mean
    colour. In order: scale by b; move away from the (scaled) mean colour by c; lerp towards luma by s
    (s = 0: grey); rotate by 2 pi h about the grey axis (1, 1, 1). Returns (M [3, 3], o [3]).
    """
    eye = tf.eye(3)
    luma = tf.constant(LUMA, tf.float32)
    sat = saturation * eye + (1.0 - saturation) * tf.ones([3, 1]) * luma[None, :]
    u = tf.fill([3], 1.0 / math.sqrt(3.0))
    cross = tf.constant([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)  # [u]x
    ang = 2.0 * math.pi * hue
    rot = tf.cos(ang) * eye + tf.sin(ang) * cross + (1.0 - tf.cos(ang)) * u[:, None] * u[None, :]
    hs = tf.matmul(rot, sat)
    return hs * (contrast * brightness), tf.linalg.matvec(hs, (1.0 - contrast) * brightness * mean)


def _colour_jitter(img, key, cfg: RGBAugmentConfig):
    """[S, S, 3] in [0, 1] -> jittered: one affine colour map (``colour_matrix``) + uniform camera noise."""
    k = tf.random.experimental.stateless_split(key, 6)
    m, o = colour_matrix(tf.random.stateless_uniform([], k[0], 1 - cfg.brightness, 1 + cfg.brightness),
                         tf.random.stateless_uniform([], k[1], *cfg.contrast),
                         tf.random.stateless_uniform([], k[2], *cfg.saturation),
                         tf.random.stateless_uniform([], k[3], -cfg.hue, cfg.hue),
                         tf.reduce_mean(img, axis=[0, 1]))
    # uniform noise of standard deviation std (half-width sqrt(3) std): 2.5x cheaper to draw than Gaussian
    half = tf.random.stateless_uniform([], k[5], 0.0, cfg.noise_std) * math.sqrt(3.0)
    noise = tf.random.stateless_uniform(tf.shape(img), k[4], -1.0, 1.0) * half
    return tf.clip_by_value(tf.einsum("hwc,kc->hwk", img, m) + o + noise, 0.0, 1.0)


def make_rgb_dataset(data_dir_or_paths, split: str, batch_size: int, *, image_size: int = 256,
                     augment: bool = True, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                     background_dir=None, heatmap_size: int = 64, heatmap_sigma: float = 4.0,
                     drop_remainder: bool = False, repeat: bool = False,
                     augment_config: RGBAugmentConfig | None = None,
                     num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Build the batched RGB pipeline of the module docstring.

    Args:
      data_dir_or_paths: a directory of ``{split}-*.h5`` RGB shards, a shard file, or a list of either.
      split: 'train' / 'test' (for directories). batch_size: B. image_size: S of the output crops.
      augment: crop jitter + colour jitter + noise (``augment_config``); backgrounds are always composited.
      seed, epoch: determinism (module docstring); repeat=True continues with epochs epoch+1, epoch+2, ...
      shuffle: per-epoch permutation of all frames (else file order).
      background_dir: folder of JPG/PNG backgrounds mixed with the procedural ones (default: the shards'
        ``background_dir`` attribute, when it exists on this machine).
      heatmap_size, heatmap_sigma: H and sigma (px at H) of the heat-maps.
    Returns:
      tf.data.Dataset of batch dicts.
    Raises:
      RGBShardError naming the file and field for invalid shards; ValueError for bad arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, found {batch_size}")
    if image_size < 8 or heatmap_size < 1 or heatmap_sigma <= 0:
        raise ValueError(f"image_size, heatmap_size, heatmap_sigma: expected >= 8, >= 1, > 0, found "
                         f"{image_size}, {heatmap_size}, {heatmap_sigma}")
    cfg = augment_config or RGBAugmentConfig()
    src = _FrameSource(resolve_files(data_dir_or_paths, split))
    if background_dir is None:
        stored = src.infos[0]["attrs"].get("background_dir")
        background_dir = stored if stored and os.path.isdir(stored) else None
    bg_files = tf.constant(bg_lib.list_background_images(background_dir)) if background_dir else None
    sizes = tf.constant([int(info["attrs"]["image_size"]) for info in src.infos], tf.int32)
    file_of = tf.constant(src.file_of, tf.int32)
    base_key = tf.constant([int(seed), 0x5EED], tf.int64)
    identity = not augment and all(int(info["attrs"]["image_size"]) == image_size for info in src.infos)

    def epoch_items(e):
        order = tf.numpy_function(lambda x: src.order(seed, int(x), shuffle), [e], tf.int64, stateful=False)
        order.set_shape([src.num_frames])
        return tf.data.Dataset.from_tensor_slices(order).map(lambda g: (e, g))

    def load(e, g):
        vals = tf.numpy_function(src.read, [g], _READ_TYPES, stateful=False)
        names = ("image", "mask", "depth", "joints", "joints_uv", "camera", "vertices", "has_vertices",
                 "bone_scale", "root_depth", "mirrored", "frame_id")
        item = dict(zip(names, vals))
        for name, shape in (("image", [None, None, 3]), ("mask", [None, None]), ("depth", [None, None]),
                            ("joints", [NUM_JOINTS, 3]), ("joints_uv", [NUM_JOINTS, 2]), ("camera", [4]),
                            ("vertices", [NUM_VERTICES, 3])):
            item[name].set_shape(shape)
        for name in ("has_vertices", "bone_scale", "root_depth", "mirrored", "frame_id"):
            item[name].set_shape([])
        item["in_size"] = tf.gather(sizes, tf.gather(file_of, tf.cast(g, tf.int32)))
        key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(base_key, e), g)
        return item, key

    def transform(item, key):
        k = tf.random.experimental.stateless_split(key, 6)
        if augment:
            scale = tf.random.stateless_uniform([], k[0], *cfg.scale)
            rot = tf.random.stateless_uniform([], k[1], -1.0, 1.0) * math.radians(cfg.rotation_deg)
            shift = tf.random.stateless_uniform([2], k[2], -1.0, 1.0) * cfg.shift * image_size
        else:
            scale, rot, shift = tf.constant(1.0), tf.constant(0.0), tf.zeros([2])
        rgba = tf.concat([tf.cast(item["image"], tf.float32), tf.cast(item["mask"], tf.float32)[..., None]], -1)
        if identity:  # no jitter, stored size == image_size: the warp would copy every pixel
            cam, r3, uv = item["camera"], tf.eye(3), item["joints_uv"]
            rgba = tf.ensure_shape(rgba, [image_size, image_size, 4])  # static S x S, as the warp's output
            depth = tf.ensure_shape(tf.cast(item["depth"], tf.float32), [image_size, image_size])
        else:
            cam, r3, tmat, fwd = crop_transform(item["camera"], item["in_size"], image_size, scale, rot, shift)
            rgba = _warp(rgba, tmat, image_size, "BILINEAR")  # 0..255; scaled below, after the warp (fewer px)
            depth = tf.cast(_warp(item["depth"][..., None], tmat, image_size, "NEAREST")[..., 0], tf.float32)
            uv = tf.einsum("jc,kc->jk", tf.concat([item["joints_uv"], tf.ones([NUM_JOINTS, 1])], -1), fwd)
        rgba = rgba * (1.0 / 255.0)
        hand, mask = rgba[..., :3], tf.clip_by_value(rgba[..., 3], 0.0, 1.0)
        background = bg_lib.background(k[3], image_size, bg_files, cfg.background_image_prob)
        image = tf.clip_by_value(hand + (1.0 - mask[..., None]) * background, 0.0, 1.0)
        if augment:
            image = _colour_jitter(image, k[4], cfg)
        return {
            "image": image, "mask": mask, "depth": depth,
            "heatmaps": heatmaps_from_uv(uv, image_size, heatmap_size, heatmap_sigma),
            "joints": tf.einsum("jc,kc->jk", item["joints"], r3), "joints_uv": uv, "camera": cam,
            "vertices": tf.einsum("vc,kc->vk", item["vertices"], r3), "has_vertices": item["has_vertices"],
            "bone_scale": item["bone_scale"], "root_depth": item["root_depth"], "mirrored": item["mirrored"],
            "frame_id": item["frame_id"],
        }

    last = tf.int64.max if repeat else epoch + 1
    ds = tf.data.Dataset.range(epoch, last).flat_map(epoch_items)
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.map(transform, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def count_frames(data_dir_or_paths, split: str) -> int:
    """Total frames of the shards (validates every shard)."""
    return sum(rgb_shards.validate_rgb_shard(f)["num_frames"] for f in resolve_files(data_dir_or_paths, split))
