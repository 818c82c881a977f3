"""Writers of small NYU / ICVL / MSRA datasets in their exact raw formats, for tests.

Every frame is a rendered hand: a posed mesh (camera frame, mm) ray-cast with
DATA's ``data_prep.synth.render.raycast_depth`` from a viewpoint drawn by DATA's
``sample_view``. The mesh comes from GEN's procedural subjects
(``data_prep.synth.hands``) when that module is importable, otherwise from a
built-in "capsule hand" (spheres and cylinders along the bones of a 21-joint
skeleton posed with ``skeleton.forward_kinematics_np``, plus an ellipsoid palm).
Either way the 21 joints of OUR skeleton lie inside the mesh.

Each dataset's joints are laid out from our 21 joints:

* NYU (36): the 21 joints of the paper's correspondence list are exactly our paired
  joints; the others are plausible interpolations (the ``_A`` points 80% of the way
  up the bone below, the thumb's extra points on its metacarpal, PALM_2..6 on the palm).
* ICVL (16): the palm centre and the paper's 15 finger pairings, exactly.
* MSRA (21): our joints, paired by name, exactly.

The writers return the ground truth (per split: joints in OUR camera frame as the
reader must produce them, the 21 model joints, and the meshes) so that tests can
compare the readers' output with it.

Legend: F frames, V vertices, T triangles, J dataset joints.
"""
from __future__ import annotations

import os

import numpy as np

from hsr_tf.data import datasets
from hsr_tf.geometry.camera import Camera
from hsr_tf.hand_model import skeleton

# ---------------------------------------------------------------------- capsule hand (fallback geometry)
_FINGER_BASES = {  # MCP positions (mm) in the neutral hand frame: fingers +y, palm -z, thumb +x
    "index": (24.0, 88.0, 0.0), "middle": (6.0, 92.0, 0.0), "ring": (-12.0, 88.0, 0.0), "pinky": (-28.0, 78.0, 0.0)}
_FINGER_LENGTHS = {"index": (40, 24, 20), "middle": (44, 28, 22), "ring": (41, 26, 21), "pinky": (32, 19, 18)}
_RADII = {"thumb": 10.0, "index": 9.0, "middle": 9.5, "ring": 9.0, "pinky": 8.0}


def capsule_rest_joints(scale: float = 1.0) -> np.ndarray:
    """[21, 3] neutral-pose joints of the capsule hand (mm, hand frame)."""
    j = np.zeros((21, 3))
    j[1] = (22.0, 22.0, -6.0)
    j[2] = (44.0, 45.0, -10.0)
    j[3] = (56.0, 72.0, -12.0)
    j[4] = (64.0, 95.0, -12.0)
    for f, name in enumerate(("index", "middle", "ring", "pinky")):
        root = 5 + 4 * f
        j[root] = _FINGER_BASES[name]
        for k, length in enumerate(_FINGER_LENGTHS[name]):
            j[root + k + 1] = j[root + k] + (0.0, length, 0.0)
    return j * scale


def random_theta(rng) -> np.ndarray:
    """[21, 3] a random natural-ish pose: finger flexion about x (towards the palm, -z), a little spread."""
    theta = np.zeros((21, 3))
    for f in range(5):
        root = 1 + 4 * f
        curl = rng.uniform(0.0, 1.2)
        for k in range(3):
            theta[root + k, 0] = -curl * rng.uniform(0.6, 1.0)
        theta[root, 2] = rng.uniform(-0.15, 0.15)
    return theta


