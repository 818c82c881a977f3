"""Skin tones, per-subject albedo texture, lighting set-ups and the NumPy shading of ray-cast hits.

Colour pipeline: albedo and light colours in LINEAR RGB; shading
``L = albedo * (ambient + sum_i c_i max(0, n.l_i)) + sum_i k_s c_i max(0, n.h_i)^shininess`` (Lambert diffuse
plus Blinn-Phong specular, h_i = normalise(l_i + view)); then exposure, a soft shoulder (tone map) and the
sRGB transfer curve. All directions are in the camera frame of the project (x right, y up, z away from the
camera), pointing FROM the surface: a light with l = (0, 0, -1) sits at the camera.

Skin tones (``SKIN_TONES``, index 0..4, light to dark): five base albedos, read off typical sRGB skin swatches
(Fitzpatrick-like I-II, III, IV, V, VI) and linearised. A subject (``subject_albedo``) gets:
  * its own variation of the tone: brightness x N(1, 0.07), a red/yellow balance shift N(0, 0.03);
  * a low-frequency texture: a sum of 6 random 3-D sinusoids of the REST-pose vertex positions (wavelengths
    25-80 mm), so the pattern moves with the skin in every pose; +-8 % luminance and a slight redness;
  * palmar skin lighter and pinker than the back (blend by the rest-pose normal's -z component: the palm
    faces -z in the hand frame), and darker, redder knuckle / crease bands at the joints (vertices near a
    joint ring in the rest pose).
The skin tone is drawn per FRAME (from the allowed set); the variation and texture are per subject.

Lighting set-ups (``LIGHTING_SETUPS``, 40, fixed by a constant seed so an index means the same light
everywhere): 0-9 one white key light near the camera + white ambient; 10-19 warm key + cool fill;
20-29 coloured key and fill (saturated hues); 30-39 harsh side light with a rim/back light and low ambient.
Per frame the set-up is rotated about the optical axis by U(-25, 25) deg and its intensity scaled by U(0.85, 1.15).

Legend: V vertices, N hit samples, K lights.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# sRGB 0..255 base swatches, light -> dark
_SKIN_SRGB = np.array([
    [241, 208, 184],
    [224, 172, 138],
    [192, 134, 98],
    [141, 90, 62],
    [88, 56, 40],
], dtype=np.float64)


def srgb_to_linear(c):
    """[..., 3] sRGB in [0, 1] -> linear RGB."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    """[..., 3] linear RGB in [0, 1] -> sRGB in [0, 1]."""
    c = np.clip(np.asarray(c), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


SKIN_TONES = srgb_to_linear(_SKIN_SRGB / 255.0)  # [5, 3] linear albedo
NUM_SKIN_TONES = len(SKIN_TONES)


@dataclasses.dataclass(frozen=True)
class Lighting:
    """A lighting set-up: ambient colour [3], light directions [K, 3] (unit, from the surface), colours
    [K, 3] (linear), specular strength and shininess, and an exposure applied before tone mapping."""
    ambient: np.ndarray
    directions: np.ndarray
    colours: np.ndarray
    specular: float
    shininess: float
    exposure: float = 1.0


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _hue(rng, sat):
    """A random linear-RGB colour of the given saturation with max channel 1."""
    h = rng.uniform(0, 1)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = 1.0 - sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # HSV with V=1
    return srgb_to_linear(rgb)


def _front_direction(rng, max_deg):
    """Unit direction towards a light within max_deg of the camera axis (-z), from the surface."""
    cos_a = rng.uniform(np.cos(np.deg2rad(max_deg)), 1.0)
    phi = rng.uniform(0, 2 * np.pi)
    s = np.sqrt(1 - cos_a ** 2)
    return np.array([s * np.cos(phi), s * np.sin(phi), -cos_a])


def _make_setups():
    rng = np.random.default_rng(20190616)
    white = np.ones(3)
    warm = srgb_to_linear(np.array([1.0, 0.86, 0.70]))
    cool = srgb_to_linear(np.array([0.75, 0.85, 1.0]))
    setups = []
    for i in range(40):
        group = i // 10
        if group == 0:
            dirs = [_front_direction(rng, 45)]
            cols = [white * rng.uniform(0.75, 0.95)]
            amb = white * rng.uniform(0.25, 0.4)
        elif group == 1:
            dirs = [_front_direction(rng, 60), _front_direction(rng, 70)]
            cols = [warm * rng.uniform(0.6, 0.8), cool * rng.uniform(0.2, 0.35)]
            amb = srgb_to_linear(np.array([0.9, 0.9, 1.0])) * rng.uniform(0.15, 0.3)
        elif group == 2:
            dirs = [_front_direction(rng, 60), _front_direction(rng, 75)]
            cols = [_hue(rng, rng.uniform(0.25, 0.5)) * rng.uniform(0.6, 0.8),
                    _hue(rng, rng.uniform(0.4, 0.8)) * rng.uniform(0.2, 0.4)]
            amb = _hue(rng, 0.2) * rng.uniform(0.15, 0.3)
        else:
            side = _unit(np.array([rng.choice([-1, 1]) * rng.uniform(0.7, 1.0), rng.uniform(-0.4, 0.6),
                                   -rng.uniform(0.1, 0.5)]))
            rim = _unit(np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.3, 0.8)]))
            dirs = [side, rim, _front_direction(rng, 30)]
            cols = [white * rng.uniform(0.8, 1.0), _hue(rng, 0.3) * rng.uniform(0.4, 0.7),
                    white * rng.uniform(0.08, 0.15)]
            amb = white * rng.uniform(0.08, 0.15)
        setups.append(Lighting(ambient=np.asarray(amb), directions=_unit(np.array(dirs)),
                               colours=np.array(cols), specular=float(rng.uniform(0.08, 0.3)),
                               shininess=float(rng.uniform(8.0, 30.0)), exposure=float(rng.uniform(1.0, 1.3))))
    return tuple(setups)


LIGHTING_SETUPS = _make_setups()
NUM_LIGHTING = len(LIGHTING_SETUPS)


def parse_index_list(text: str, upper: int, name: str):
    """'0,2,5-7' -> sorted unique [0, 2, 5, 6, 7]; 'all' or '' -> range(upper). Raises naming ``name``."""
    text = (text or "all").strip()
    if text == "all":
        return list(range(upper))
    out = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"{name}: expected indices like '0,2,5-7' or 'all', found {text!r}") from None
    bad = sorted(i for i in out if not 0 <= i < upper)
    if bad or not out:
        raise ValueError(f"{name}: expected indices in 0..{upper - 1}, found {text!r}")
    return sorted(out)


_ADJACENCY = {}


def _adjacency(faces, num_vertices):
    """Sparse [V, V] vertex adjacency (1 per mesh edge), cached per topology."""
    from scipy import sparse

    key = (num_vertices, faces.shape[0], int(faces.sum()))
    if key not in _ADJACENCY:
        i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
        j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
        adj = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(num_vertices, num_vertices)).tocsr()
        adj.data[:] = 1.0
        _ADJACENCY[key] = adj
    return _ADJACENCY[key]


def vertex_normals(vertices, faces, smooth_iterations: int = 0):
    """Area-weighted smooth vertex normals, optionally averaged over mesh neighbours.

    Args:
      vertices: [V, 3]; faces: [F, 3] int (outward-wound, as the generator's).
      smooth_iterations: rounds of n <- normalise(n + sum of neighbour normals). The posed generator mesh
        has small pleats where skinning folds the palm; a few rounds keep them from drawing lines.
    Returns:
      [V, 3] unit outward normals.
    """
    v = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    fn = np.cross(b - a, c - a)  # length = 2 x area: area weighting for free
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    if smooth_iterations:
        adj = _adjacency(faces, len(v))
        for _ in range(smooth_iterations):
            n = n + adj @ n
            n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return n


@dataclasses.dataclass(frozen=True)
class SubjectLook:
    """Per-subject albedo modulation: ``texture`` [V, 3] multiplicative factors (around 1) and the
    ``tone_gain`` [3] of this subject's variation of every skin tone."""
    texture: np.ndarray
    tone_gain: np.ndarray

    def albedo(self, tone: int):
        """[V, 3] linear albedo of this subject with skin tone ``tone``."""
        return np.clip(SKIN_TONES[tone][None, :] * self.tone_gain[None, :] * self.texture, 0.0, 1.0)


def subject_look(rest_vertices, rest_joints, faces, rng) -> SubjectLook:
    """Draw a subject's albedo texture and tone variation (see the module docstring).

    Args:
      rest_vertices: [V, 3] neutral-pose mesh (hand frame, mm). rest_joints: [21, 3]. faces: [F, 3].
      rng: numpy Generator seeded per subject.
    """
    v = np.asarray(rest_vertices, dtype=np.float64)
    lum = np.zeros(len(v))
    for _ in range(6):
        k = _unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(25.0, 80.0))
        lum += np.sin(v @ k + rng.uniform(0, 2 * np.pi))
    lum /= np.sqrt(6 / 2)  # unit variance
    red = np.zeros(len(v))
    for _ in range(3):
        k = _unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(30.0, 90.0))
        red += np.sin(v @ k + rng.uniform(0, 2 * np.pi))
    red /= np.sqrt(3 / 2)
    tex = np.ones((len(v), 3)) * (1.0 + 0.08 * lum)[:, None]
    tex *= (1.0 + 0.04 * red[:, None] * np.array([1.0, -0.5, -1.0]))
    # palm lighter and pinker: the palm faces -z in the rest pose
    palm = np.clip(-vertex_normals(v, faces)[:, 2], 0.0, 1.0) ** 1.5
    tex *= 1.0 + palm[:, None] * np.array([0.18, 0.10, 0.10])
    # knuckle / crease bands: darker and redder near finger joints (not the wrist)
    j = np.asarray(rest_joints, dtype=np.float64)[1:]
    dist = np.min(np.linalg.norm(v[:, None, :] - j[None, :, :], axis=-1), axis=1)
    band = np.exp(-0.5 * (dist / 6.0) ** 2)
    tex *= 1.0 - band[:, None] * np.array([0.05, 0.12, 0.12])
    gain = rng.normal(1.0, 0.07) * (1.0 + rng.normal(0.0, 0.03) * np.array([1.0, 0.0, -1.0]))
    return SubjectLook(texture=tex, tone_gain=np.clip(gain, 0.7, 1.3))


