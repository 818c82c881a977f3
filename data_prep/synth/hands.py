"""Procedural adult right hands with one fixed 1305-vertex topology, and their own deformation.

Every subject is built from a seed: anatomical parameters (bone lengths, palm width and thickness,
finger radii and taper, finger splay, thumb placement and opposition) are drawn from adult ranges
(see docs/synthetic_hands.md ("Anatomy")), then a mesh with the SAME topology for everyone is laid out on them:

* a palm tube of ``PALM_LEVELS`` rings of ``PALM_RING`` vertices from the wrist to the knuckles, its
  top ring scalloped over the four knuckles, a hole on the radial-palmar side where the thumb leaves,
  and a domed cap closing the wrist end;
* five finger tubes of ``RING``-vertex elliptical rings along the bones, each ending in a rounded cap
  and an apex vertex; the four long fingers are joined to the palm's top ring with web triangles
  between neighbours, the thumb to the border of the hole through a thenar collar.

The surface is closed, 2-manifold, consistently oriented with outward normals (Euler characteristic 2).
Posing uses dual-quaternion skinning with smooth weights computed from each vertex's position along
the bones (it is deliberately not linear blend skinning), joints follow the SMPL kinematics of
``hsr_tf.hand_model.skeleton``.

Frames and units: millimetres, neutral hand frame of skeleton.py (right hand, wrist at the origin,
fingers +y, palm facing -z, thumb towards +x).

Legend: V vertices (1305), F faces, J joints (21), K skinning influences per vertex (3),
P leading batch shape of poses, R vertices per finger ring (12).
"""
import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation

from hsr_tf.hand_model import skeleton as sk

N_VERTICES = 1305
RING = 12  # vertices around every finger ring
PALM_RING = 60  # vertices around every palm ring
PALM_LEVELS = 6  # palm rings from the wrist (0) to the knuckles (5)
CAP_RING = 30  # inner ring of the wrist cap
NUM_INFLUENCES = 3

# Ring stations along a finger: (bone, value). bone 0/1/2 = proximal/middle/distal bone of the
# chain (for the thumb: metacarpal/proximal/distal), value = fraction of that bone; for bone 2 the
# fraction of the straight part between the distal joint and the centre of the tip cap; "cap" rings
# sit on the rounded tip at the given polar angle (degrees from the cross-section plane).
FINGER_STATIONS = ((0, 0.22), (0, 0.42), (0, 0.62), (0, 0.80), (0, 0.92), (0, 1.0),
                   (1, 0.12), (1, 0.35), (1, 0.60), (1, 0.85), (1, 1.0),
                   (2, 0.30), (2, 0.70), ("cap", 38.0), ("cap", 68.0))
THUMB_STATIONS = ((0, 0.36), (0, 0.50), (0, 0.64), (0, 0.78), (0, 0.90), (0, 1.0),
                  (1, 0.15), (1, 0.35), (1, 0.55), (1, 0.75), (1, 0.90), (1, 1.0),
                  (2, 0.30), (2, 0.70), ("cap", 38.0), ("cap", 68.0))
# Extension of the mesh beyond the tip joint (mm): the tip joint sits inside the distal pad.
TIP_EXTENSION = 3.0

# Palm ring layout at the knuckle level (ring index k in 0..59): for long finger q (0 index .. 3
# pinky) dorsal vertices D(q, i) = 7q + i follow base-ring vertices i = 0..6 of that finger (radial
# side -> back of the finger -> ulnar side); 28, 29 round the ulnar edge; palmar vertices
# A(q, m) = 30 + 7(3 - q) + m follow base-ring vertices (6 + m) % 12 (ulnar -> palmar -> radial);
# 58, 59 round the radial edge.
_HOLE_COLS = (54, 55, 56, 57, 58)  # palm columns around the thumb hole
_HOLE_LEVELS = (1, 2, 3)
_PALM_LEVEL_FRACTIONS = (-0.12, 0.14, 0.36, 0.58, 0.80)  # level heights / knuckle height (0..4)


def _dorsal_col(q, i):
    return 7 * q + i


def _palmar_col(q, m):
    return 30 + 7 * (3 - q) + m


# ----------------------------------------------------------------------------------------------
# Topology (identical for every subject)
# ----------------------------------------------------------------------------------------------
def _allocate_ids():
    vid = 0
    removed = {(_HOLE_LEVELS[1], c) for c in _HOLE_COLS[1:-1]}
    palm = np.full((PALM_LEVELS, PALM_RING), -1, dtype=np.int64)
    for lev in range(PALM_LEVELS):
        for k in range(PALM_RING):
            if (lev, k) not in removed:
                palm[lev, k] = vid
                vid += 1
    cap = np.arange(vid, vid + CAP_RING)
    vid += CAP_RING
    cap_center = vid
    vid += 1
    rings, apexes = [], []
    for f in range(5):
        stations = THUMB_STATIONS if f == 0 else FINGER_STATIONS
        rings.append(np.arange(vid, vid + len(stations) * RING).reshape(len(stations), RING))
        vid += len(stations) * RING
        apexes.append(vid)
        vid += 1
    if vid != N_VERTICES:
        raise AssertionError(f"vertex budget: laid out {vid} vertices, expected {N_VERTICES}")
    return palm, cap, cap_center, rings, apexes


_PALM_IDS, _CAP_IDS, _CAP_CENTER, _RING_IDS, _APEX_IDS = _allocate_ids()