def _capsule_mesh(joints_hand, radii):
    """Triangle mesh (vertices [V, 3], faces [T, 3]) of spheres + cylinders along the bones and a palm ellipsoid."""
    import open3d as o3d

    parts = []
    for j in range(21):
        r = radii[j]
        s = o3d.geometry.TriangleMesh.create_sphere(radius=r, resolution=10)
        s.translate(joints_hand[j])
        parts.append(s)
        p = skeleton.PARENTS[j]
        if p > 0 or (p == 0 and j == 1):  # bones inside fingers (and the thumb metacarpal)
            a, b = joints_hand[p], joints_hand[j]
            length = np.linalg.norm(b - a)
            cyl = o3d.geometry.TriangleMesh.create_cylinder(radius=min(r, radii[p]), height=length, resolution=12)
            axis = (b - a) / length
            z = np.array([0.0, 0.0, 1.0])
            v = np.cross(z, axis)
            c = float(np.dot(z, axis))
            if np.linalg.norm(v) < 1e-9:
                rot = np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
            else:
                vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
                rot = np.eye(3) + vx + vx @ vx / (1.0 + c)
            cyl.rotate(rot, center=np.zeros(3))
            cyl.translate(0.5 * (a + b))
            parts.append(cyl)
    palm = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=16)
    verts = np.asarray(palm.vertices) * np.array([38.0, 50.0, 13.0])
    centre = 0.5 * (joints_hand[0] + joints_hand[9]) + np.array([0.0, 0.0, 0.0])
    palm.vertices = o3d.utility.Vector3dVector(verts + centre)
    parts.append(palm)
    vs, fs, off = [], [], 0
    for m in parts:
        v = np.asarray(m.vertices)
        vs.append(v)
        fs.append(np.asarray(m.triangles) + off)
        off += len(v)
    return np.concatenate(vs), np.concatenate(fs).astype(np.int32)


def _capsule_hand(rng):
    """(vertices [V, 3], faces, joints [21, 3]) of a random capsule hand in the hand frame."""
    rest = capsule_rest_joints(scale=rng.uniform(0.9, 1.1))
    theta = random_theta(rng)
    _, joints = skeleton.forward_kinematics_np(theta, rest)
    radii = np.array([12.0] + [_RADII[f] for f in ("thumb", "index", "middle", "ring", "pinky") for _ in range(4)])
    radii[[4, 8, 12, 16, 20]] *= 0.85
    verts, faces = _capsule_mesh(joints, radii)
    return verts, faces, joints


def _generator_hands(rng, count):
    """GEN's procedural hands if available: list of (vertices, faces, joints) in the hand frame, else None.

    Two subjects alternate; poses come from GEN's pose library (one pose per frame).
    """
    try:
        from data_prep.synth import hands, poses
    except ImportError:  # GEN's modules not there: use the capsule hand
        return None
    subjects = hands.make_subjects(num_subjects=2, seed=int(rng.integers(1 << 30)))
    library = poses.pose_library(num_poses=max(count, len(poses.GESTURES)), seed=int(rng.integers(1 << 30)))
    thetas = [np.asarray(s.theta_for(library)) for s in subjects]
    faces = np.asarray(hands.FACES)
    out = []
    for i in range(count):
        verts, joints = subjects[i % 2].pose(thetas[i % 2][i])
        out.append((np.asarray(verts, np.float64), faces, np.asarray(joints, np.float64)))
    return out


def render_hands(count: int, camera: Camera, seed: int = 0, source: str = "auto"):
    """Render ``count`` hands through ``camera``.

    Args:
      source: 'auto' (GEN's hands when importable, else capsules), 'capsule' or 'generator'.
    Returns:
      list of dicts: ``depth`` [H, W] float32 mm, ``joints21`` [21, 3] camera mm,
      ``vertices`` [V, 3] camera mm, ``faces`` [T, 3], ``source`` str.
    """
    from data_prep.synth import render

    rng = np.random.default_rng(seed)
    hands = None
    if source in ("auto", "generator"):
        hands = _generator_hands(rng, count)
        if hands is None and source == "generator":
            raise RuntimeError("source='generator': data_prep.synth.hands is not importable")
    used = "generator" if hands is not None else "capsule"
    if hands is None:
        hands = [_capsule_hand(rng) for _ in range(count)]
    view = render.ViewConfig(distance_mm=(350.0, 600.0), cone_deg=40.0, back_prob=0.3, inplane_deg=60.0,
                             center_region=0.3)
    frames = []
    for verts, faces, joints in hands:
        rot, pos = render.sample_view(rng, camera, view)
        centroid = verts.mean(axis=0)
        v_cam = (verts - centroid) @ rot.T + pos
        j_cam = (joints - centroid) @ rot.T + pos
        depth = render.raycast_depth(v_cam, faces, camera)["depth"]
        frames.append({"depth": depth, "joints21": j_cam, "vertices": v_cam, "faces": faces, "source": used})
    return frames


