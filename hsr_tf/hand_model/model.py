"""The learned statistical hand model (SMPL-style) and its packaged asset.

Legend: V vertices (1305), S shape components (10), J joints (21), P pose-blend features
(9 * (J - 1) = 180), F triangles.

Arrays (all float32 except ``parents``/``faces`` which are int32), millimetres, neutral hand frame:
  mean_shape       [V, 3]     B0, the mean neutral-pose mesh
  shape_basis      [S, V, 3]  B_n, orthonormal PCA directions scaled so beta ~ N(0, 1)
                              (see ``metadata["shape_basis_scaling"]``)
  pose_basis       [P, V, 3]  P_n, pose blend shapes, feature order = ``pose_feature`` order
  joint_regressor  [J, V]     J_re, non-negative rows summing to 1
  skinning_weights [V, J]     W, non-negative rows summing to 1
  parents          [J]        parent of each joint, -1 for the root, parents precede children
  faces            [F, 3]     triangle vertex indices (outward normals, counter-clockwise)
Everything else in the .npz is kept in ``metadata`` (fit report, skeleton names, build command).
"""
import dataclasses
import importlib.resources
import json
import os
import types

import numpy as np

#: The required fields, their dtype kind and rank.
_FIELDS = {
    "mean_shape": ("f", 2),
    "shape_basis": ("f", 3),
    "pose_basis": ("f", 3),
    "joint_regressor": ("f", 2),
    "skinning_weights": ("f", 2),
    "parents": ("i", 1),
    "faces": ("i", 2),
}
_META_PREFIX = "meta_"
_ROW_SUM_TOL = 1e-3


def default_asset_path():
    """Filesystem path of the packaged ``hsr_tf/assets/hand_model.npz``."""
    return str(importlib.resources.files("hsr_tf") / "assets" / "hand_model.npz")


@dataclasses.dataclass(frozen=True, eq=False)
class HandModel:
    """An SMPL-style hand model (see the module docstring for the fields).

    Construct with :meth:`load` or directly (arrays are validated and converted to
    float32/int32, then made read-only). ``metadata`` maps names to numpy arrays or strings.
    ``source`` is the path it was loaded from (None when built in memory).
    """

    mean_shape: np.ndarray
    shape_basis: np.ndarray
    pose_basis: np.ndarray
    joint_regressor: np.ndarray
    skinning_weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    metadata: dict = dataclasses.field(default_factory=dict)
    source: str | None = None

    def __post_init__(self):
        for field, (kind, rank) in _FIELDS.items():
            arr = np.asarray(getattr(self, field))
            if arr.dtype.kind not in ("f", "i", "u") or (kind == "i" and arr.dtype.kind == "f"):
                raise ValueError(f"{field}: expected a {'float' if kind == 'f' else 'integer'} array, "
                                 f"found dtype {arr.dtype}")
            if arr.ndim != rank:
                raise ValueError(f"{field}: expected rank {rank}, found shape {arr.shape}")
            arr = np.array(arr, dtype=np.float32 if kind == "f" else np.int32)
            if kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"{field}: expected finite values, found NaN or Inf")
            arr.setflags(write=False)
            object.__setattr__(self, field, arr)
        object.__setattr__(self, "metadata", types.MappingProxyType(dict(self.metadata)))
        self._check_shapes()

    # ----------------------------------------------------------------- sizes
    @property
    def num_vertices(self):
        return self.mean_shape.shape[0]

    @property
    def num_betas(self):
        return self.shape_basis.shape[0]

    @property
    def num_joints(self):
        return self.parents.shape[0]

    @property
    def num_pose_features(self):
        return self.pose_basis.shape[0]

    def _check_shapes(self):
        v = self.mean_shape.shape[0]
        j = self.parents.shape[0]
        expect = {
            "mean_shape": (v, 3),
            "shape_basis": (self.shape_basis.shape[0], v, 3),
            "pose_basis": (9 * (j - 1), v, 3),
            "joint_regressor": (j, v),
            "skinning_weights": (v, j),
            "faces": (self.faces.shape[0], 3),
        }
        for field, shape in expect.items():
            found = getattr(self, field).shape
            if found != shape:
                raise ValueError(f"{field}: expected shape {list(shape)} (V={v}, J={j}), found {list(found)}")
        if v == 0 or j == 0:
            raise ValueError(f"mean_shape/parents: expected non-empty, found V={v}, J={j}")
        if self.parents[0] != -1 or np.any(self.parents[1:] < 0) or np.any(self.parents[1:] >= np.arange(1, j)):
            raise ValueError(f"parents: expected -1 for joint 0 and parents[j] < j otherwise, "
                             f"found {self.parents.tolist()}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= v):
            raise ValueError(f"faces: expected indices in [0, {v}), found range "
                             f"[{self.faces.min()}, {self.faces.max()}]")
        for field in ("joint_regressor", "skinning_weights"):
            arr = getattr(self, field)
            if arr.min() < 0:
                raise ValueError(f"{field}: expected non-negative entries, found min {arr.min():g}")
            sums = arr.sum(axis=1)
            worst = np.abs(sums - 1.0).max()
            if worst > _ROW_SUM_TOL:
                raise ValueError(f"{field}: expected rows summing to 1, found max |sum - 1| = {worst:g}")

    # ----------------------------------------------------------------- I/O
    @classmethod
    def load(cls, path=None):
        """Loads a model from an .npz file (the packaged default when ``path`` is None).

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: a field is missing or has the wrong dtype, rank or shape (message names it).
        """
        resolved = default_asset_path() if path is None else os.fspath(path)
        if not os.path.isfile(resolved):
            raise FileNotFoundError(f"hand model: expected an .npz file at {resolved!r}, found nothing"
                                    + (" (build it with `python -m data_prep.build_hand_model`)" if path is None else ""))
        try:
            data = np.load(resolved, allow_pickle=False)
        except Exception as err:  # zip/format errors
            raise ValueError(f"hand model {resolved!r}: expected an .npz archive, could not read it ({err})") from err
        with data:
            missing = [f for f in _FIELDS if f not in data.files]
            if missing:
                raise ValueError(f"{missing[0]}: field missing from {resolved!r} (expected fields "
                                 f"{sorted(_FIELDS)}, found {sorted(data.files)})")
            arrays = {f: data[f] for f in _FIELDS}
            metadata = {}
            for key in data.files:
                if key.startswith(_META_PREFIX):
                    value = data[key]
                    metadata[key[len(_META_PREFIX):]] = str(value) if value.dtype.kind == "U" and value.ndim == 0 else value
        return cls(**arrays, metadata=metadata, source=resolved)

    def save(self, path):
        """Writes the model (float32/int32) and its metadata to an uncompressed .npz."""
        payload = {f: getattr(self, f) for f in _FIELDS}
        for key, value in self.metadata.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            payload[_META_PREFIX + key] = np.asarray(value)
        tmp = os.fspath(path) + ".tmp.npz"
        np.savez(tmp, **payload)
        os.replace(tmp, path)

    @property
    def fit_report(self):
        """The build's fit report (dict) if the asset has one, else None."""
        raw = self.metadata.get("fit_report")
        return None if raw is None else json.loads(str(raw))

    # ----------------------------------------------------------------- helpers
    def joint_levels(self):
        """Joints grouped by depth in the tree: a list of int arrays, root level first."""
        depth = np.zeros(self.num_joints, dtype=np.int64)
        for j in range(1, self.num_joints):
            depth[j] = depth[self.parents[j]] + 1
        return [np.flatnonzero(depth == d).astype(np.int32) for d in range(depth.max() + 1)]