def _hole_loop():
    """Palm vertex ids around the thumb hole, in loop order (12)."""
    lo, mid, hi = _HOLE_LEVELS
    cols = list(_HOLE_COLS)
    loop = [_PALM_IDS[lo, c] for c in cols] + [_PALM_IDS[mid, cols[-1]]]
    loop += [_PALM_IDS[hi, c] for c in cols[::-1]] + [_PALM_IDS[mid, cols[0]]]
    return np.array(loop)


_HOLE_LOOP = _hole_loop()


def _zipper(ring_a, ring_b):
    """Triangles joining two aligned closed rings of possibly different sizes."""
    na, nb = len(ring_a), len(ring_b)
    tris, i, j = [], 0, 0
    while i < na or j < nb:
        if j >= nb or (i < na and (i + 1) / na <= (j + 1) / nb):
            tris.append((ring_a[i % na], ring_a[(i + 1) % na], ring_b[j % nb]))
            i += 1
        else:
            tris.append((ring_a[i % na], ring_b[(j + 1) % nb], ring_b[j % nb]))
            j += 1
    return tris


def _raw_faces(hole_map):
    """All triangles before orientation is made consistent. hole_map(q) -> thumb ring index."""
    tris = []

    def quad(a, b, c, d):
        tris.append((a, b, c))
        tris.append((a, c, d))

    palm = _PALM_IDS
    hole_quads = {(lev, k) for lev in _HOLE_LEVELS[:-1] for k in _HOLE_COLS[:-1]}
    for lev in range(PALM_LEVELS - 1):
        for k in range(PALM_RING):
            if (lev, k) in hole_quads:
                continue
            k2 = (k + 1) % PALM_RING
            quad(palm[lev, k], palm[lev, k2], palm[lev + 1, k2], palm[lev + 1, k])
    tris += _zipper(list(palm[0]), list(_CAP_IDS))
    for j in range(CAP_RING):
        tris.append((_CAP_IDS[j], _CAP_IDS[(j + 1) % CAP_RING], _CAP_CENTER))
    top = palm[-1]
    for q in range(4):
        base = _RING_IDS[q + 1][0]
        for i in range(6):
            quad(top[_dorsal_col(q, i)], top[_dorsal_col(q, i + 1)], base[i + 1], base[i])
            quad(top[_palmar_col(q, i)], top[_palmar_col(q, i + 1)], base[(7 + i) % RING], base[(6 + i) % RING])
    for q in range(3):  # web between finger q and its ulnar neighbour q + 1
        f_u, f_r = _RING_IDS[q + 1][0][6], _RING_IDS[q + 2][0][0]
        d_u, d_r = top[_dorsal_col(q, 6)], top[_dorsal_col(q + 1, 0)]
        a_r, a_u = top[_palmar_col(q + 1, 6)], top[_palmar_col(q, 0)]
        tris += [(f_u, d_u, d_r), (f_u, d_r, f_r), (f_u, f_r, a_r), (f_u, a_r, a_u)]
    f0 = _RING_IDS[1][0][0]  # radial edge of the index
    tris += [(f0, top[57], top[58]), (f0, top[58], top[59]), (f0, top[59], top[0])]
    f3 = _RING_IDS[4][0][6]  # ulnar edge of the pinky
    tris += [(f3, top[27], top[28]), (f3, top[28], top[29]), (f3, top[29], top[30])]
    for f in range(5):
        rings = _RING_IDS[f]
        for r in range(len(rings) - 1):
            for k in range(RING):
                k2 = (k + 1) % RING
                quad(rings[r][k], rings[r][k2], rings[r + 1][k2], rings[r + 1][k])
        for k in range(RING):
            tris.append((rings[-1][k], rings[-1][(k + 1) % RING], _APEX_IDS[f]))
    thumb0 = _RING_IDS[0][0]
    for q in range(RING):
        q2 = (q + 1) % RING
        quad(_HOLE_LOOP[q], _HOLE_LOOP[q2], thumb0[hole_map(q2)], thumb0[hole_map(q)])
    return np.array(tris, dtype=np.int64)


def _orient_consistently(faces):
    """Flips faces so that every interior edge is traversed once in each direction (BFS)."""
    faces = faces.copy()
    edge_faces = {}
    for fi, (a, b, c) in enumerate(faces):
        for u, v in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault((min(u, v), max(u, v)), []).append(fi)
    for key, owners in edge_faces.items():
        if len(owners) != 2:
            raise AssertionError(f"edge {key} is shared by {len(owners)} faces; expected 2")
    done = np.zeros(len(faces), dtype=bool)
    for start in range(len(faces)):
        if done[start]:
            continue
        done[start] = True
        stack = [start]
        while stack:
            fi = stack.pop()
            a, b, c = faces[fi]
            for u, v in ((a, b), (b, c), (c, a)):
                for other in edge_faces[(min(u, v), max(u, v))]:
                    if other == fi or done[other]:
                        continue
                    oa, ob, oc = faces[other]
                    if (u, v) in ((oa, ob), (ob, oc), (oc, oa)):  # same direction: flip
                        faces[other] = (oa, oc, ob)
                    done[other] = True
                    stack.append(other)
    return faces


def signed_volume(vertices, faces):
    """Signed volume (mm^3) enclosed by a triangle mesh; positive for outward normals.

    Args:
      vertices: [..., V, 3]; faces: [F, 3] int.
    Returns:
      [...] volumes.
    """
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[..., faces[:, 0], :], v[..., faces[:, 1], :], v[..., faces[:, 2], :]
    return np.sum(np.einsum("...i,...i->...", a, np.cross(b, c)), axis=-1) / 6.0