# ---------------------------------------------------------------------- dataset skeletons from our joints
def _lerp(a, b, t):
    return a + t * (b - a)


def nyu_joints_from_ours(j21) -> np.ndarray:
    """[21, 3] our joints -> [36, 3] NYU joints (paired ones exact, the rest plausible)."""
    j = np.asarray(j21, dtype=np.float64)
    out = np.zeros((36, 3))
    # Fingers F1 pinky, F2 ring, F3 middle, F4 index: our roots 17, 13, 9, 5.
    for block, root in enumerate((17, 13, 9, 5)):
        mcp, pip, dip, tip = j[root], j[root + 1], j[root + 2], j[root + 3]
        b = 6 * block
        out[b + 0] = tip            # KNU3_A
        out[b + 1] = dip            # KNU3_B
        out[b + 2] = _lerp(pip, dip, 0.8)   # KNU2_A (neck of the middle phalanx)
        out[b + 3] = pip            # KNU2_B
        out[b + 4] = _lerp(mcp, pip, 0.8)   # KNU1_A
        out[b + 5] = mcp            # KNU1_B
    cmc, mcp, ip, tip = j[1], j[2], j[3], j[4]
    out[24] = tip                   # TH_KNU3_A
    out[25] = ip                    # TH_KNU3_B
    out[26] = mcp                   # TH_KNU2_A
    out[27] = _lerp(cmc, mcp, 0.8)  # TH_KNU2_B
    out[28] = cmc                   # TH_KNU1_A
    out[29] = _lerp(cmc, j[0], 0.4)  # TH_KNU1_B
    wrist = j[0]
    out[30] = wrist                 # PALM_1
    out[31] = _lerp(wrist, cmc, 0.5)              # PALM_2 (radial side of the wrist)
    out[32] = 0.5 * (wrist + j[9])                # PALM_3 (palm centre)
    out[33] = _lerp(wrist, j[17], 0.5)            # PALM_4
    out[34] = _lerp(wrist, j[5], 0.6)             # PALM_5
    out[35] = _lerp(wrist, j[13], 0.3)            # PALM_6
    return out


def icvl_joints_from_ours(j21) -> np.ndarray:
    """[21, 3] -> [16, 3]: exactly the paper's pairing (palm centre, then 15 finger joints)."""
    ours = datasets.add_palm_centre(np.asarray(j21, dtype=np.float64))
    return ours[datasets.ICVL.our_joint_indices]


def msra_joints_from_ours(j21) -> np.ndarray:
    """[21, 3] -> [21, 3] in MSRA order (by name)."""
    return np.asarray(j21, dtype=np.float64)[datasets.MSRA.our_joint_indices]


