"""SavedModel export of trained models, self-contained: camera-frame mm in, camera-frame mm out.

DEPTH (``export_saved_model``). The ``serving_default`` signature takes ``points`` float32 [B, N, 3] -- the
hand point cloud in camera-frame millimetres (N = 1024 for the depth model) -- normalises it inside the graph
with the rule the training shards used (hsr_tf/geometry/pointcloud.py):

  centre c = mean of the N points (``center_mode='mean'``) or their axis-aligned bounding-box centre
             (``'bbox'``),
  scale  s = a fixed number of mm (``scale_mode='fixed'``, 150 mm by default) or the largest
             distance of a point to c (``'max_dist'``),
  normalised = (points - c) / s          (no rotation; OBB-normalised models are not exportable),

runs the model, and maps every output back: ``x_mm = s * x + c``. It returns

  vertices        [B, V, 3]  mesh vertices (V = 1305), camera mm
  joints          [B, 21, 3] hand-model joints, camera mm
  dataset_joints  [B, D, 3]  joint-regression output (the dataset's joints), camera mm
  center          [B, 3]     the centre used, mm;  scale [B] the scale used, mm

RGB (``export_rgb_saved_model``, Ge et al.). ``serving_default`` takes

  image       uint8   [B, 256, 256, 3]  RGB crop around the hand
  camera      float32 [B, 4]            fx, fy, cx, cy of that 256 x 256 crop (px; pixel centres are integers)
  root_depth  float32 [B]               z of the wrist (joint 0), mm
  bone_scale  float32 [B]               middle finger MCP -> PIP length (joints 9 -> 10), mm
  is_left     bool    [B]               the crop shows a left hand

and returns ``vertices`` [B, V, 3] and ``joints`` [B, 21, 3] (camera mm), ``joints_uv`` [B, 21, 2] (px of the
256 crop) and ``heatmaps`` [B, 64, 64, 21]. The network may take another input size S_m (a CPU-sized model
takes 128 px): the signature resizes the image to S_m (area averaging when shrinking, bilinear when growing),
gives the network the intrinsics of the resized crop (f -> f r, c -> (c + 0.5) r - 0.5, r = S_m / 256), maps
joints_uv back to the 256 crop and resizes the network's S_m/4 heat-maps to 64 x 64 (bilinear). Our hand model
is a right hand: for ``is_left`` the image is flipped left-right and cx -> 255 - cx (the data converters'
rule), the network runs on that right hand, and the outputs are mirrored back (x -> -x, u -> 255 - u,
heat-maps flipped), so every output is in the caller's own image and camera frame. A mirrored mesh has the
opposite winding: signature ``faces`` returns ``faces`` (right hands) and ``faces_left`` (winding reversed).

Both signatures check their inputs at run time, whatever the static signature says (a loaded signature does
not enforce the ranks or sizes of its TensorSpecs): a wrong rank or size, batch sizes that differ between
inputs, NaN/Inf, focal lengths / root depth / bone scale <= 0, a degenerate cloud under ``max_dist`` raise
``InvalidArgumentError`` whose message names the input, the expectation and what was found; outputs are
checked finite the same way. An empty batch (B = 0) returns empty outputs (one dummy frame is run and sliced
away, because batch norm and the ops do not accept B = 0). A wrong dtype is refused by TensorFlow's own
signature binding ("input #k was expected to be a uint8 tensor"), except that a NumPy array is cast silently
to the signature's dtype by TensorFlow before the graph sees it: :class:`LoadedModel` and
:class:`LoadedRGBModel` refuse those.

Every SavedModel carries ``metadata`` (a JSON string: kind, joint names, normalisation or resizing rule, ops
backend, source checkpoint), so a user needs TensorFlow alone:
``m = tf.saved_model.load(E); m.signatures["serving_default"](points=x)``. The depth model's ops backend
(compiled kernels or the pure-TF fallback) is whatever it was traced with (``hsr_tf.ops``); export with the
fallback for a SavedModel that loads anywhere.

Legend: B batch, N points, V vertices, F faces, D dataset joints, S_m the RGB network's input size.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

OUTPUT_KEYS = ("vertices", "joints", "dataset_joints")
RGB_OUTPUT_KEYS = ("vertices", "joints", "joints_uv", "heatmaps")
CENTER_MODES = ("mean", "bbox")
SCALE_MODES = ("fixed", "max_dist")
RGB_INPUT_SIZE = 256
RGB_HEATMAP_SIZE = 64
MIN_EXTENT_MM = 1.0  # smallest cloud extent accepted under scale_mode='max_dist'
_PAD = 8  # ranks up to _PAD - 1 are told apart by the run-time shape check


# ------------------------------------------------------------------------------------ run-time checks
def check_shape(x, name: str, tail: Sequence[Optional[int]], expected: str):
    """``x`` after a run-time assertion that its shape is [B, *tail] (None in ``tail``: any size).

    The check reads ``tf.shape(x)`` padded with -1 to a fixed length, so it neither depends on the traced
    static shape (a loaded signature does not enforce it) nor folds to a constant at trace time.
    """
    rank = 1 + len(tail)
    shape = tf.shape(x, out_type=tf.int32)
    padded = tf.concat([shape, tf.fill([_PAD], -1)], 0)[:_PAD]
    ok = tf.logical_and(tf.equal(padded[rank], -1), padded[rank - 1] >= 0)
    for i, size in enumerate(tail):
        if size is not None:
            ok = tf.logical_and(ok, tf.equal(padded[i + 1], size))
    check = tf.debugging.Assert(ok, [f"{name}: expected {expected}, found shape", shape], summarize=_PAD)
    with tf.control_dependencies([check]):
        return tf.identity(x)


def check_batch(x, name: str, batch):
    """``x`` after asserting that its first dimension equals ``batch`` (the image's B)."""
    found = tf.shape(x, out_type=tf.int32)[0]
    check = tf.debugging.Assert(tf.equal(found, batch), [f"{name}: expected the batch size B of image,", batch,
                                                         "found", found])
    with tf.control_dependencies([check]):
        return tf.identity(x)


def check_finite(x, name: str, what: str = "finite values"):
    return tf.debugging.assert_all_finite(x, f"{name}: expected {what}, found NaN or Inf")


def check_positive(x, name: str, what: str):
    check = tf.debugging.Assert(tf.reduce_all(x > 0), [f"{name}: expected {what} > 0, found", x], summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(x)


def _pad_empty(x, dummy, batch):
    """Append ``dummy`` [1, ...] when ``batch`` == 0 (the network then runs on one frame, sliced away)."""
    extra = tf.maximum(1 - batch, 0)
    return tf.concat([x, tf.repeat(tf.cast(dummy, x.dtype), extra, axis=0)], 0)


# ------------------------------------------------------------------------------------ depth
def normalise_points_tf(points, center_mode: str = "mean", scale_mode: str = "fixed", fixed_scale: float = 150.0):
    """TF twin of ``hsr_tf.geometry.pointcloud.compute_normalization`` (without OBB), batched.

    Args:
      points: [B, N, 3] float32 camera mm.
      center_mode, scale_mode, fixed_scale: as in pointcloud.compute_normalization.
    Returns:
      (normalised [B, N, 3], center [B, 3] mm, scale [B] mm).
    """
    if center_mode not in CENTER_MODES:
        raise ValueError(f"center_mode: expected one of {CENTER_MODES}, found {center_mode!r}")
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode: expected one of {SCALE_MODES}, found {scale_mode!r}")
    points = tf.convert_to_tensor(points, tf.float32)
    if points.shape.rank != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [B, N, 3], found {points.shape}")
    if center_mode == "mean":
        center = tf.reduce_mean(points, axis=1)
    else:
        center = 0.5 * (tf.reduce_min(points, axis=1) + tf.reduce_max(points, axis=1))
    centred = points - center[:, None, :]
    if scale_mode == "fixed":
        if not fixed_scale > 0:
            raise ValueError(f"fixed_scale: expected > 0, found {fixed_scale}")
        scale = tf.fill(tf.shape(points)[:1], tf.constant(fixed_scale, tf.float32))
    else:
        scale = tf.reduce_max(tf.norm(centred, axis=-1), axis=1)
    return centred / scale[:, None, None], center, scale


def _dummy_cloud(n: int) -> np.ndarray:
    """[1, n, 3] mm: a 50 mm Fibonacci sphere 400 mm in front of the camera (the empty-batch stand-in)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5 ** 0.5) * i
    r = np.sqrt(1.0 - z * z)
    return (np.stack([r * np.cos(phi), r * np.sin(phi), z], -1) * 50.0 + [0.0, 0.0, 400.0])[None].astype(np.float32)


class ServingModule(tf.Module):
    """Wraps a Keras model ``model(points_normalised [B,N,3], training=False) -> dict`` for serving."""

    def __init__(self, model, faces, num_points: int = 1024, center_mode: str = "mean", scale_mode: str = "fixed",
                 fixed_scale: float = 150.0, metadata: Optional[Mapping] = None, output_keys: Sequence[str] = OUTPUT_KEYS):
        super().__init__(name="hsr_tf_serving")
        faces = _check_faces(faces)
        normalise_points_tf(tf.zeros([1, 4, 3]) + tf.range(4.0)[None, :, None], center_mode, scale_mode,
                            fixed_scale)  # validates the modes now, not at trace time
        self.model = model
        self._faces = tf.constant(faces)
        self._num_points = int(num_points)
        norm = dict(center_mode=center_mode, scale_mode=scale_mode, fixed_scale=float(fixed_scale))
        self._norm = norm  # tf.Module wraps it for tracking; keep the plain dict for JSON
        self._output_keys = tuple(output_keys)
        meta = dict(metadata or {})
        meta.update(kind="depth", normalisation=norm, num_points=int(num_points), outputs=list(self._output_keys),
                    units="camera-frame millimetres; x right, y up, z away from the camera")
        self.metadata = tf.Variable(json.dumps(meta, sort_keys=True), trainable=False, name="metadata")
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, num_points, 3], tf.float32, name="points")])
        self.faces = tf.function(self._get_faces, input_signature=[])

    def _serve(self, points):
        points = check_shape(points, "points", (self._num_points, 3), f"[B, {self._num_points}, 3] camera mm")
        points = check_finite(points, "points", "finite camera-frame mm")
        batch = tf.shape(points)[0]
        normalised, center, scale = normalise_points_tf(_pad_empty(points, _dummy_cloud(self._num_points), batch),
                                                        **self._norm)
        if self._norm["scale_mode"] == "max_dist":
            # All points (nearly) equal: the float32 mean is off by rounding, so the "extent" is noise.
            scale = check_positive(scale - MIN_EXTENT_MM, "points", f"a cloud whose extent (max distance to "
                                   f"its centre) exceeds {MIN_EXTENT_MM} mm; extent minus that bound") + MIN_EXTENT_MM
        scale = check_finite(scale, "points", "coordinates small enough to normalise (|x| < ~1e18 mm)")
        normalised = check_finite(normalised, "points", "coordinates small enough to normalise (|x| < ~1e18 mm)")
        out = self.model(normalised, training=False)
        missing = [k for k in self._output_keys if k not in out]
        if missing:
            raise ValueError(f"model outputs: expected keys {self._output_keys}, missing {missing}")
        result = {k: tf.cast(out[k], tf.float32) * scale[:, None, None] + center[:, None, :]
                  for k in self._output_keys}
        result.update(center=center, scale=scale)
        return {k: tf.identity(check_finite(v[:batch], k, "finite outputs (inputs too large?)"), name=k)
                for k, v in result.items()}

    def _get_faces(self):
        return {"faces": tf.identity(self._faces)}


def _check_faces(faces) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], found {faces.shape}")
    return faces.astype(np.int32)


def export_saved_model(model, export_dir: str, faces, num_points: int = 1024, center_mode: str = "mean",
                       scale_mode: str = "fixed", fixed_scale: float = 150.0, metadata: Optional[Mapping] = None,
                       output_keys: Sequence[str] = OUTPUT_KEYS) -> str:
    """Write the depth SavedModel described in the module docstring.

    Args:
      model: built Keras model in the normalised frame returning a dict with ``output_keys``.
      export_dir: output directory (overwritten files, created if needed).
      faces: int [F, 3] mesh triangles (the hand model's faces).
      num_points: N of the input signature.
      center_mode, scale_mode, fixed_scale: the training data's normalisation rule.
      metadata: extra JSON-serialisable facts to store (joint names, checkpoint, ops backend...).
    Returns:
      export_dir.
    """
    module = ServingModule(model, faces, num_points, center_mode, scale_mode, fixed_scale, metadata, output_keys)
    os.makedirs(export_dir, exist_ok=True)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve,
                                                         "faces": module.faces})
    return export_dir


# ------------------------------------------------------------------------------------ RGB
def mirror_camera(camera, image_size: int):
    """camera [B, 4] of an S x S crop -> the camera of the left-right flipped crop: cx -> S - 1 - cx."""
    camera = tf.cast(camera, tf.float32)
    return tf.concat([camera[:, :2], float(image_size - 1) - camera[:, 2:3], camera[:, 3:]], -1)


def resize_camera(camera, from_size: int, to_size: int):
    """Intrinsics [B, 4] of an S x S crop -> those of the same crop resized to T x T (pixel centres kept)."""
    r = float(to_size) / float(from_size)
    camera = tf.cast(camera, tf.float32)
    return tf.concat([camera[:, :2] * r, (camera[:, 2:] + 0.5) * r - 0.5], -1)


class RGBServingModule(tf.Module):
    """Wraps an ``RGBMeshNet``-like Keras model (dict input, dict output with vertices, joints, joints_uvd,
    heatmaps; attribute ``image_size``) behind the RGB signature of the module docstring."""

    def __init__(self, model, faces, metadata: Optional[Mapping] = None):
        super().__init__(name="hsr_tf_rgb_serving")
        self.model = model
        self._faces = tf.constant(_check_faces(faces))
        self._size = int(getattr(model, "image_size", 0))
        if self._size < 8:
            raise ValueError(f"model: expected an RGB network with an image_size attribute >= 8, found "
                             f"{type(model).__name__} with image_size {self._size}")
        resize = ("none" if self._size == RGB_INPUT_SIZE else
                  f"image {RGB_INPUT_SIZE} -> {self._size} px ({'area' if self._size < RGB_INPUT_SIZE else 'bilinear'}),"
                  f" heat-maps {self._size // 4} -> {RGB_HEATMAP_SIZE} (bilinear)")
        meta = dict(metadata or {})
        meta.update(kind="rgb", input_size=RGB_INPUT_SIZE, model_image_size=self._size, resize=resize,
                    outputs=list(RGB_OUTPUT_KEYS), mirroring="is_left: image flipped, cx -> 255 - cx; outputs "
                    "mirrored back (x -> -x, u -> 255 - u); use faces_left for left-hand meshes",
                    units="vertices, joints: camera-frame mm (x right, y up, z away); joints_uv: px of the "
                    "256 x 256 input crop")
        self.metadata = tf.Variable(json.dumps(meta, sort_keys=True), trainable=False, name="metadata")
        s = RGB_INPUT_SIZE
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, s, s, 3], tf.uint8, name="image"),
            tf.TensorSpec([None, 4], tf.float32, name="camera"),
            tf.TensorSpec([None], tf.float32, name="root_depth"),
            tf.TensorSpec([None], tf.float32, name="bone_scale"),
            tf.TensorSpec([None], tf.bool, name="is_left")])
        self.faces = tf.function(self._get_faces, input_signature=[])

    def _serve(self, image, camera, root_depth, bone_scale, is_left):
        s = RGB_INPUT_SIZE
        image = check_shape(image, "image", (s, s, 3), f"[B, {s}, {s}, 3] uint8 RGB")
        camera = check_shape(camera, "camera", (4,), "[B, 4] (fx, fy, cx, cy of the crop)")
        root_depth = check_shape(root_depth, "root_depth", (), "[B] mm")
        bone_scale = check_shape(bone_scale, "bone_scale", (), "[B] mm")
        is_left = check_shape(is_left, "is_left", (), "[B] bool")
        batch = tf.shape(image)[0]
        camera, root_depth, bone_scale, is_left = (
            check_batch(x, n, batch) for x, n in ((camera, "camera"), (root_depth, "root_depth"),
                                                  (bone_scale, "bone_scale"), (is_left, "is_left")))
        camera = check_finite(camera, "camera", "finite fx, fy, cx, cy")
        camera = tf.concat([check_positive(camera[:, :2], "camera", "focal lengths fx, fy"), camera[:, 2:]], -1)
        root_depth = check_positive(check_finite(root_depth, "root_depth", "finite mm"), "root_depth", "depth (mm)")
        bone_scale = check_positive(check_finite(bone_scale, "bone_scale", "finite mm"), "bone_scale",
                                    "length (mm)")
        # An empty batch runs one dummy frame (batch norm refuses B = 0) that is sliced away below.
        image = _pad_empty(image, tf.zeros([1, s, s, 3], tf.uint8), batch)
        camera = _pad_empty(camera, [[2.0 * s, 2.0 * s, 0.5 * (s - 1), 0.5 * (s - 1)]], batch)
        root_depth, bone_scale = _pad_empty(root_depth, [500.0], batch), _pad_empty(bone_scale, [30.0], batch)
        left = _pad_empty(is_left, [False], batch)
        # Mirror left hands into the right-hand model.
        image = tf.where(left[:, None, None, None], tf.reverse(image, axis=[2]), image)
        camera = tf.where(left[:, None], mirror_camera(camera, s), camera)
        x = tf.cast(image, tf.float32) / 255.0
        if self._size != s:
            x = tf.image.resize(x, [self._size, self._size], method="area" if self._size < s else "bilinear")
        net_camera = resize_camera(camera, s, self._size)
        out = self.model({"image": x, "camera": net_camera, "root_depth": root_depth, "bone_scale": bone_scale},
                         training=False)
        missing = [k for k in ("vertices", "joints", "joints_uvd", "heatmaps") if k not in out]
        if missing:
            raise ValueError(f"model outputs: expected vertices, joints, joints_uvd, heatmaps, missing {missing}")
        # joints_uvd holds normalised crop coordinates, the same for the S_m and the 256 crop.
        uv = (tf.cast(out["joints_uvd"][..., :2], tf.float32) + 1.0) * (0.5 * s) - 0.5
        heatmaps = tf.cast(out["heatmaps"], tf.float32)
        if heatmaps.shape[1] != RGB_HEATMAP_SIZE:
            heatmaps = tf.image.resize(heatmaps, [RGB_HEATMAP_SIZE, RGB_HEATMAP_SIZE], method="bilinear")
        # Mirror the outputs back into the caller's frame.
        sign = tf.where(left, -1.0, 1.0)[:, None, None]
        flip = tf.constant([1.0, 0.0, 0.0])
        mirror_x = lambda p: p * (1.0 + (sign - 1.0) * flip)  # noqa: E731  x -> -x for left hands
        result = {"vertices": mirror_x(tf.cast(out["vertices"], tf.float32)),
                  "joints": mirror_x(tf.cast(out["joints"], tf.float32)),
                  "joints_uv": tf.where(left[:, None, None], tf.concat([(s - 1.0) - uv[..., :1], uv[..., 1:]], -1),
                                        uv),
                  "heatmaps": tf.where(left[:, None, None, None], tf.reverse(heatmaps, axis=[2]), heatmaps)}
        return {k: tf.identity(check_finite(v[:batch], k, "finite outputs"), name=k) for k, v in result.items()}

    def _get_faces(self):
        return {"faces": tf.identity(self._faces), "faces_left": tf.reverse(self._faces, axis=[1])}


def export_rgb_saved_model(model, export_dir: str, faces=None, metadata: Optional[Mapping] = None) -> str:
    """Write the RGB SavedModel of the module docstring for a built ``RGBMeshNet`` (variants with a mesh).

    Args:
      model: built RGB network (``image_size`` attribute; dict in, dict out).
      export_dir: output directory (created if needed).
      faces: int [F, 3] triangles (default ``model.faces``).
      metadata: extra JSON-serialisable facts (joint names, checkpoint, precision...).
    Returns:
      export_dir.
    """
    module = RGBServingModule(model, model.faces if faces is None else faces, metadata)
    os.makedirs(export_dir, exist_ok=True)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve, "faces": module.faces})
    return export_dir


# ------------------------------------------------------------------------------------ loading
def _load(export_dir: str):
    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{export_dir}: expected a SavedModel directory (saved_model.pb), found none")
    obj = tf.saved_model.load(export_dir)
    return obj, json.loads(obj.metadata.numpy().decode())


def _array(x, name, dtype, tail, expected):
    a = np.asarray(x)
    numeric = np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    if a.dtype != dtype and not (dtype == np.float32 and numeric):  # ints and floats are safe as float32
        raise ValueError(f"{name}: expected {expected} of dtype {np.dtype(dtype).name}, found {a.dtype}")
    if a.ndim != 1 + len(tail) or tuple(a.shape[1:]) != tuple(tail):
        raise ValueError(f"{name}: expected shape [B, {', '.join(map(str, tail))}] ({expected}), found {a.shape}"
                         if tail else f"{name}: expected shape [B] ({expected}), found {a.shape}")
    return a.astype(dtype)


class LoadedModel:
    """Depth loader: ``LoadedModel(E)(points_mm [B,N,3]) -> {key: np.ndarray}`` (TF only)."""

    def __init__(self, export_dir: str):
        self._obj, self.metadata = _load(export_dir)
        if self.metadata.get("kind", "depth") != "depth":
            raise ValueError(f"{export_dir}: expected a depth SavedModel, found kind {self.metadata['kind']!r} "
                             "(use LoadedRGBModel)")
        self._serve = self._obj.signatures["serving_default"]
        self.faces = self._obj.signatures["faces"]()["faces"].numpy()
        self.num_points = int(self.metadata["num_points"])

    def __call__(self, points) -> dict:
        pts = np.asarray(points, np.float32)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (self.num_points, 3):
            raise ValueError(f"points: expected shape [B, {self.num_points}, 3] (camera mm), found {np.shape(points)}")
        return {k: v.numpy() for k, v in self._serve(points=tf.constant(pts)).items()}


class LoadedRGBModel:
    """RGB loader: ``LoadedRGBModel(E)(image, camera, root_depth, bone_scale, is_left) -> {key: np.ndarray}``.

    Checks dtypes and shapes on the NumPy side (TensorFlow would cast a float image to uint8 silently).
    """

    def __init__(self, export_dir: str):
        self._obj, self.metadata = _load(export_dir)
        if self.metadata.get("kind") != "rgb":
            raise ValueError(f"{export_dir}: expected an RGB SavedModel, found kind "
                             f"{self.metadata.get('kind', 'depth')!r} (use LoadedModel)")
        self._serve = self._obj.signatures["serving_default"]
        faces = self._obj.signatures["faces"]()
        self.faces, self.faces_left = faces["faces"].numpy(), faces["faces_left"].numpy()
        self.input_size = int(self.metadata["input_size"])

    def __call__(self, image, camera, root_depth, bone_scale, is_left) -> dict:
        s = self.input_size
        args = dict(image=_array(image, "image", np.uint8, (s, s, 3), "RGB crops"),
                    camera=_array(camera, "camera", np.float32, (4,), "fx, fy, cx, cy"),
                    root_depth=_array(root_depth, "root_depth", np.float32, (), "mm"),
                    bone_scale=_array(bone_scale, "bone_scale", np.float32, (), "mm"),
                    is_left=_array(is_left, "is_left", np.bool_, (), "bool"))
        return {k: v.numpy() for k, v in self._serve(**{k: tf.constant(v) for k, v in args.items()}).items()}