# ----------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------
# Joint-to-joint segment lengths as fractions of hand length (Buchholz, Armstrong & Goldstein 1992,
# J. Biomed. Eng. 14:149), rows index, middle, ring, little; columns proximal, middle, distal phalanx.
_PHALANX_RATIOS = np.array([[0.245, 0.143, 0.097], [0.266, 0.170, 0.108],
                            [0.244, 0.165, 0.107], [0.204, 0.117, 0.093]])
_THUMB_RATIOS = np.array([0.251, 0.196, 0.158])  # metacarpal, proximal, distal


@dataclasses.dataclass
class Anatomy:
    """Anatomical parameters of one subject (mm and radians; neutral hand frame)."""
    hand_length: float
    palm_width: float
    finger_lengths: np.ndarray  # [4, 3] MCP->PIP, PIP->DIP, DIP->tip joint (long fingers)
    mcp: np.ndarray  # [4, 3] MCP joint positions (index..pinky)
    splay: np.ndarray  # [4] angle of each finger from +y towards +x (radial)
    finger_radius: np.ndarray  # [4, 2] half-width at the base and at the tip
    finger_flatness: np.ndarray  # [4] thickness / width of the finger cross-section
    edge_margin: np.ndarray  # [2] palm edge beyond the index / pinky axis (radial, ulnar)
    dorsal_thickness: float  # knuckle skin above the MCP axis
    palmar_thickness: float  # palmar skin below the MCP axis
    wrist_width: float
    wrist_thickness: float
    thenar: float  # thenar bulge (mm)
    hypothenar: float
    cmc: np.ndarray  # [3] thumb CMC joint
    thumb_lengths: np.ndarray  # [3] CMC->MCP, MCP->IP, IP->tip joint
    thumb_alpha: float  # metacarpal angle from +y towards +x
    thumb_beta: float  # metacarpal tilt towards the palm (-z)
    thumb_bend: np.ndarray  # [2] rest bend of the proximal, distal phalanx towards +y
    thumb_pronation: float  # rotation of the thumb nail from the palm normal towards radial
    thumb_radius: np.ndarray  # [4, 2] (half-width, half-thickness) at thenar, MCP, IP, tip


def mean_anatomy():
    """The anatomy of an average subject (every random draw at its mean)."""
    return sample_anatomy(None)


def sample_anatomy(rng):
    """Draws one adult right hand's anatomy.

    Args:
      rng: np.random.Generator, or None for the mean subject.
    Returns:
      Anatomy.
    """
    def normal(mean, sd, size=None):
        if rng is None:
            return np.full(size, float(mean)) if size is not None else float(mean)
        return rng.normal(mean, sd, size)

    hand_length = float(np.clip(normal(185.0, 9.0), 165.0, 205.0))
    scale = hand_length / 185.0
    palm_width = float(np.clip(0.458 * hand_length + normal(0.0, 3.0), 75.0, 95.0))
    lengths = _PHALANX_RATIOS * hand_length * normal(1.0, 0.03, (4, 3))
    lengths[:, 2] -= TIP_EXTENSION  # the tip joint sits inside the pad, the skin ends beyond it
    thumb_lengths = _THUMB_RATIOS * hand_length * normal(1.0, 0.03, 3)
    thumb_lengths[2] -= TIP_EXTENSION
    # Knuckle row: middle MCP at hand_length * (1 - sum of its phalanx ratios).
    y_mid = hand_length * (1.0 - _PHALANX_RATIOS[1].sum()) + normal(0.0, 1.5)
    spacing = palm_width * 0.232 * normal(1.0, 0.03, 3)  # index-middle, middle-ring, ring-pinky
    x_mid = palm_width * 0.06 + normal(0.0, 1.0)
    x = np.array([x_mid + spacing[0], x_mid, x_mid - spacing[1], x_mid - spacing[1] - spacing[2]])
    y = y_mid + scale * np.array([-3.0, 0.0, -3.5, -12.0]) + normal(0.0, 1.2, 4) * np.array([1, 0, 1, 1.5])
    z = np.array([-1.5, 0.0, -1.5, -4.0]) + normal(0.0, 0.8, 4)
    mcp = np.stack([x, y, z], axis=1)
    splay = np.radians(np.array([5.0, 0.0, -5.0, -11.0]) + normal(0.0, 1.5, 4) * np.array([1, 0.6, 1, 1.5]))
    base = palm_width * np.array([0.110, 0.112, 0.105, 0.093]) * normal(1.0, 0.04, 4)
    tip_ratio = np.clip(normal(0.84, 0.03, 4), 0.76, 0.92)
    finger_radius = np.stack([base, base * tip_ratio], axis=1)
    finger_flatness = np.clip(normal(0.87, 0.03, 4), 0.8, 0.95)
    edge_margin = palm_width * np.array([0.155, 0.150]) * normal(1.0, 0.04, 2) - 2.5  # extras bulge 2.5 mm
    dorsal = palm_width * 0.12 * normal(1.0, 0.06)
    palmar = palm_width * 0.19 * normal(1.0, 0.06)
    wrist_width = palm_width * 0.70 * normal(1.0, 0.04)
    wrist_thickness = palm_width * 0.43 * normal(1.0, 0.05)
    cmc = np.array([palm_width * 0.24, hand_length * 0.115, -palm_width * 0.13]) + normal(0.0, 1.5, 3)
    thumb_alpha = np.radians(normal(40.0, 4.0))
    thumb_beta = np.radians(normal(22.0, 4.0))
    thumb_bend = np.radians(np.array([12.0, 6.0]) + normal(0.0, 3.0, 2))
    thumb_pronation = np.radians(normal(70.0, 6.0))
    tr = palm_width * np.array([[0.175, 0.150], [0.130, 0.112], [0.118, 0.100], [0.110, 0.092]])
    thumb_radius = tr * normal(1.0, 0.04)
    return Anatomy(hand_length, palm_width, lengths, mcp, splay, finger_radius, finger_flatness,
                   edge_margin, float(dorsal), float(palmar), float(wrist_width), float(wrist_thickness),
                   float(palm_width * 0.055 * normal(1.0, 0.15)), float(palm_width * 0.035 * normal(1.0, 0.15)),
                   cmc, thumb_lengths, float(thumb_alpha), float(thumb_beta), thumb_bend,
                   float(thumb_pronation), thumb_radius)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotate(vec, axis, angle):
    return Rotation.from_rotvec(_unit(np.asarray(axis, float)) * angle).apply(vec)