# ---------------------------------------------------------------------- NYU
def write_nyu(root: str, frames_per_split=None, seed: int = 0, source: str = "auto", kinects: int = 3) -> dict:
    """Write ``root/{train,test}/depth_1_NNNNNNN.png`` + ``joint_data.mat``.

    Depth PNGs: 640x480 RGB, depth mm = (G << 8) | B rounded to integers, R random
    (the reader must ignore it). ``joint_xyz``/``joint_uvd`` [kinects, F, 36, 3] (other
    kinects hold shifted copies, so using the wrong kinect is detectable);
    ``joint_names`` a 1 x 36 cell array.

    Returns:
      split -> dict ``joints`` [F, 36, 3] mm (kinect 1), ``joints21`` [F, 21, 3],
      ``frames`` (render_hands output), ``depth_mm`` [F, 480, 640] uint16.
    """
    import scipy.io
    from PIL import Image

    frames_per_split = frames_per_split or {"train": 6, "test": 3}
    camera = Camera.preset("nyu")
    truth = {}
    for k, (split, count) in enumerate(sorted(frames_per_split.items())):
        d = os.path.join(root, split)
        os.makedirs(d, exist_ok=True)
        frames = render_hands(count, camera, seed=seed * 100 + k, source=source)
        rng = np.random.default_rng(seed + 17 + k)
        xyz = np.stack([nyu_joints_from_ours(f["joints21"]) for f in frames])
        depths = []
        for i, f in enumerate(frames):
            dm = np.round(f["depth"]).astype(np.uint16)
            rgb = np.stack([rng.integers(0, 256, dm.shape, dtype=np.uint8), (dm >> 8).astype(np.uint8),
                            (dm & 0xFF).astype(np.uint8)], axis=-1)
            Image.fromarray(rgb, mode="RGB").save(os.path.join(d, f"depth_1_{i + 1:07d}.png"))
            depths.append(dm)
        all_xyz = np.stack([xyz + 100.0 * kk * np.array([1.0, 0.0, 0.0]) for kk in range(kinects)])
        all_uvd = camera.points_to_uvd(all_xyz)
        names = np.empty((1, 36), dtype=object)
        for i, n in enumerate(datasets.NYU_JOINT_NAMES):
            names[0, i] = n
        scipy.io.savemat(os.path.join(d, "joint_data.mat"),
                         {"joint_xyz": all_xyz, "joint_uvd": all_uvd, "joint_names": names})
        truth[split] = {"joints": xyz, "joints21": np.stack([f["joints21"] for f in frames]), "frames": frames,
                        "depth_mm": np.stack(depths)}
    return truth


# ---------------------------------------------------------------------- ICVL
def _save_png16(path, depth_mm):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.round(depth_mm).astype(np.uint16)).save(path)


def _uvd_line(rel, uvd):
    return rel + " " + " ".join(f"{x:.10g}" for x in np.asarray(uvd).reshape(-1)) + "\n"


def write_icvl(root: str, num_train: int = 4, num_rotated: int = 2, test_counts=(2, 2), seed: int = 0,
               source: str = "auto") -> dict:
    """Write ``Training/labels.txt`` + ``Training/Depth/...`` and ``Testing/test_seq_{1,2}.txt`` + PNGs.

    Original training frames live in ``201403121135/`` (long name), rotated copies in
    ``22.5/`` (short name; the same frames, labelled as such). Labels have the joints'
    (u, v, d) with 10 significant digits.

    Returns:
      'train' / 'train_rotated' / 'test' -> dict ``joints`` [F, 16, 3] camera mm (what the
      reader must produce), ``joints21``, ``frames``, ``paths`` (relative PNG paths).
    """
    camera = Camera.preset("icvl")
    truth = {}
    frames = render_hands(num_train + sum(test_counts), camera, seed=seed, source=source)

    def uvd_of(f):
        return camera.points_to_uvd(icvl_joints_from_ours(f["joints21"]))

    def joints_of(f):  # what the reader recovers: uvd -> xyz (float64 round trip of the printed uvd)
        parsed = np.array([float(f"{x:.10g}") for x in uvd_of(f).reshape(-1)]).reshape(16, 3)
        return camera.uvd_to_points(parsed)

    train = frames[:num_train]
    lines, paths = [], []
    for i, f in enumerate(train):
        rel = f"201403121135/image_{i:04d}.png"
        _save_png16(os.path.join(root, "Training", "Depth", rel), f["depth"])
        lines.append(_uvd_line(rel, uvd_of(f)))
        paths.append(rel)
    rot_lines, rot_paths = [], []
    for i, f in enumerate(train[:num_rotated]):
        rel = f"22.5/image_{i:04d}.png"
        _save_png16(os.path.join(root, "Training", "Depth", rel), f["depth"])
        rot_lines.append(_uvd_line(rel, uvd_of(f)))
        rot_paths.append(rel)
    # Interleave the rotated copies after the first original frame, as a real file mixes folders.
    with open(os.path.join(root, "Training", "labels.txt"), "w") as fh:
        fh.writelines(lines[:1] + rot_lines + lines[1:])
    truth["train"] = {"joints": np.stack([joints_of(f) for f in train]),
                      "joints21": np.stack([f["joints21"] for f in train]), "frames": train, "paths": paths}
    truth["train_rotated"] = {"joints": np.stack([joints_of(f) for f in train[:num_rotated]]), "paths": rot_paths,
                              "frames": train[:num_rotated]}
    test_frames, test_paths = [], []
    start = num_train
    for s, n in enumerate(test_counts, start=1):
        seq = frames[start:start + n]
        start += n
        lines = []
        for i, f in enumerate(seq):
            rel = f"test_seq_{s}/image_{i:04d}.png"
            _save_png16(os.path.join(root, "Testing", "Depth", rel), f["depth"])
            lines.append(_uvd_line(rel, uvd_of(f)))
            test_paths.append(rel)
        with open(os.path.join(root, "Testing", f"test_seq_{s}.txt"), "w") as fh:
            fh.writelines(lines)
        test_frames += seq
    truth["test"] = {"joints": np.stack([joints_of(f) for f in test_frames]),
                     "joints21": np.stack([f["joints21"] for f in test_frames]), "frames": test_frames,
                     "paths": test_paths}
    return truth


