"""Writers of small STB and RHD trees in their exact raw formats, from rendered procedural hands, for tests.

Every frame is one of GEN's procedural right hands (``data_prep.synth.hands``) posed with a gesture of
``data_prep.synth.poses``, placed by DATA's ``render.sample_view`` and ray-cast with open3d (one ray per pixel
centre). The colour image is flat-shaded with one colour per finger (the part of the nearest joint:
``FINGER_COLOURS``) times a Lambert term, over a grey background plane at ``BACKGROUND_Z_MM``; so a test
can check that the thumb is where the projected thumb joints say.

Left hands are the mirror image (x -> -x in the camera frame) of a placed right hand: a reader that mirrors
them back must return exactly the right hand's joints. Every writer returns that expected output ("truth",
in OUR convention: our joint order, mm, camera frame x right, y up, z away, right hand) together with the
mesh in that convention, so that tests can ray-cast it through the crop camera a reader stores.

* STB: ``write_stb(root)``: sequences B1Counting (under ``images/``) and B2Random (directly under the root),
  640x480 ``SK_color_<i>.png`` / ``SK_depth_<i>.png`` (depth mm = R + 256 G, rendered in the DEPTH camera
  through STB's extrinsic), ``labels/<seq>_SK.mat`` with ``handPara`` [3, 21, N] in the depth camera's
  OpenCV frame, STB's joint order and the palm-centre root (palm = (wrist + ring MCP) / 2, so that STB's
  wrist rule recovers our wrist). Every STB frame is a left hand.
* RHD: ``write_rhd(root)``: ``training``/``evaluation`` with 320x320 colour, depth (metres =
  (R*256 + G)/65535*5) and mask PNGs (left hand 2-17, right 18-33 by nearest joint) and the annotation
  pickle (metres, OpenCV frame, tip -> MCP order, visibility = the joint's pixel shows that hand within
  15 mm of the joint's depth). Each sample has a main hand and a smaller, farther second hand; sample 1 of
  ``training`` has the LEFT hand as its main hand.

Legend: H, W image size, V vertices, T triangles, J joints (21).
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from hsr_tf.geometry.camera import Camera

FINGER_COLOURS = np.array([[200, 170, 150],    # palm / wrist
                           [230, 30, 30],      # thumb
                           [30, 200, 30],      # index
                           [40, 60, 230],      # middle
                           [220, 220, 30],     # ring
                           [210, 40, 210]], dtype=np.float64)  # little
BACKGROUND_Z_MM = 1100.0
RHD_CAMERA = Camera(283.0, 283.0, 160.0, 160.0, 320, 320)
# The raw formats, written out here independently of the readers (raw index -> our joint index):
#: STB: 0 palm centre, 1-4 little MCP -> tip, 5-8 ring, 9-12 middle, 13-16 index, 17-20 thumb MCP -> tip
STB_RAW_TO_OURS = (None, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4)
#: RHD (within a hand): 0 wrist, then thumb, index, middle, ring, little, each tip -> MCP
RHD_RAW_TO_OURS = (0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17)
STB_COLOUR = Camera(607.92271, 607.88192, 314.78337, 236.42484, 640, 480)
STB_DEPTH = Camera(475.62768, 474.77709, 336.41179, 238.77962, 640, 480)
STB_ROTVEC = (0.00531, -0.01196, 0.00301)
STB_T = np.array([-24.0381, -0.4563, -1.2326])      # X_depth = R(r) X_colour + T, OpenCV frames, mm
_MIRROR = np.array([-1.0, 1.0, 1.0])
_FLIP_Y = np.array([1.0, -1.0, 1.0])


def finger_of_joint(j):
    """0 palm (wrist), 1..5 thumb..little for our joint indices."""
    j = np.asarray(j)
    return np.where(j == 0, 0, (j - 1) // 4 + 1)


def procedural_hands(count, seed):
    """list of (vertices [V, 3], faces [T, 3], joints [21, 3]) right hands in the hand frame (mm)."""
    from data_prep.synth import hands, poses

    subjects = hands.make_subjects(num_subjects=2, seed=seed)
    library = poses.pose_library(num_poses=min(max(count, 1), 12), seed=seed)  # named gestures, no randomness
    faces = np.asarray(hands.FACES)
    out = []
    for i in range(count):
        s = subjects[i % 2]
        theta = s.theta_for(library.angles[i % len(library.names)][None])[0]
        verts, joints = s.pose(theta)
        out.append((np.asarray(verts, np.float64), faces, np.asarray(joints, np.float64)))
    return out


def place(hand, camera: Camera, rng, distance=(380.0, 520.0), margin_px=20.0):
    """Place a hand (hand frame) in ``camera`` (palm or back towards it, fully in view). -> (verts, joints) mm."""
    from data_prep.synth import render

    verts, _, joints = hand
    view = render.ViewConfig(distance_mm=distance, cone_deg=35.0, back_prob=0.3, inplane_deg=50.0, center_region=0.2)
    centroid = verts.mean(axis=0)
    for _ in range(50):
        rot, target = render.sample_view(rng, camera, view)
        v = (verts - centroid) @ rot.T + target
        if render.in_view(v, camera, margin_px):
            return v, (joints - centroid) @ rot.T + target
    raise RuntimeError("fixture: no in-view placement found")


def background_quad(z, half=3000.0):
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def raycast(meshes, camera: Camera):
    """Cast one ray per pixel centre through a scene of meshes [(vertices, faces), ...] (camera mm).

    Returns:
      dict ``depth`` [H, W] float64 mm (0 = miss), ``mesh`` [H, W] int (index into meshes, -1 = miss),
      ``points`` [H, W, 3] hit points, ``cos`` [H, W] |cos| of the incidence angle.
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    ids = []
    for verts, faces in meshes:
        ids.append(scene.add_triangles(o3d.core.Tensor(np.asarray(verts, np.float32)),
                                       o3d.core.Tensor(np.asarray(faces, np.uint32))))
    vv, uu = np.mgrid[0:camera.height, 0:camera.width]
    dirs = camera.ray_directions(uu, vv)
    rays = np.concatenate([np.zeros_like(dirs), dirs], axis=-1).reshape(-1, 6).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy().reshape(vv.shape).astype(np.float64)
    gid = hit["geometry_ids"].numpy().reshape(vv.shape).astype(np.int64)
    normals = hit["primitive_normals"].numpy().reshape(vv.shape + (3,))
    ok = np.isfinite(t)
    mesh = np.full(vv.shape, -1)
    for k, i in enumerate(ids):
        mesh[ok & (gid == i)] = k
    cos = np.abs((normals * dirs).sum(-1)) / np.linalg.norm(dirs, axis=-1)
    return {"depth": np.where(ok, t, 0.0), "mesh": mesh, "points": dirs * np.where(ok, t, 0.0)[..., None],
            "cos": np.where(ok, cos, 0.0)}