def _smoothstep(t):
    """0 for t <= -1, 1 for t >= 1, C1-smooth cubic in between."""
    x = np.clip((np.asarray(t, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class _Layout:
    """Skeleton, bone frames and ring geometry of one anatomy (rest pose)."""

    def __init__(self, anat):
        self.anat = anat
        joints = np.zeros((sk.NUM_JOINTS, 3))
        # frames[j] = (d, n, e): bone direction, dorsal (nail) normal, d x n (radial / thumb palmar)
        frames = np.zeros((sk.NUM_JOINTS, 3, 3))
        frames[0] = np.eye(3)[[1, 2, 0]]
        for q in range(4):
            jj = sk.FINGER_JOINTS[q + 1]
            d = np.array([np.sin(anat.splay[q]), np.cos(anat.splay[q]), 0.0])
            n = np.array([0.0, 0.0, 1.0])
            joints[jj[0]] = anat.mcp[q]
            for b in range(3):
                joints[jj[b + 1]] = joints[jj[b]] + anat.finger_lengths[q, b] * d
            for j in jj:
                frames[j] = (d, n, np.cross(d, n))
        jj = sk.FINGER_JOINTS[0]
        d_m = np.array([np.sin(anat.thumb_alpha) * np.cos(anat.thumb_beta),
                        np.cos(anat.thumb_alpha) * np.cos(anat.thumb_beta), -np.sin(anat.thumb_beta)])
        n0 = _unit(np.array([0.0, 0.0, 1.0]) - d_m[2] * d_m)
        nail = _rotate(n0, d_m, anat.thumb_pronation)
        dirs = [d_m]
        for bend in anat.thumb_bend:  # rest bend of the phalanges towards the fingers (+y)
            dirs.append(_unit(_rotate(dirs[-1], np.cross(dirs[-1], [0.0, 1.0, 0.0]), bend)))
        joints[jj[0]] = anat.cmc
        for b in range(3):
            joints[jj[b + 1]] = joints[jj[b]] + anat.thumb_lengths[b] * dirs[b]
        for b, j in enumerate(jj):
            d = dirs[min(b, 2)]
            n = _unit(nail - np.dot(nail, d) * d)
            frames[j] = (d, n, np.cross(d, n))
        self.joints = joints
        self.frames = frames
        self.thumb_dirs = dirs

    # -- finger chains ---------------------------------------------------------------------------
    def chain(self, f):
        """(root, bone lengths [3], bone directions [3,3], nail normal, radius knots) of finger f."""
        a = self.anat
        jj = sk.FINGER_JOINTS[f]
        if f == 0:
            return self.joints[jj[0]], a.thumb_lengths, np.array(self.thumb_dirs), self.frames[jj[0], 1]
        d = self.frames[jj[0], 0]
        return self.joints[jj[0]], a.finger_lengths[f - 1], np.stack([d, d, d]), self.frames[jj[0], 1]

    def radius_at(self, f, s):
        """(half-width, half-thickness) of finger f's cross-section at chain coordinate s (mm)."""
        a = self.anat
        _, lengths, _, _ = self.chain(f)
        cum = np.concatenate([[0.0], np.cumsum(lengths)])
        s = np.asarray(s, dtype=np.float64)
        if f == 0:
            knots = np.array([0.0, cum[1], cum[2], cum[3]])
            w = np.interp(s, knots, a.thumb_radius[:, 0])
            t = np.interp(s, knots, a.thumb_radius[:, 1])
            return w, t
        q = f - 1
        r0, r1 = a.finger_radius[q]
        w = np.interp(s, [0.0, cum[3]], [r0, r1])
        knuckle = 1.0 + 0.05 * np.exp(-((s - cum[1]) / 5.0) ** 2) + 0.04 * np.exp(-((s - cum[2]) / 4.0) ** 2)
        w = w * knuckle
        return w, w * a.finger_flatness[q]

    def ring_points(self, f, station, slant=0.0):
        """Vertices [RING, 3] and chain coordinates [RING] of one ring of finger f."""
        root, lengths, dirs, nail = self.chain(f)
        cum = np.concatenate([[0.0], np.cumsum(lengths)])
        phi = 2.0 * np.pi * np.arange(RING) / RING
        w_tip, t_tip = self.radius_at(f, cum[3])
        cap_len = 0.95 * w_tip
        s_cap = cum[3] + TIP_EXTENSION - cap_len  # centre of the tip cap
        bone, value = station
        polar = 0.0
        if bone == "cap":
            polar = np.radians(value)
            s = s_cap + cap_len * np.sin(polar) * np.ones(RING)
        elif bone == 2:
            s = (cum[2] + value * (s_cap - cum[2])) * np.ones(RING)
        else:
            s = (cum[bone] + value * lengths[bone]) * np.ones(RING)
        s = s + slant * (-np.sin(phi))  # palmar side further out along the bone
        centres, axes = self._centre(root, cum, dirs, s)
        if bone == "cap":
            centres = self._centre(root, cum, dirs, np.full(RING, s_cap))[0] + axes * (cap_len * np.sin(polar))
            w, t = self.radius_at(f, np.full(RING, cum[3]))
            w, t = w * np.cos(polar), t * np.cos(polar)
        else:
            w, t = self.radius_at(f, s)
        n = _unit(nail - np.sum(nail * axes, axis=-1, keepdims=True) * axes)
        e = np.cross(axes, n)
        pts = centres + (w * np.cos(phi))[:, None] * e + (t * np.sin(phi))[:, None] * n
        return pts, s

    def apex(self, f):
        root, lengths, dirs, nail = self.chain(f)
        cum = np.concatenate([[0.0], np.cumsum(lengths)])
        return self.joints[sk.FINGER_TIPS[f]] + TIP_EXTENSION * dirs[2], cum[3] + TIP_EXTENSION

    @staticmethod
    def _centre(root, cum, dirs, s):
        """Points on the (rest, possibly bent) bone chain at coordinates s, and the local axis."""
        bone = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, 2)
        starts = root + np.concatenate([np.zeros((1, 3)), np.cumsum(np.diff(cum)[:, None] * dirs, axis=0)])
        pts = starts[bone] + (s - cum[bone])[:, None] * dirs[bone]
        axes = dirs[bone].copy()
        at_joint = np.isclose(s, cum[bone]) & (bone > 0)
        axes[at_joint] = _unit(dirs[bone[at_joint]] + dirs[bone[at_joint] - 1])
        return pts, axes


def _palm_top(layout):
    """Knuckle-level palm ring [60, 3] and the finger each column follows [60]."""
    a = layout.anat
    pts = np.zeros((PALM_RING, 3))
    owner = np.zeros(PALM_RING, dtype=np.int64)
    phi = 2.0 * np.pi * np.arange(RING) / RING
    mcp = a.mcp
    gaps = np.linalg.norm(np.diff(mcp[:, :2], axis=0), axis=1) / 2.0  # half distances to neighbours
    for q in range(4):
        d, n, e = layout.frames[sk.FINGER_ROOTS[q + 1]]
        half_r = a.edge_margin[0] if q == 0 else gaps[q - 1]
        half_u = a.edge_margin[1] if q == 3 else gaps[q]
        for i in range(7):
            c = np.cos(phi[i])
            lateral = c * (half_r if c > 0 else half_u)
            height = a.dorsal_thickness * (0.78 + 0.22 * np.sin(phi[i]))
            pts[_dorsal_col(q, i)] = mcp[q] + lateral * e + height * n - 1.0 * d
            owner[_dorsal_col(q, i)] = q
            ph = phi[(6 + i) % RING] if i < 6 else 2 * np.pi
            c = np.cos(ph)
            lateral = c * (half_r if c > 0 else half_u)
            depth = a.palmar_thickness * (0.9 + 0.1 * (-np.sin(ph)))
            pts[_palmar_col(q, i)] = mcp[q] + lateral * e - depth * n + 4.0 * d
            owner[_palmar_col(q, i)] = q
    for q, cols, side in ((3, (28, 29), -1.0), (0, (59, 58), 1.0)):
        d, n, e = layout.frames[sk.FINGER_ROOTS[q + 1]]
        margin = a.edge_margin[0 if side > 0 else 1]
        pts[cols[0]] = mcp[q] + side * (margin + 2.5) * e + 0.45 * a.dorsal_thickness * n + 1.0 * d
        pts[cols[1]] = mcp[q] + side * (margin + 2.5) * e - 0.45 * a.palmar_thickness * n + 2.0 * d
        owner[list(cols)] = q
    return pts, owner


def _palm_rings(layout, top):
    """Positions [PALM_LEVELS, 60, 3] of all palm rings (hole vertices included, before the collar)."""
    a = layout.anat
    x_edges = (top[:, 0].max(), top[:, 0].min())
    cx_top, half_top = 0.5 * (x_edges[0] + x_edges[1]), 0.5 * (x_edges[0] - x_edges[1])
    cz_top = float(np.mean(a.mcp[:, 2]))
    y_top = float(np.mean(a.mcp[:, 1]))
    xn = (top[:, 0] - cx_top) / half_top
    zr = top[:, 2] - cz_top
    zn = np.where(zr > 0, zr / a.dorsal_thickness, zr / a.palmar_thickness)
    theta = np.arctan2(zn, xn)
    rings = np.zeros((PALM_LEVELS, PALM_RING, 3))
    rings[-1] = top
    for lev, frac in enumerate(_PALM_LEVEL_FRACTIONS):
        y = frac * y_top
        tau = float(np.clip(frac, 0.0, 1.0))
        grow = 1.0 - (1.0 - tau) ** 2
        half = 0.5 * a.wrist_width + (half_top - 0.5 * a.wrist_width) * grow
        cx = cx_top * grow
        cz = cz_top * tau
        t_d = 0.5 * a.wrist_thickness + (a.dorsal_thickness - 0.5 * a.wrist_thickness) * tau
        t_p = 0.5 * a.wrist_thickness + (a.palmar_thickness - 0.5 * a.wrist_thickness) * tau
        p = 2.3 + 0.9 * tau
        c, s = np.cos(theta), np.sin(theta)
        x = cx + half * np.sign(c) * np.abs(c) ** (2.0 / p)
        z = cz + np.where(s > 0, t_d, t_p) * np.sign(s) * np.abs(s) ** (2.0 / p)
        # thenar (radial-palmar) and hypothenar (ulnar-palmar) eminences
        bump = (a.thenar * np.exp(-((theta + np.radians(50)) / np.radians(35)) ** 2) * np.exp(-((tau - 0.35) / 0.3) ** 2)
                + a.hypothenar * np.exp(-((theta + np.radians(140)) / np.radians(30)) ** 2) * np.exp(-((tau - 0.45) / 0.3) ** 2))
        x = x + bump * c
        z = z + bump * s
        ring = np.stack([x, np.full_like(x, y), z], axis=1)
        if lev == PALM_LEVELS - 2:  # ease into the scalloped knuckle ring
            ring = 0.65 * ring + 0.35 * np.stack([top[:, 0], np.full_like(x, y), top[:, 2]], axis=1)
        rings[lev] = ring
    return rings


def _thumb_collar(layout):
    """Collar ring [12, 3] around the thumb metacarpal where it leaves the palm."""
    a = layout.anat
    d, n, e = layout.frames[1]
    centre = a.cmc + 0.12 * a.thumb_lengths[0] * d
    phi = 2.0 * np.pi * np.arange(RING) / RING
    w, t = a.thumb_radius[0] * 1.25
    return centre + (w * np.cos(phi))[:, None] * e + (t * np.sin(phi))[:, None] * n


def _best_hole_map(layout):
    """(offset, direction) matching the hole loop to the collar with the least total distance."""
    top, _ = _palm_top(layout)
    rings = _palm_rings(layout, top)
    flat = rings.reshape(-1, 3)
    lookup = {int(v): i for i, v in enumerate(_PALM_IDS.reshape(-1)) if v >= 0}
    loop = flat[[lookup[int(v)] for v in _HOLE_LOOP]]
    collar = _thumb_collar(layout)
    best = None
    for direction in (1, -1):
        for offset in range(RING):
            idx = (offset + direction * np.arange(RING)) % RING
            cost = np.sum((loop - collar[idx]) ** 2)
            if best is None or cost < best[0]:
                best = (cost, offset, direction)
    return best[1], best[2]


_MEAN_LAYOUT = _Layout(mean_anatomy())
_HOLE_OFFSET, _HOLE_DIRECTION = _best_hole_map(_MEAN_LAYOUT)


def _hole_map(q):
    return (_HOLE_OFFSET + _HOLE_DIRECTION * q) % RING


_COLLAR_BLEND = 0.6


def _build_vertices(layout):
    """Rest vertices [V, 3] and chain coordinates (finger [V] in -1..4, s [V]) of one layout."""
    verts = np.zeros((N_VERTICES, 3))
    finger_of = np.full(N_VERTICES, -1, dtype=np.int64)
    s_of = np.zeros(N_VERTICES)
    top, owner = _palm_top(layout)
    rings = _palm_rings(layout, top)
    mask = _PALM_IDS >= 0
    verts[_PALM_IDS[mask]] = rings[mask]
    collar = _thumb_collar(layout)
    for q, vid in enumerate(_HOLE_LOOP):
        verts[vid] = (1 - _COLLAR_BLEND) * verts[vid] + _COLLAR_BLEND * collar[_hole_map(q)]
    base = rings[0]
    centre = base.mean(axis=0)
    inner = centre + 0.62 * (base[::2] - centre) + np.array([0.0, -6.0, 0.0])
    verts[_CAP_IDS] = inner
    verts[_CAP_CENTER] = centre + np.array([0.0, -8.5, 0.0])
    for f in range(5):
        stations = THUMB_STATIONS if f == 0 else FINGER_STATIONS
        for r, st in enumerate(stations):
            slant = (4.0 if r == 0 else 2.0 if r == 1 else 0.0) if f > 0 else 0.0
            pts, s = layout.ring_points(f, st, slant)
            verts[_RING_IDS[f][r]] = pts
            finger_of[_RING_IDS[f][r]] = f
            s_of[_RING_IDS[f][r]] = s
        apex, s = layout.apex(f)
        verts[_APEX_IDS[f]] = apex
        finger_of[_APEX_IDS[f]] = f
        s_of[_APEX_IDS[f]] = s
    return verts, finger_of, s_of, owner


def _faces():
    faces = _orient_consistently(_raw_faces(_hole_map))
    verts = _build_vertices(_MEAN_LAYOUT)[0]
    if signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1]
    return np.ascontiguousarray(faces, dtype=np.int32)


#: Triangles [F, 3] int32, identical for all subjects, counter-clockwise seen from outside.
FACES = _faces()


def _vertex_segment():
    seg = np.zeros(N_VERTICES, dtype=np.int32)
    for f in range(5):
        stations = THUMB_STATIONS if f == 0 else FINGER_STATIONS
        jj = sk.FINGER_JOINTS[f]
        for r, (bone, value) in enumerate(stations):
            if bone == "cap":
                b = 2
            elif bone != 2 and value == 1.0:  # the ring at a joint belongs to the bone before it
                b = bone
            else:
                b = bone
            seg[_RING_IDS[f][r]] = jj[b]
        seg[_APEX_IDS[f]] = jj[2]
    return seg


#: Joint index whose bone each vertex mainly follows [V] int32 (0 for the palm and wrist).
VERTEX_SEGMENT = _vertex_segment()


# ----------------------------------------------------------------------------------------------
# Skinning weights and dual-quaternion skinning
# ----------------------------------------------------------------------------------------------
# Blend half-widths (mm) and centres of the transitions along each chain.
_MCP_BLEND = (3.0, 8.0)  # centre offset distal of the MCP, half-width
_PIP_BLEND = 5.0
_DIP_BLEND = 4.0
_CMC_BLEND = (0.12, 12.0)  # centre as a fraction of the metacarpal, half-width
_THUMB_MCP_BLEND = 7.0
_THUMB_IP_BLEND = 5.0


def _chain_weights(f, s, lengths):
    """Weights [N, 4] of (palm, bone 0, bone 1, bone 2) for chain coordinates s of finger f."""
    cum = np.cumsum(lengths)
    if f == 0:
        c0, h0 = _CMC_BLEND[0] * lengths[0], _CMC_BLEND[1]
        h1, h2 = _THUMB_MCP_BLEND, _THUMB_IP_BLEND
    else:
        c0, h0 = _MCP_BLEND
        h1, h2 = _PIP_BLEND, _DIP_BLEND
    s0 = _smoothstep((s - c0) / h0)
    s1 = _smoothstep((s - cum[0]) / h1)
    s2 = _smoothstep((s - cum[1]) / h2)
    return np.stack([1.0 - s0, s0 - s1, s1 - s2, s2], axis=-1)


def _skinning_weights(layout, verts, finger_of, s_of, owner):
    """Dense weights [V, J] (rows sum to 1)."""
    a = layout.anat
    weights = np.zeros((N_VERTICES, sk.NUM_JOINTS))
    for f in range(5):
        sel = finger_of == f
        w = _chain_weights(f, s_of[sel], a.thumb_lengths if f == 0 else a.finger_lengths[f - 1])
        weights[np.ix_(sel, [0] + list(sk.FINGER_JOINTS[f][:3]))] = w
    palm = finger_of < 0
    palm_ids = np.nonzero(palm)[0]
    weights[palm_ids, 0] = 1.0
    # palm vertices next to the knuckles follow their finger's proximal phalanx a little
    top_level = _PALM_IDS[-2:]
    for lev_ids in top_level:
        for k, vid in enumerate(lev_ids):
            if vid < 0:
                continue
            q = owner[k]
            root = a.mcp[q]
            d = layout.frames[sk.FINGER_ROOTS[q + 1], 0]
            u = np.dot(verts[vid] - root, d)
            w = _chain_weights(q + 1, np.array([u]), a.finger_lengths[q])[0]
            weights[vid] = 0.0
            weights[vid, [0] + list(sk.FINGER_JOINTS[q + 1][:3])] = w
    # palm vertices around the thumb follow the thumb metacarpal, fading with distance from its axis
    d_m = layout.frames[1, 0]
    rel = verts[palm_ids] - a.cmc
    s_p = rel @ d_m
    radial = np.linalg.norm(rel - s_p[:, None] * d_m, axis=1)
    w_thumb = (_smoothstep((s_p - _CMC_BLEND[0] * a.thumb_lengths[0]) / _CMC_BLEND[1])
               * _smoothstep((30.0 - radial) / 10.0))
    weights[palm_ids] *= (1.0 - w_thumb)[:, None]
    weights[palm_ids, 1] += w_thumb
    return weights


def _sparsify(weights, k=NUM_INFLUENCES):
    order = np.argsort(-weights, axis=1)[:, :k]
    w = np.take_along_axis(weights, order, axis=1)
    dropped = weights.sum(axis=1) - w.sum(axis=1)
    if np.max(dropped) > 1e-9:
        raise AssertionError(f"skinning weights need more than {k} influences (dropped {dropped.max():.3g})")
    w = w / w.sum(axis=1, keepdims=True)
    return order.astype(np.int32), w


def _quat_mul(a, b):
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def _matrix_to_quat(mats):
    """[..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z)."""
    shape = mats.shape[:-2]
    xyzw = Rotation.from_matrix(mats.reshape(-1, 3, 3)).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=-1).reshape(shape + (4,))