# ---------------------------------------------------------------------- MSRA
def write_msra_bin(path: str, depth, margin: int = 3):
    """Write one MSRA .bin: header (320, 240, left, top, right, bottom) + float32 crop of the hand box."""
    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    vv, uu = np.nonzero(depth > 0)
    if len(vv) == 0:
        left, top, right, bottom = 0, 0, 1, 1
    else:
        left, top = max(int(uu.min()) - margin, 0), max(int(vv.min()) - margin, 0)
        right, bottom = min(int(uu.max()) + 1 + margin, w), min(int(vv.max()) + 1 + margin, h)
    header = np.array([w, h, left, top, right, bottom], dtype="<i4")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(depth[top:bottom, left:right]).astype("<f4").tobytes())
    return left, top, right, bottom


def write_msra(root: str, subjects=("P0", "P1"), frames_per_gesture: int = 1, seed: int = 0,
               source: str = "auto", gestures=datasets.MSRA_GESTURES) -> dict:
    """Write ``root/P*/<gesture>/joint.txt`` + ``NNNNNN_depth.bin`` (z stored negative in joint.txt).

    Returns:
      subject -> dict ``joints`` [F, 21, 3] mm, our frame (z > 0), ``frame_id`` [F] (gesture * 100000 + i),
      ``frames``.
    """
    camera = Camera.preset("msra")
    truth = {}
    for s_i, subject in enumerate(subjects):
        frames = render_hands(frames_per_gesture * len(gestures), camera, seed=seed * 1000 + s_i, source=source)
        joints, ids = [], []
        for g, gesture in enumerate(gestures):
            gdir = os.path.join(root, subject, gesture)
            os.makedirs(gdir, exist_ok=True)
            chunk = frames[g * frames_per_gesture:(g + 1) * frames_per_gesture]
            lines = [f"{len(chunk)}\n"]
            for i, f in enumerate(chunk):
                jm = msra_joints_from_ours(f["joints21"])
                stored = jm * np.array([1.0, 1.0, -1.0])
                lines.append(" ".join(f"{x:.9g}" for x in stored.reshape(-1)) + "\n")
                parsed = np.array([float(f"{x:.9g}") for x in stored.reshape(-1)]).reshape(21, 3)
                joints.append(parsed * np.array([1.0, 1.0, -1.0]))
                ids.append(g * 100000 + i)
                write_msra_bin(os.path.join(gdir, f"{i:06d}_depth.bin"), f["depth"])
            with open(os.path.join(gdir, "joint.txt"), "w") as fh:
                fh.writelines(lines)
        truth[subject] = {"joints": np.stack(joints), "frame_id": np.array(ids), "frames": frames}
    return truth
