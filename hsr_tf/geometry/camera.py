"""Pinhole depth camera: depth map <-> camera-frame points, projection, hand crops.

Conventions (project-wide): millimetres; camera frame x right, y UP, z away from
the camera (depth > 0). Images are indexed ``depth[v, u]`` with ``u`` the column
(grows right) and ``v`` the row (grows DOWN). Integer pixel indices are pixel
centres, so pixel ``(u, v)`` with depth ``z`` back-projects to

    x = (u - cx) * z / fx,      y = (cy - v) * z / fy,      z = z

and a point projects to ``u = cx + fx x / z``, ``v = cy - fy y / z``, ``d = z``.
The ``- fy`` is the only difference from the OpenCV (y down) convention.

A depth value of 0 means "no measurement".

The NumPy functions serve data preparation; the ``*_tf`` functions serve the
model/export path and use ``tensorflow_graphics.rendering.camera.perspective``
(which is y-down): we negate y on the way in and out, which is exactly the
y-up convention above.

Legend: H, W image height/width (pixels); N points; ... any leading shape.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics (pixels) and image size.

    Attributes:
      fx, fy: focal lengths in pixels. cx, cy: principal point in pixels.
      width, height: image size in pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ("fx", "fy", "width", "height"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Camera.{name}: expected > 0, found {getattr(self, name)}")

    # ------------------------------------------------------------------ presets / io
    @classmethod
    def preset(cls, name: str) -> "Camera":
        """Named intrinsics: 'nyu' (640x480), 'icvl', 'msra' (320x240)."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"camera preset: expected one of {sorted(PRESETS)}, found {name!r}")
        return PRESETS[key]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        missing = [k for k in ("fx", "fy", "cx", "cy", "width", "height") if k not in d]
        if missing:
            raise ValueError(f"Camera.from_dict: expected keys fx, fy, cx, cy, width, height; missing {missing}")
        return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]), int(d["width"]), int(d["height"]))

    @classmethod
    def from_json(cls, s: str) -> "Camera":
        return cls.from_dict(json.loads(s))

    @property
    def intrinsics(self) -> np.ndarray:
        """[4] float64 (fx, fy, cx, cy)."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float64)

    # ------------------------------------------------------------------ rays
    def ray_directions(self, u, v) -> np.ndarray:
        """Camera-frame ray directions through pixels, scaled so that their z is 1.

        Args:
          u, v: arrays of the same shape [...] (pixel columns and rows, float allowed).
        Returns:
          [..., 3] float64 directions (x, y, 1): the point at depth z is ``z * dir``.
        """
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        return np.stack([(u - self.cx) / self.fx, (self.cy - v) / self.fy, np.ones_like(u)], axis=-1)

    # ------------------------------------------------------------------ uvd <-> xyz
    def points_to_uvd(self, points) -> np.ndarray:
        """Project camera-frame points.

        Args:
          points: [..., 3] mm, z > 0.
        Returns:
          [..., 3] float64 (u, v in pixels, d = z in mm).
        """
        p = _check_last3(points, "points")
        z = p[..., 2]
        if np.any(z <= 0):
            raise ValueError(f"points: expected z > 0 for projection, found min z = {z.min()}")
        return np.stack([self.cx + self.fx * p[..., 0] / z, self.cy - self.fy * p[..., 1] / z, z], axis=-1)

    def uvd_to_points(self, uvd) -> np.ndarray:
        """Inverse of :meth:`points_to_uvd`: [..., 3] (u, v px, d mm) -> [..., 3] mm."""
        q = _check_last3(uvd, "uvd")
        z = q[..., 2]
        return np.stack([(q[..., 0] - self.cx) * z / self.fx, (self.cy - q[..., 1]) * z / self.fy, z], axis=-1)

    # ------------------------------------------------------------------ depth <-> points
    def _check_depth(self, depth) -> np.ndarray:
        d = np.asarray(depth)
        if d.ndim != 2:
            raise ValueError(f"depth: expected a [H, W] map, found shape {d.shape}")
        return d

    def depth_to_point_map(self, depth) -> np.ndarray:
        """Back-project every pixel.

        Args:
          depth: [H, W] mm (0 = missing). Any size; pixel (u, v) uses this camera's
            intrinsics, so pass full-frame maps (or adjust cx, cy for crops).
        Returns:
          [H, W, 3] float64 mm; pixels with depth 0 give (0, 0, 0).
        """
        d = self._check_depth(depth).astype(np.float64)
        v, u = np.indices(d.shape, dtype=np.float64)
        return self.ray_directions(u, v) * d[..., None]

    def depth_to_points(self, depth, mask=None, return_pixels: bool = False):
        """Back-project the valid pixels (depth > 0, and ``mask`` if given).

        Args:
          depth: [H, W] mm. mask: optional [H, W] bool.
          return_pixels: also return the (v, u) int arrays of the kept pixels.
        Returns:
          points [N, 3] float32 mm in row-major pixel order (and (v, u) if asked).
        """
        d = self._check_depth(depth)
        keep = d > 0
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != d.shape:
                raise ValueError(f"mask: expected shape {d.shape} (same as depth), found {mask.shape}")
            keep &= mask
        v, u = np.nonzero(keep)
        pts = self.ray_directions(u, v) * d[v, u].astype(np.float64)[:, None]
        pts = pts.astype(np.float32)
        return (pts, (v, u)) if return_pixels else pts

    # ------------------------------------------------------------------ crops
    def crop_window(self, center, cube_size: float):
        """Pixel window covering a cube of side ``cube_size`` mm centred at ``center``.

        The window is the projection of the cube's front face (nearest the camera,
        hence the largest), clipped to the image.

        Args:
          center: [3] camera-frame mm (z > 0).
        Returns:
          (u0, v0, u1, v1) ints, half-open [u0, u1) x [v0, v1).
        """
        c = _check_last3(center, "center").reshape(3)
        half = 0.5 * float(cube_size)
        z_front = c[2] - half
        if z_front <= 0:
            raise ValueError(f"center: cube of size {cube_size} mm at z = {c[2]} mm reaches behind the camera")
        u_lo = self.cx + self.fx * (c[0] - half) / z_front
        u_hi = self.cx + self.fx * (c[0] + half) / z_front
        v_lo = self.cy - self.fy * (c[1] + half) / z_front
        v_hi = self.cy - self.fy * (c[1] - half) / z_front
        u0 = int(np.clip(np.floor(u_lo), 0, self.width))
        u1 = int(np.clip(np.ceil(u_hi) + 1, 0, self.width))
        v0 = int(np.clip(np.floor(v_lo), 0, self.height))
        v1 = int(np.clip(np.ceil(v_hi) + 1, 0, self.height))
        return u0, v0, u1, v1

    def crop_hand(self, depth, center, cube_size: float = 300.0, center_is_uvd: bool = False):
        """Keep the pixels whose back-projected point lies inside an axis-aligned cube.

        Args:
          depth: [H, W] mm full frame (H, W = this camera's height, width).
          center: [3] cube centre, camera mm (or (u, v, d) if ``center_is_uvd``).
          cube_size: cube side in mm (e.g. 300 for NYU-style crops).
        Returns:
          dict with ``points`` [N, 3] float32 mm (camera frame) of the pixels inside
          the cube, ``window`` (u0, v0, u1, v1) and ``depth_crop`` [v1-v0, u1-u0]
          float32 mm with everything outside the cube set to 0.
        """
        d = self._check_depth(depth)
        if d.shape != (self.height, self.width):
            raise ValueError(f"depth: expected shape {(self.height, self.width)} for this camera, found {d.shape}")
        c = np.asarray(center, dtype=np.float64).reshape(-1)
        if c.shape != (3,):
            raise ValueError(f"center: expected 3 values, found shape {np.shape(center)}")
        if center_is_uvd:
            c = self.uvd_to_points(c)
        self.crop_window(c, cube_size)  # checks that the cube stays in front of the camera
        # The window must hold every pixel that can see a point of the cube: the bounding box of its 8 projected
        # corners. (The front face alone misses points near the far face when the cube lies on one side of the
        # optical axis; found by tests/test_fuzz_predict.py.)
        half = 0.5 * float(cube_size)
        corners = c + half * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        uv = self.points_to_uvd(corners)[:, :2]
        u0, v0 = (int(np.clip(np.floor(x), 0, n)) for x, n in zip(uv.min(axis=0), (self.width, self.height)))
        u1, v1 = (int(np.clip(np.ceil(x) + 1, 0, n)) for x, n in zip(uv.max(axis=0), (self.width, self.height)))
        sub = d[v0:v1, u0:u1]
        # depth window first (cheap), then the x/y extent of the cube for the remaining pixels
        vv, uu = np.nonzero((sub > 0) & (np.abs(sub - c[2]) <= half))
        pts = self.ray_directions(uu + u0, vv + v0) * sub[vv, uu].astype(np.float64)[:, None]
        inside = np.all(np.abs(pts - c) <= half, axis=-1)
        crop = np.zeros(sub.shape, dtype=np.float32)
        crop[vv[inside], uu[inside]] = sub[vv[inside], uu[inside]]
        return {"points": pts[inside].astype(np.float32), "window": (u0, v0, u1, v1), "depth_crop": crop}


def _check_last3(x, name):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [..., 3], found {a.shape}")
    return a


PRESETS = {
    "nyu": Camera(fx=588.03, fy=587.07, cx=320.0, cy=240.0, width=640, height=480),
    "icvl": Camera(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240),
    "msra": Camera(fx=241.42, fy=241.42, cx=160.0, cy=120.0, width=320, height=240),
}


# ---------------------------------------------------------------------- TensorFlow versions
def _tf_intrinsics(camera: Camera):
    import tensorflow as tf

    focal = tf.constant([camera.fx, camera.fy], tf.float32)
    principal = tf.constant([camera.cx, camera.cy], tf.float32)
    return focal, principal


def points_to_uvd_tf(points, camera: Camera):
    """TF projection: [..., 3] camera mm (float32) -> [..., 3] (u, v px, d mm).

    Uses tensorflow_graphics' perspective.project on (x, -y, z) (its image y grows down).
    """
    import tensorflow as tf
    from tensorflow_graphics.rendering.camera import perspective

    points = tf.convert_to_tensor(points, tf.float32)
    if points.shape.rank is not None and points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [..., 3], found {points.shape}")
    focal, principal = _tf_intrinsics(camera)
    flipped = points * tf.constant([1.0, -1.0, 1.0])
    batch = tf.shape(points)[:-1]
    uv = perspective.project(flipped, tf.broadcast_to(focal, tf.concat([batch, [2]], 0)),
                             tf.broadcast_to(principal, tf.concat([batch, [2]], 0)))
    return tf.concat([uv, points[..., 2:3]], axis=-1)


def uvd_to_points_tf(uvd, camera: Camera):
    """TF inverse projection: [..., 3] (u, v px, d mm) -> [..., 3] camera mm (float32)."""
    import tensorflow as tf
    from tensorflow_graphics.rendering.camera import perspective

    uvd = tf.convert_to_tensor(uvd, tf.float32)
    if uvd.shape.rank is not None and uvd.shape[-1] != 3:
        raise ValueError(f"uvd: expected shape [..., 3], found {uvd.shape}")
    focal, principal = _tf_intrinsics(camera)
    batch = tf.shape(uvd)[:-1]
    xyz = perspective.unproject(uvd[..., :2], uvd[..., 2:3], tf.broadcast_to(focal, tf.concat([batch, [2]], 0)),
                                tf.broadcast_to(principal, tf.concat([batch, [2]], 0)))
    return xyz * tf.constant([1.0, -1.0, 1.0])


def depth_to_point_map_tf(depth, camera: Camera):
    """TF back-projection of full-frame depth maps.

    Args:
      depth: [B, H, W] or [H, W] mm float (0 = missing); H, W must match the camera.
    Returns:
      [..., H, W, 3] float32 camera mm; missing pixels give (0, 0, 0).
    """
    import tensorflow as tf

    depth = tf.convert_to_tensor(depth, tf.float32)
    if depth.shape.rank not in (2, 3) or tuple(depth.shape[-2:]) != (camera.height, camera.width):
        raise ValueError(f"depth: expected [B, {camera.height}, {camera.width}] or [{camera.height}, {camera.width}],"
                         f" found {depth.shape}")
    v, u = np.indices((camera.height, camera.width), dtype=np.float32)
    uvd = tf.stack([tf.broadcast_to(u, tf.shape(depth)), tf.broadcast_to(v, tf.shape(depth)), depth], axis=-1)
    return uvd_to_points_tf(uvd, camera)