def dual_quaternion_skin(rest_vertices, transforms, indices, weights):
    """Dual-quaternion skinning (Kavan et al. 2008).

    Args:
      rest_vertices: [V, 3] mm.
      transforms: [..., J, 4, 4] rigid transforms mapping rest coordinates to posed ones.
      indices: [V, K] int joint indices; weights: [V, K] non-negative, rows summing to 1.
    Returns:
      [..., V, 3] skinned vertices (mm).
    """
    rot = transforms[..., :3, :3]
    trans = transforms[..., :3, 3]
    q_r = _matrix_to_quat(rot)  # [..., J, 4]
    t_quat = np.concatenate([np.zeros(trans.shape[:-1] + (1,)), trans], axis=-1)
    q_d = 0.5 * _quat_mul(t_quat, q_r)
    g_r = q_r[..., indices, :]  # [..., V, K, 4]
    g_d = q_d[..., indices, :]
    sign = np.sign(np.sum(g_r * g_r[..., :1, :], axis=-1, keepdims=True))
    sign[sign == 0] = 1.0
    w = weights[..., None] * sign
    b_r = np.sum(w * g_r, axis=-2)
    b_d = np.sum(w * g_d, axis=-2)
    norm = np.linalg.norm(b_r, axis=-1, keepdims=True)
    b_r, b_d = b_r / norm, b_d / norm
    w0, v0 = b_r[..., :1], b_r[..., 1:]
    we, ve = b_d[..., :1], b_d[..., 1:]
    t = 2.0 * (w0 * ve - we * v0 + np.cross(v0, ve))
    # rotate: x' = x + 2 w (v x x) + 2 v x (v x x)
    x = rest_vertices
    vx = np.cross(v0, x)
    return x + 2.0 * w0 * vx + 2.0 * np.cross(v0, vx) + t


