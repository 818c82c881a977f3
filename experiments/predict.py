"""Run an exported SavedModel on one depth image: PLY mesh, joints JSON and an overlay PNG.

  python -m experiments.predict --saved_model=E --depth=img.png --camera=nyu --center=u,v,d [--out_dir=O]
  python -m experiments.predict --saved_model=E --depth=img.png --camera=nyu --crop=u0,v0,u1,v1,dmin,dmax

--depth: a 16-bit PNG (or .npy) depth map in mm (x --depth_scale), 0 = missing.
--camera: a preset name (nyu, icvl, msra) or a JSON file {fx, fy, cx, cy, width, height}.
--center=u,v,d: hand centre in pixels and mm; the points inside a --cube_size mm cube around it are the hand.
--crop=u0,v0,u1,v1,dmin,dmax: the hand is every valid pixel of the box [u0, u1) x [v0, v1) with depth in
[dmin, dmax] mm. The hand points are sampled to the model's 1024 points (random without replacement,
repeated when fewer; --seed), given to the model in camera mm, and the outputs written in camera mm:
O/mesh.ply (vertices + faces), O/joints.json, O/overlay.png (mesh projected over the depth).
"""
import json
import os

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory written by experiments.export.")
flags.DEFINE_string("depth", None, "Depth image: 16-bit PNG or .npy, mm x --depth_scale.")
flags.DEFINE_float("depth_scale", 1.0, "Millimetres per depth unit of the image.")
flags.DEFINE_string("camera", "nyu", "Camera preset (nyu, icvl, msra) or a JSON file of intrinsics.")
flags.DEFINE_string("center", None, "u,v,d: hand centre (pixels, mm).")
flags.DEFINE_string("crop", None, "u0,v0,u1,v1,dmin,dmax: hand box (pixels) and depth range (mm).")
flags.DEFINE_float("cube_size", 300.0, "Cube (mm) around --center holding the hand.")
flags.DEFINE_string("out_dir", None, "Output directory (default: <depth>_prediction next to the image).")
flags.DEFINE_integer("seed", 0, "Seed of the point sampling.")
flags.mark_flag_as_required("saved_model")
flags.DEFINE_bool("plot", True, "Write the overlay PNG.")
flags.mark_flag_as_required("depth")


def _floats(text, n, name):
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise app.UsageError(f"--{name}: expected {n} comma-separated numbers, found {text!r}")
    return vals


def load_depth(path: str, scale: float) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--depth: expected an image file, found nothing at {path}")
    if path.endswith(".npy"):
        d = np.load(path)
    else:
        from PIL import Image
        d = np.asarray(Image.open(path))
    if d.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth image [H, W], found shape {d.shape}")
    return d.astype(np.float64) * scale


def load_camera(spec: str):
    from hsr_tf.geometry.camera import Camera
    if os.path.exists(spec):
        with open(spec) as f:
            return Camera.from_dict(json.load(f))
    return Camera.preset(spec)


def hand_points(depth, camera, center=None, crop=None, cube_size=300.0):
    """Camera-mm points [M, 3] of the hand selected by a (u, v, d) centre or a pixel box + depth range."""
    if (center is None) == (crop is None):
        raise app.UsageError("give exactly one of --center=u,v,d and --crop=u0,v0,u1,v1,dmin,dmax")
    if center is not None:
        return camera.crop_hand(depth, np.asarray(center, np.float64), cube_size, center_is_uvd=True)["points"]
    u0, v0, u1, v1, dmin, dmax = crop
    h, w = depth.shape
    u0, v0, u1, v1 = int(max(u0, 0)), int(max(v0, 0)), int(min(u1, w)), int(min(v1, h))
    if u1 <= u0 or v1 <= v0:
        raise ValueError(f"--crop: expected a non-empty box inside the {w}x{h} image, found {crop}")
    mask = np.zeros(depth.shape, bool)
    mask[v0:v1, u0:u1] = True
    mask &= (depth >= dmin) & (depth <= dmax) & (depth > 0)
    return camera.depth_to_points(depth, mask=mask)


def write_ply(path: str, vertices, faces) -> None:
    """ASCII PLY with float vertices (mm) and triangle faces."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    with open(path, "w") as f:
        f.write("ply\nformat ascii 1.0\ncomment hsr_tf prediction, camera-frame mm\n")
        f.write(f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n")
        f.write(f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
        for v in vertices:
            f.write(f"{v[0]:.4f} {v[1]:.4f} {v[2]:.4f}\n")
        for t in faces:
            f.write(f"3 {t[0]} {t[1]} {t[2]}\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hsr_tf.export import LoadedModel
    from hsr_tf.geometry import pointcloud

    camera = load_camera(FLAGS.camera)
    depth = load_depth(FLAGS.depth, FLAGS.depth_scale)
    if depth.shape != (camera.height, camera.width):
        raise ValueError(f"{FLAGS.depth}: expected a {camera.width}x{camera.height} image for camera "
                         f"{FLAGS.camera!r}, found {depth.shape[1]}x{depth.shape[0]}")
    center = _floats(FLAGS.center, 3, "center") if FLAGS.center else None
    crop = _floats(FLAGS.crop, 6, "crop") if FLAGS.crop else None
    pts = hand_points(depth, camera, center, crop, FLAGS.cube_size)
    if len(pts) == 0:
        raise ValueError(f"{FLAGS.depth}: expected hand pixels in the given --center/--crop region, found none")
    model = LoadedModel(FLAGS.saved_model)
    sampled, _ = pointcloud.sample_points(pts, model.num_points, np.random.default_rng(FLAGS.seed))
    out = model(sampled.astype(np.float32)[None])
    out_dir = FLAGS.out_dir or os.path.splitext(FLAGS.depth)[0] + "_prediction"
    os.makedirs(out_dir, exist_ok=True)
    verts, joints = out["vertices"][0], out["joints"][0]
    write_ply(os.path.join(out_dir, "mesh.ply"), verts, model.faces)
    names = model.metadata.get("model_joint_names") or [f"joint_{j}" for j in range(len(joints))]
    doc = {"units": "camera-frame mm (x right, y up, z away)",
           "joints": {n: [float(c) for c in p] for n, p in zip(names, joints)},
           "dataset_joints": out["dataset_joints"][0].tolist(),
           "dataset_joint_names": model.metadata.get("joint_names"),
           "num_hand_pixels": int(len(pts)), "center_mm": out["center"][0].tolist()}
    with open(os.path.join(out_dir, "joints.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if FLAGS.plot:
        from PIL import Image
        from hsr_tf.train import summaries
        uvd = camera.points_to_uvd(verts)
        juv = camera.points_to_uvd(joints)[:, :2]
        roi = camera.points_to_uvd(pts)[:, :2]  # the selected hand pixels stay in view
        img = summaries.draw_mesh_on_depth(depth, uvd[:, :2], uvd[:, 2], model.faces, juv,
                                           title=os.path.basename(FLAGS.depth), roi_uv=roi)
        Image.fromarray(img).save(os.path.join(out_dir, "overlay.png"))
    logging.info("%d hand pixels -> %s", len(pts), out_dir)
    print(json.dumps({"out_dir": os.path.abspath(out_dir), "num_hand_pixels": int(len(pts)),
                      "files": sorted(os.listdir(out_dir))}))


if __name__ == "__main__":
    app.run(main)