def nearest_joint(points, joints):
    """[..., 3] points -> [...] index of the nearest of 21 joints."""
    d = np.linalg.norm(points[..., None, :] - np.asarray(joints), axis=-1)
    return d.argmin(axis=-1)


def shade(cast, hand_joints):
    """[H, W, 3] uint8: finger colour x (0.35 + 0.65 cos) on the hands, grey background, black misses.

    Args:
      hand_joints: list (one per mesh index; None for the background) of [21, 3] joints.
    """
    img = np.zeros(cast["depth"].shape + (3,))
    for k, joints in enumerate(hand_joints):
        sel = cast["mesh"] == k
        if joints is None:
            img[sel] = 110.0
            continue
        part = finger_of_joint(nearest_joint(cast["points"][sel], joints))
        img[sel] = FINGER_COLOURS[part] * (0.35 + 0.65 * cast["cos"][sel])[:, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mirror_mesh(verts, faces):
    return verts * _MIRROR, faces[:, ::-1]


# ---------------------------------------------------------------------- STB
def write_stb(root: str, frames_per_sequence: int = 2, seed: int = 0, unique: int | None = None) -> dict:
    """Write B1Counting (images/B1Counting) and B2Random (B2Random/) with their labels; see module doc.

    ``unique``: render only this many distinct frames per sequence and repeat them (PNG copies and label
    columns) up to ``frames_per_sequence`` (for benchmarks; the truth covers every frame).

    Returns:
      sequence -> dict ``joints`` [N, 21, 3] (the reader's expected output: mirrored into the right hand,
      colour camera, our frame, wrist root), ``palm`` [N, 3] (mirrored palm centre), ``vertices`` [N, V, 3]
      (mirrored mesh), ``faces``.
    """
    import scipy.io
    from PIL import Image
    from scipy.spatial.transform import Rotation

    colour_cam, depth_cam = STB_COLOUR, STB_DEPTH
    r, t = Rotation.from_rotvec(STB_ROTVEC).as_matrix(), STB_T
    rot_d, trans_d = np.diag(_FLIP_Y) @ r @ np.diag(_FLIP_Y), _FLIP_Y * t  # X_depth = rot_d X_colour + trans_d (ours)
    rng = np.random.default_rng(seed)
    import shutil

    distinct = frames_per_sequence if unique is None else max(1, min(int(unique), frames_per_sequence))
    hands = procedural_hands(2 * distinct, seed)
    truth = {}
    for s_i, (seq, subdir) in enumerate((("B1Counting", "images/B1Counting"), ("B2Random", "B2Random"))):
        d = os.path.join(root, subdir)
        os.makedirs(d, exist_ok=True)
        para, rec = [], {"joints": [], "palm": [], "vertices": []}
        for i in range(frames_per_sequence):
            if i >= distinct:                                     # a repeat of frame i % distinct
                for kind in ("color", "depth"):
                    shutil.copyfile(os.path.join(d, f"SK_{kind}_{i % distinct}.png"), os.path.join(d, f"SK_{kind}_{i}.png"))
                para.append(para[i % distinct])
                for k in rec:
                    rec[k].append(rec[k][i % distinct])
                continue
            hand = hands[s_i * distinct + i]
            v_r, j_r = place(hand, colour_cam, rng)
            v_l, faces_l = _mirror_mesh(v_r, hand[1])
            j_l = j_r * _MIRROR
            bg = background_quad(BACKGROUND_Z_MM)
            cast = raycast([(v_l, faces_l), bg], colour_cam)
            Image.fromarray(shade(cast, [j_l, None])).save(os.path.join(d, f"SK_color_{i}.png"))
            dcast = raycast([(v_l @ rot_d.T + trans_d, faces_l), (bg[0] @ rot_d.T + trans_d, bg[1])], depth_cam)
            dm = np.rint(dcast["depth"]).astype(np.uint16)
            png = np.stack([(dm & 0xFF), (dm >> 8), np.zeros_like(dm)], axis=-1).astype(np.uint8)
            Image.fromarray(png, mode="RGB").save(os.path.join(d, f"SK_depth_{i}.png"))
            raw = np.zeros((21, 3))
            for i_raw, ours in enumerate(STB_RAW_TO_OURS[1:], start=1):
                raw[i_raw] = j_l[ours]
            raw[0] = 0.5 * (j_l[0] + j_l[13])                     # palm centre: the wrist rule inverted
            raw_cv_colour = raw * _FLIP_Y
            para.append((raw_cv_colour @ r.T + t).T)              # [3, 21] depth-camera OpenCV mm
            rec["joints"].append(j_r)
            rec["palm"].append(raw[0] * _MIRROR)
            rec["vertices"].append(v_r)
        os.makedirs(os.path.join(root, "labels"), exist_ok=True)
        scipy.io.savemat(os.path.join(root, "labels", f"{seq}_SK.mat"), {"handPara": np.stack(para, axis=-1)})
        truth[seq] = {k: np.stack(v) for k, v in rec.items()}
        truth[seq]["faces"] = hands[0][1]
    return truth


# ---------------------------------------------------------------------- RHD
def _rhd_sample(rng, main, other, left_main: bool):
    """Render one RHD sample: the main hand at 380-520 mm, the other hand farther and off-centre."""
    cam = RHD_CAMERA
    v_main, j_main = place(main, cam, rng)
    v_other, j_other = place(other, cam, rng, distance=(800.0, 950.0), margin_px=2.0)
    v_other, j_other = v_other + np.array([90.0, 60.0, 0.0]), j_other + np.array([90.0, 60.0, 0.0])
    hands = {}  # 'left'/'right' -> (verts, faces, joints) physical
    mv, mf = (_mirror_mesh(v_main, main[1]) if left_main else (v_main, main[1]))
    hands["left" if left_main else "right"] = (mv, mf, j_main * _MIRROR if left_main else j_main)
    ov, of = (_mirror_mesh(v_other, other[1]) if not left_main else (v_other, other[1]))
    hands["right" if left_main else "left"] = (ov, of, j_other * _MIRROR if not left_main else j_other)
    order = ("left", "right")
    cast = raycast([hands[h][:2] for h in order] + [background_quad(BACKGROUND_Z_MM * 1.5)], cam)
    image = shade(cast, [hands["left"][2], hands["right"][2], None])
    mask = np.zeros(cast["depth"].shape, dtype=np.uint8)
    for k, h in enumerate(order):
        sel = cast["mesh"] == k
        mask[sel] = (2 if h == "left" else 18) + np.minimum(nearest_joint(cast["points"][sel], hands[h][2]), 15)
    xyz, uv_vis = np.zeros((42, 3)), np.zeros((42, 3))
    raw_to_ours = np.array(RHD_RAW_TO_OURS)
    ours_to_raw = np.argsort(raw_to_ours)          # ours_to_raw[our joint] = raw index
    for k, h in enumerate(order):
        j = hands[h][2]
        uvd = cam.points_to_uvd(j)
        col = np.clip(np.rint(uvd[:, 0]).astype(int), 0, 319)
        row = np.clip(np.rint(uvd[:, 1]).astype(int), 0, 319)
        vis = (cast["mesh"][row, col] == k) & (np.abs(cast["depth"][row, col] - j[:, 2]) < 15.0)
        xyz[21 * k:21 * k + 21] = (j * _FLIP_Y / 1000.0)[raw_to_ours]      # metres, OpenCV frame, RHD order
        uv_vis[21 * k:21 * k + 21] = np.stack([uvd[:, 0], uvd[:, 1], vis.astype(float)], axis=-1)[raw_to_ours]
    k_mat = np.array([[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]])
    main_key = "left" if left_main else "right"
    n_main = int(((mask >= 2) & (mask <= 17)).sum() if left_main else (mask >= 18).sum())
    n_other = int(((mask >= 18).sum()) if left_main else ((mask >= 2) & (mask <= 17)).sum())
    assert n_main > n_other, "fixture: the main hand must have more mask pixels"
    j_main_phys = hands[main_key][2]
    main_rows = (0 if left_main else 21) + ours_to_raw
    truth = {"joints": j_main_phys * _MIRROR if left_main else j_main_phys,
             "vertices": v_main, "faces": main[1], "left": left_main,
             "visible": uv_vis[main_rows, 2].astype(np.uint8), "uv": uv_vis[main_rows, :2]}
    return image, cast["depth"], mask, {"xyz": xyz, "uv_vis": uv_vis, "K": k_mat}, truth


def write_rhd(root: str, counts=None, seed: int = 0) -> dict:
    """Write ``training`` and ``evaluation``; see module doc. Returns raw split -> list of per-sample truths
    (``joints`` [21, 3] expected reader output, ``vertices`` right-hand mesh, ``left``, ``visible`` [21],
    ``uv`` [21, 2] the original image's 2D joints, our order)."""
    from PIL import Image

    counts = counts or {"training": 3, "evaluation": 2}
    rng = np.random.default_rng(seed + 7)
    hands = procedural_hands(2 * sum(counts.values()), seed + 1)
    truth, h = {}, 0
    for split, count in counts.items():
        d = os.path.join(root, split)
        for sub in ("color", "depth", "mask"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        anno, truths = {}, []
        for sid in range(count):
            left = split == "training" and sid == 1
            image, depth_mm, mask, ann, tr = _rhd_sample(rng, hands[h], hands[h + 1], left)
            h += 2
            code = np.clip(np.rint(depth_mm / 5000.0 * 65535.0), 0, 65535).astype(np.uint16)
            png = np.stack([(code >> 8), (code & 0xFF), np.zeros_like(code)], axis=-1).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(d, "color", f"{sid:05d}.png"))
            Image.fromarray(png, mode="RGB").save(os.path.join(d, "depth", f"{sid:05d}.png"))
            Image.fromarray(mask, mode="L").save(os.path.join(d, "mask", f"{sid:05d}.png"))
            anno[sid] = ann
            truths.append(tr)
        with open(os.path.join(d, f"anno_{split}.pickle"), "wb") as f:
            pickle.dump(anno, f)
        truth[split] = truths
    return truth


# ---------------------------------------------------------------------- helpers for the reader tests
def crop_camera(camera4, size: int) -> Camera:
    """Camera of a stored crop: (fx, fy, cx, cy) [4] and its size."""
    fx, fy, cx, cy = (float(x) for x in camera4)
    return Camera(fx, fy, cx, cy, size, size)


def raycast_crop(vertices, faces, camera4, size: int, background_z=None):
    """Ray-cast a mesh (reader convention) through a stored crop's camera -> raycast() dict."""
    meshes = [(vertices, faces)]
    if background_z is not None:
        meshes.append(background_quad(background_z))
    return raycast(meshes, crop_camera(camera4, size))


def classify_colour(rgb):
    """[..., 3] pixel colours -> [...] index into FINGER_COLOURS by direction (cosine), brightness ignored."""
    c = np.asarray(rgb, dtype=np.float64)
    ref = FINGER_COLOURS / np.linalg.norm(FINGER_COLOURS, axis=-1, keepdims=True)
    c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-9)
    return np.argmax(c @ ref.T, axis=-1)


def uv_in_original(joints_uv, crop_box, mirrored, size: int):
    """Map a stored crop's 2D joints [J, 2] back into the original image (undo mirroring, then the crop)."""
    uv = np.asarray(joints_uv, dtype=np.float64).copy()
    if mirrored:
        uv[:, 0] = size - 1 - uv[:, 0]
    u0, v0, side = (float(x) for x in crop_box)
    k = size / side
    return np.stack([(uv[:, 0] + 0.5) / k - 0.5 + u0, (uv[:, 1] + 0.5) / k - 0.5 + v0], axis=-1)