def jitter_lighting(setup: Lighting, rng) -> Lighting:
    """Per-frame variation of a set-up: rotate about the optical axis by U(-25, 25) deg, scale by U(0.85, 1.15)."""
    a = np.deg2rad(rng.uniform(-25.0, 25.0))
    c, s = np.cos(a), np.sin(a)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    g = rng.uniform(0.85, 1.15)
    return dataclasses.replace(setup, directions=setup.directions @ rz.T, colours=setup.colours * g,
                               ambient=setup.ambient * g)


def shade(albedo, normals, view_dirs, lighting: Lighting):
    """Shade hit samples.

    Args:
      albedo: [N, 3] linear albedo. normals: [N, 3] unit surface normals (facing the camera).
      view_dirs: [N, 3] unit directions from the surface towards the camera. lighting: a set-up.
    Returns:
      [N, 3] float32 sRGB in [0, 1].
    """
    n = np.asarray(normals, dtype=np.float32)
    view_dirs = np.asarray(view_dirs, dtype=np.float32)
    diffuse = np.broadcast_to(lighting.ambient.astype(np.float32), n.shape).copy()
    spec = np.zeros_like(n)
    for l_dir, colour in zip(lighting.directions.astype(np.float32), lighting.colours.astype(np.float32)):
        ndl = np.maximum(n @ l_dir, 0.0)
        diffuse += ndl[:, None] * colour
        h = view_dirs + l_dir
        h /= np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-6)
        ndh = np.maximum(np.sum(n * h, axis=-1), 1e-6)
        spec += (np.exp(lighting.shininess * np.log(ndh)) * (ndl > 0))[:, None] * colour
    radiance = lighting.exposure * (np.asarray(albedo, np.float32) * diffuse + lighting.specular * spec)
    # soft shoulder above 0.8 so strong lights roll off instead of clipping to flat white
    knee = 0.8
    over = np.maximum(radiance - knee, 0.0)
    radiance = np.minimum(radiance, knee) + (1.0 - knee) * (1.0 - np.exp(-over / (1.0 - knee)))
    return linear_to_srgb(radiance).astype(np.float32)
