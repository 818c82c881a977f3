"""One synthetic RGB frame: viewpoint, hand crop, supersampled ray casting and shading.

Viewpoint: ``data_prep.synth.render.sample_placement`` with the frame's rng, i.e. exactly the viewpoint of the
depth set's frame with the same (seed, frame id); the full-frame camera (``RGBFrameConfig.camera``, NYU by
default) is the one the viewpoint sampler keeps the hand inside.

Crop (a virtual camera, rendered directly, never resampled): the joints' 2-D box in the full image, centred,
square side L = max(box width, box height) * (1 + 2 margin) px. In continuous full-image coordinates (pixel
centres at integers) the crop covers [a_u, a_u + L] x [a_v, a_v + L]; crop pixel i has its centre at
a + (i + 0.5) L / S, so the crop's intrinsics are fx' = fx S / L, fy' = fy S / L,
cx' = (cx - a_u) S / L - 0.5, cy' = (cy - a_v) S / L - 0.5 (the contract's u -> (u + 0.5) k - 0.5, k = S / L).

Supersampling (k odd, default 3): k x k rays per crop pixel at offsets (s - (k - 1) / 2) / k px, s = 0..k-1;
the middle one is the pixel centre. ``mask`` = round(255 * fraction of the k^2 rays that hit the mesh)
(coverage), ``image`` = round(255 * mean over the k^2 rays of the shaded colour, 0 for a miss) (premultiplied:
background black), ``depth`` = round(z) in mm of the CENTRE ray (0 = miss), so depth > 0 exactly where the
centre ray hits and mask > 0 there too. Only the projected bounding box of the mesh (+1 px) is cast: no
triangle reaches outside it.

Shading: open3d's RaycastingScene gives per ray the triangle id and barycentrics (hit = (1-u-v) A + u B + v C);
normals and albedo are interpolated from the vertices (smooth normals; per-subject albedo of
``appearance.subject_look``) and shaded with ``appearance.shade``; normals that face slightly away at
silhouettes are bent towards the view. Where skinning folds the palm through itself (small pleats of the
generator's mesh), rays hit triangles from behind in thin slivers: those pixels take the colour of the nearest
properly hit pixel (their mask and depth stay those of the first hit).

Legend: V vertices, F faces, J joints (21), S crop size, k supersampling factor.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import open3d as o3d
from scipy import ndimage

from data_prep.synth import noise as noise_lib
from data_prep.synth import render as depth_render
from data_prep.synth_rgb import appearance
from hsr_tf.geometry.camera import Camera


NORMAL_SMOOTHING = 4  # rounds of neighbour averaging of the vertex normals (appearance.vertex_normals)


@dataclasses.dataclass(frozen=True)
class RGBFrameConfig:
    camera: Camera = Camera.preset("nyu")      # full-frame camera of the viewpoint sampler
    view: depth_render.ViewConfig = depth_render.ViewConfig()
    image_size: int = 256
    crop_margin: float = 0.25                 # per side, fraction of the joint box's longer side
    supersample: int = 3                      # odd
    skin_tones: tuple = tuple(range(appearance.NUM_SKIN_TONES))
    lighting: tuple = tuple(range(appearance.NUM_LIGHTING))
    depth_noise: str = "none"                 # 'none' or 'kinect' (the stored reference depth)
    noise_config: noise_lib.KinectNoiseConfig = noise_lib.KinectNoiseConfig()
    image_noise_std: float = 0.0              # Gaussian camera noise on the hand, 8-bit levels
    blur_prob: float = 0.0                    # probability of a Gaussian blur of image and mask
    blur_sigma_max: float = 1.5               # px, sigma ~ U(0.3, max)

    def __post_init__(self):
        if self.supersample < 1 or self.supersample % 2 == 0:
            raise ValueError(f"supersample: expected an odd factor >= 1, found {self.supersample}")
        if self.image_size < 8:
            raise ValueError(f"image_size: expected >= 8, found {self.image_size}")
        if self.depth_noise not in ("none", "kinect"):
            raise ValueError(f"depth_noise: expected 'none' or 'kinect', found {self.depth_noise!r}")
        if not self.skin_tones or not self.lighting:
            raise ValueError("skin_tones, lighting: expected at least one index each")
        for name, values, upper in (("skin_tones", self.skin_tones, appearance.NUM_SKIN_TONES),
                                    ("lighting", self.lighting, appearance.NUM_LIGHTING)):
            if any(not 0 <= int(i) < upper for i in values):
                raise ValueError(f"{name}: expected indices in 0..{upper - 1}, found {values}")


def crop_camera(joints_cam, camera: Camera, size: int, margin: float) -> Camera:
    """The square crop camera around the joints' 2-D box (see the module docstring).

    Args:
      joints_cam: [J, 3] camera mm. camera: full-frame intrinsics. size: S. margin: per-side fraction.
    Returns:
      Camera of size S x S.
    """
    uv = camera.points_to_uvd(joints_cam)[:, :2]
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    centre = 0.5 * (lo + hi)
    side = max(float(np.max(hi - lo)) * (1.0 + 2.0 * margin), 8.0)
    a = centre - 0.5 * side
    k = size / side
    return Camera(fx=camera.fx * k, fy=camera.fy * k, cx=(camera.cx - a[0]) * k - 0.5,
                  cy=(camera.cy - a[1]) * k - 0.5, width=size, height=size)


def _scene(vertices_cam, faces):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices_cam, np.float32)),
                        o3d.core.Tensor(np.asarray(faces, np.uint32)))
    return scene


def cast(scene, cam: Camera, u, v):
    """Ray-cast pixel positions (u, v) [...] of ``cam``; returns open3d's results as numpy arrays [...]
    (t_hit, primitive_ids, primitive_uvs [..., 2], primitive_normals [..., 3]) and the ray directions
    [..., 3] (z = 1, so t_hit is the depth z in mm)."""
    dirs = cam.ray_directions(u, v)
    rays = np.concatenate([np.zeros_like(dirs), dirs], axis=-1).reshape(-1, 6).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays), nthreads=1)
    out = {k: t.numpy().reshape(np.shape(u) + tuple(t.shape)[1:]) for k, t in hit.items()}
    return out, dirs


def subpixel_offsets(k: int):
    """[k] offsets (px) of the sub-samples of a pixel along u (or v); the middle one is 0 (k odd)."""
    return (np.arange(k) - (k - 1) / 2.0) / k


def _back_facing(hit, dirs):
    """[...] bool: the ray hit a triangle from behind."""
    return np.isfinite(hit["t_hit"]) & (np.sum(hit["primitive_normals"] * dirs, axis=-1) > 0)


def _shade_rays(hit, dirs, sel, faces, vertex_normals_cam, albedo_v, lighting):
    """[N, 3] sRGB colours of the rays selected by boolean ``sel`` (front-facing hits)."""
    tri = faces[hit["primitive_ids"][sel]]
    bary = hit["primitive_uvs"][sel].astype(np.float32)
    wts = np.stack([1.0 - bary[:, 0] - bary[:, 1], bary[:, 0], bary[:, 1]], axis=-1)  # [N, 3]
    n = np.einsum("nk,nkd->nd", wts, vertex_normals_cam[tri])
    d = dirs[sel].astype(np.float32)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    view = -d / np.linalg.norm(d, axis=-1, keepdims=True)
    nv = np.sum(n * view, axis=-1)
    # silhouettes: an interpolated normal may face slightly away; bend it to graze the view direction
    n += np.maximum(0.05 - nv, 0.0)[:, None] * view
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    albedo = np.einsum("nk,nkd->nd", wts, albedo_v[tri])
    return appearance.shade(albedo, n, view, lighting)


def render_rgb_frame(vertices_hand, joints_hand, faces, look: appearance.SubjectLook, config: RGBFrameConfig,
                     rng, vertex_normals_hand=None):
    """Place a posed hand, crop, ray-cast and shade.

    Args:
      vertices_hand: [V, 3], joints_hand: [J, 3] posed mesh and joints in the neutral hand frame (mm).
      faces: [F, 3] int. look: the subject's albedo. rng: numpy Generator of the frame ([seed, frame id]).
      vertex_normals_hand: optional [V, 3] smooth normals of the posed mesh (hand frame).
    Returns:
      (record, None) with image [S, S, 3] uint8, mask [S, S] uint8, depth [S, S] uint16, joints [J, 3],
      joints_uv [J, 2], camera [4], vertices [V, 3], bone_scale, root_depth, skin_tone, lighting; or
      (None, 'out_of_view') when no viewpoint keeps the hand in the full image.
    """
    placed = depth_render.sample_placement(vertices_hand, config.camera, config.view, rng)
    if placed is None:
        return None, "out_of_view"
    rot, translation, v_cam = placed
    j_cam = np.asarray(joints_hand, dtype=np.float64) @ rot.T + translation
    tone = int(rng.choice(config.skin_tones))
    setup_id = int(rng.choice(config.lighting))
    lighting = appearance.jitter_lighting(appearance.LIGHTING_SETUPS[setup_id], rng)

    size, k = config.image_size, config.supersample
    cam = crop_camera(j_cam, config.camera, size, config.crop_margin)
    uvd = cam.points_to_uvd(v_cam)
    c0 = int(np.clip(np.floor(uvd[:, 0].min()) - 1, 0, size))
    c1 = int(np.clip(np.ceil(uvd[:, 0].max()) + 2, 0, size))
    r0 = int(np.clip(np.floor(uvd[:, 1].min()) - 1, 0, size))
    r1 = int(np.clip(np.ceil(uvd[:, 1].max()) + 2, 0, size))
    image = np.zeros((size, size, 3), np.float32)
    coverage = np.zeros((size, size), np.float32)
    depth = np.zeros((size, size), np.float32)
    cos_inc = np.zeros((size, size), np.float32)
    if c1 > c0 and r1 > r0:
        scene = _scene(v_cam, faces)
        vn = appearance.vertex_normals(v_cam, faces, NORMAL_SMOOTHING) if vertex_normals_hand is None \
            else np.asarray(vertex_normals_hand) @ rot.T
        vn = vn.astype(np.float32)
        albedo_v = look.albedo(tone).astype(np.float32)
        # 1. one ray through every pixel centre of the window
        vv, uu = np.mgrid[r0:r1, c0:c1]
        hit, dirs = cast(scene, cam, uu.astype(np.float64), vv.astype(np.float64))
        ok = np.isfinite(hit["t_hit"])
        # 2. k x k rays only where the 3 x 3 neighbourhood of centres is mixed hit / miss (silhouette)
        edge = np.zeros_like(ok)
        if k > 1:
            box = np.ones((3, 3), bool)
            edge = ndimage.binary_dilation(ok, box) & ~ndimage.binary_erosion(ok, box, border_value=0)
        inner = ok & ~edge
        good = inner & ~_back_facing(hit, dirs)
        win_cov = inner.astype(np.float32)
        win_col = np.zeros(ok.shape + (3,), np.float32)  # NOT premultiplied
        valid = good.copy()
        win_col[good] = _shade_rays(hit, dirs, good, faces, vn, albedo_v, lighting)
        if edge.any():
            er, ec = np.nonzero(edge)
            offs = subpixel_offsets(k)
            shape = (len(er), k, k)  # [edge pixel, sub-row, sub-column]
            su = np.broadcast_to((ec + c0)[:, None, None] + offs[None, None, :], shape)
            sv = np.broadcast_to((er + r0)[:, None, None] + offs[None, :, None], shape)
            shit, sdirs = cast(scene, cam, su, sv)
            sok = np.isfinite(shit["t_hit"])
            sgood = sok & ~_back_facing(shit, sdirs)
            scol = np.zeros(sok.shape + (3,), np.float32)
            if sgood.any():
                scol[sgood] = _shade_rays(shit, sdirs, sgood, faces, vn, albedo_v, lighting)
            ngood = sgood.sum(axis=(1, 2))
            win_cov[er, ec] = sok.mean(axis=(1, 2))
            win_col[er, ec] = scol.sum(axis=(1, 2)) / np.maximum(ngood, 1)[:, None]
            valid[er, ec] = ngood > 0
        # pleats: where skinning folds the palm through itself, rays see triangles from behind in 1-2 px
        # slivers; their own normals would draw lines, so they take the colour of the nearest proper pixel
        fill = (win_cov > 0) & ~valid
        if fill.any() and valid.any():
            _, (iv, iu) = ndimage.distance_transform_edt(~valid, return_indices=True)
            win_col[fill] = win_col[iv[fill], iu[fill]]
        win_col *= win_cov[..., None]
        coverage[r0:r1, c0:c1] = win_cov
        image[r0:r1, c0:c1] = win_col
        depth[r0:r1, c0:c1] = np.where(ok, hit["t_hit"], 0.0)
        geo, d = hit["primitive_normals"], dirs
        cos_inc[r0:r1, c0:c1] = np.where(ok, np.abs(np.sum(geo * d, axis=-1)) / np.linalg.norm(d, axis=-1), 0.0)
    if config.blur_prob > 0 and rng.random() < config.blur_prob:
        sigma = rng.uniform(0.3, max(config.blur_sigma_max, 0.3))
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0))
        coverage = ndimage.gaussian_filter(coverage, sigma)
    if config.image_noise_std > 0:
        image = image + coverage[..., None] * rng.normal(0, config.image_noise_std / 255.0, image.shape)
        image = np.clip(image, 0.0, coverage[..., None])
    if config.depth_noise == "kinect":
        # disparity quantisation uses the sensor's focal length, not the crop's
        depth = noise_lib.apply_kinect_noise(depth, cos_inc, config.camera.fx, rng, config.noise_config)
    record = {
        "image": np.round(image * 255.0).astype(np.uint8),
        "mask": np.round(coverage * 255.0).astype(np.uint8),
        "depth": np.round(depth).astype(np.uint16),
        "joints": j_cam.astype(np.float32),
        "joints_uv": cam.points_to_uvd(j_cam)[:, :2].astype(np.float32),
        "camera": np.array([cam.fx, cam.fy, cam.cx, cam.cy], np.float32),
        "vertices": v_cam.astype(np.float32),
        "bone_scale": np.float32(np.linalg.norm(j_cam[9] - j_cam[10])),
        "root_depth": np.float32(j_cam[0, 2]),
        "skin_tone": np.int32(tone),
        "lighting": np.int32(setup_id),
        "global_rotation": rot,
    }
    return record, None
