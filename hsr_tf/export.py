"""SavedModel export of a trained depth model, self-contained: camera-frame mm in, camera-frame mm out.

The exported ``serving_default`` signature takes ``points`` float32 [B, N, 3] -- the hand point cloud
in camera-frame millimetres (N = 1024 for the depth model) -- normalises it inside the graph with the
rule the training shards used (hsr_tf/geometry/pointcloud.py):

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

A second signature ``faces`` (no input) returns the int32 [F, 3] triangle list, and the SavedModel
carries ``metadata`` (a JSON string: joint names, normalisation, ops backend, source checkpoint), so
a user needs TensorFlow alone: ``m = tf.saved_model.load(E); m.signatures["serving_default"](points=x)``.

The ops backend (compiled custom kernels or the pure-TF fallback) is whatever the model was built with:
``hsr_tf.ops`` decides at import (``HSR_TF_OPS=fallback`` forces the fallback). Export with the fallback
for a SavedModel that loads anywhere; one exported with compiled ops needs ``import hsr_tf.ops`` (which
registers the kernels) before ``tf.saved_model.load``.

Legend: B batch, N points, V vertices, F faces, D dataset joints.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

OUTPUT_KEYS = ("vertices", "joints", "dataset_joints")
CENTER_MODES = ("mean", "bbox")
SCALE_MODES = ("fixed", "max_dist")


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


class ServingModule(tf.Module):
    """Wraps a Keras model ``model(points_normalised [B,N,3], training=False) -> dict`` for serving."""

    def __init__(self, model, faces, num_points: int = 1024, center_mode: str = "mean", scale_mode: str = "fixed",
                 fixed_scale: float = 150.0, metadata: Optional[Mapping] = None, output_keys: Sequence[str] = OUTPUT_KEYS):
        super().__init__(name="hsr_tf_serving")
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces: expected shape [F, 3], found {faces.shape}")
        normalise_points_tf(tf.zeros([1, 4, 3]) + tf.range(4.0)[None, :, None], center_mode, scale_mode,
                            fixed_scale)  # validates the modes now, not at trace time
        self.model = model
        self._faces = tf.constant(faces.astype(np.int32))
        norm = dict(center_mode=center_mode, scale_mode=scale_mode, fixed_scale=float(fixed_scale))
        self._norm = norm  # tf.Module wraps it for tracking; keep the plain dict for JSON
        self._output_keys = tuple(output_keys)
        meta = dict(metadata or {})
        meta.update(normalisation=norm, num_points=int(num_points), outputs=list(self._output_keys),
                    units="camera-frame millimetres; x right, y up, z away from the camera")
        self.metadata = tf.Variable(json.dumps(meta, sort_keys=True), trainable=False, name="metadata")
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, num_points, 3], tf.float32, name="points")])
        self.faces = tf.function(self._get_faces, input_signature=[])

    def _serve(self, points):
        normalised, center, scale = normalise_points_tf(points, **self._norm)
        out = self.model(normalised, training=False)
        missing = [k for k in self._output_keys if k not in out]
        if missing:
            raise ValueError(f"model outputs: expected keys {self._output_keys}, missing {missing}")
        result = {k: tf.identity(out[k] * scale[:, None, None] + center[:, None, :], name=k)
                  for k in self._output_keys}
        result["center"] = tf.identity(center, name="center")
        result["scale"] = tf.identity(scale, name="scale")
        return result

    def _get_faces(self):
        return {"faces": tf.identity(self._faces)}


def export_saved_model(model, export_dir: str, faces, num_points: int = 1024, center_mode: str = "mean",
                       scale_mode: str = "fixed", fixed_scale: float = 150.0, metadata: Optional[Mapping] = None,
                       output_keys: Sequence[str] = OUTPUT_KEYS) -> str:
    """Write the SavedModel described in the module docstring.

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


class LoadedModel:
    """Convenience loader: ``LoadedModel(E)(points_mm [B,N,3]) -> {key: np.ndarray}`` (TF only)."""

    def __init__(self, export_dir: str):
        if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
            raise FileNotFoundError(f"{export_dir}: expected a SavedModel directory (saved_model.pb), found none")
        self._obj = tf.saved_model.load(export_dir)
        self._serve = self._obj.signatures["serving_default"]
        self.faces = self._obj.signatures["faces"]()["faces"].numpy()
        self.metadata = json.loads(self._obj.metadata.numpy().decode())
        self.num_points = int(self.metadata["num_points"])

    def __call__(self, points) -> dict:
        pts = np.asarray(points, np.float32)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (self.num_points, 3):
            raise ValueError(f"points: expected shape [B, {self.num_points}, 3] (camera mm), found {np.shape(points)}")
        return {k: v.numpy() for k, v in self._serve(points=tf.constant(pts)).items()}