# ----------------------------------------------------------------------------------------------
# Subjects
# ----------------------------------------------------------------------------------------------
class Subject:
    """One procedural hand: rest mesh, skeleton, joint frames and its own deformation.

    Attributes:
      anatomy: Anatomy.
      rest_vertices: [V, 3] float64 mm, neutral hand frame.
      rest_joints: [J, 3] float64 mm.
      joint_axes: [J, 3, 3] rows (flexion axis, abduction axis, twist axis) of each joint at rest,
        in hand-frame axes (see data_prep.synth.poses for the sign conventions).
      skin_indices: [V, K] int32, skin_weights: [V, K] float64 (dual-quaternion skinning).
    """

    def __init__(self, anatomy):
        self.anatomy = anatomy
        layout = _Layout(anatomy)
        verts, finger_of, s_of, owner = _build_vertices(layout)
        self.rest_vertices = verts
        self.rest_joints = layout.joints.copy()
        dense = _skinning_weights(layout, verts, finger_of, s_of, owner)
        self.skin_indices, self.skin_weights = _sparsify(dense)
        axes = np.zeros((sk.NUM_JOINTS, 3, 3))
        for j in range(sk.NUM_JOINTS):
            d, n, e = layout.frames[j]
            axes[j] = (np.cross(n, d), -n, d)  # flexion (towards -n), abduction (towards e), twist
        self.joint_axes = axes

    def pose(self, theta):
        """Poses the subject.

        Args:
          theta: [..., 21, 3] axis-angle per joint relative to its parent, rest-frame axes (radians);
            theta[..., 0, :] is the global orientation about the wrist.
        Returns:
          (vertices [..., V, 3], joints [..., 21, 3]) float64 mm.
        """
        theta = np.asarray(theta, dtype=np.float64)
        if theta.ndim < 2 or theta.shape[-2:] != (sk.NUM_JOINTS, 3):
            raise ValueError(f"theta: expected shape [..., {sk.NUM_JOINTS}, 3], found {theta.shape}")
        batch = theta.shape[:-2]
        flat = theta.reshape((-1, sk.NUM_JOINTS, 3))
        verts = np.empty((flat.shape[0], N_VERTICES, 3))
        joints = np.empty((flat.shape[0], sk.NUM_JOINTS, 3))
        chunk = 64
        for start in range(0, flat.shape[0], chunk):
            part = flat[start:start + chunk]
            transforms, posed = sk.forward_kinematics_np(part, self.rest_joints)
            verts[start:start + chunk] = dual_quaternion_skin(self.rest_vertices, transforms,
                                                              self.skin_indices, self.skin_weights)
            joints[start:start + chunk] = posed
        return verts.reshape(batch + (N_VERTICES, 3)), joints.reshape(batch + (sk.NUM_JOINTS, 3))

    def theta_for(self, angles):
        """Converts anatomical angles to SMPL theta for this subject's joint axes.

        Args:
          angles: [P, 21, 3] (flexion, abduction, twist) radians per joint (see
            data_prep.synth.poses), or a PoseLibrary (its .angles are used).
        Returns:
          theta [P, 21, 3] axis-angle (theta[:, 0] = 0, tips zero).
        """
        angles = getattr(angles, "angles", angles)
        angles = np.asarray(angles, dtype=np.float64)
        if angles.ndim != 3 or angles.shape[1:] != (sk.NUM_JOINTS, 3):
            raise ValueError(f"angles: expected shape [P, {sk.NUM_JOINTS}, 3], found {angles.shape}")
        theta = np.zeros(angles.shape)
        num = angles.shape[0]
        for f in range(5):
            for j in sk.FINGER_JOINTS[f][:3]:
                axes = self.joint_axes[j]
                rot = (Rotation.from_rotvec(angles[:, j, 0:1] * axes[0])
                       * Rotation.from_rotvec(angles[:, j, 1:2] * axes[1])
                       * Rotation.from_rotvec(angles[:, j, 2:3] * axes[2]))
                theta[:, j] = rot.as_rotvec().reshape(num, 3)
        return theta


def make_subjects(num_subjects=50, seed=0):
    """Procedural subjects, deterministic given the seed.

    Args:
      num_subjects: how many (>= 1).
      seed: integer seed; subject i uses the stream (seed, i), so make_subjects(n)[:m] equals
        make_subjects(m) for m <= n.
    Returns:
      list of Subject.
    """
    if int(num_subjects) < 1:
        raise ValueError(f"num_subjects: expected >= 1, found {num_subjects}")
    return [Subject(sample_anatomy(np.random.default_rng([int(seed), i]))) for i in range(int(num_subjects))]
