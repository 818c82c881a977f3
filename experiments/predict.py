"""Run an exported SavedModel on one depth image: PLY mesh, joints JSON and an overlay PNG.

  python -m experiments.predict --saved_model=E --depth=img.png --camera=nyu --center=u,v,d [--out_dir=O]
  python -m experiments.predict --saved_model=E --depth=img.png --camera=nyu --crop=u0,v0,u1,v1,dmin,dmax

--depth: a 16-bit greyscale PNG or a 2-D .npy array (integer or float), depth in mm x --depth_scale, 0 = missing.
--camera: a preset name (nyu, icvl, msra) or a JSON file {fx, fy, cx, cy, width, height}; the image must have its
size.
--center=u,v,d: hand centre in pixels (inside the image) and mm; the points inside a --cube_size mm cube around it
are the hand.
--crop=u0,v0,u1,v1,dmin,dmax: the hand is every valid pixel of the box [u0, u1) x [v0, v1) with depth in
[dmin, dmax] mm. The hand points are sampled to the model's 1024 points (random without replacement,
repeated when fewer; --seed), given to the model in camera mm, and the outputs written in camera mm:
O/mesh.ply (vertices + faces), O/joints.json, O/overlay.png (mesh projected over the depth).

Every input is checked before the model is loaded (:func:`select_hand`), and a bad one raises
:class:`PredictInputError` naming the flag or file, what was expected and what was found: a missing or damaged
file, an 8-bit or colour PNG, an array that is not 2-D or not real numbers, NaN / Inf / negative depths, an
all-zero depth map, an image of another size than the camera's, a centre outside the image or behind the camera,
an empty or inverted crop box, no hand pixel in the selected region.

Legend: H, W image size, M hand pixels, V vertices, J joints.
"""
import json
import os

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("saved_model", None, "SavedModel directory written by experiments.export.")
    flags.DEFINE_string("depth", None, "Depth image: 16-bit greyscale PNG or 2-D .npy, mm x --depth_scale.")
    flags.DEFINE_float("depth_scale", 1.0, "Millimetres per depth unit of the image.")
    flags.DEFINE_string("camera", "nyu", "Camera preset (nyu, icvl, msra) or a JSON file of intrinsics.")
    flags.DEFINE_string("center", None, "u,v,d: hand centre (pixels, mm).")
    flags.DEFINE_string("crop", None, "u0,v0,u1,v1,dmin,dmax: hand box (pixels) and depth range (mm).")
    flags.DEFINE_float("cube_size", 300.0, "Cube (mm) around --center holding the hand.")
    flags.DEFINE_string("out_dir", None, "Output directory (default: <depth>_prediction next to the image).")
    flags.DEFINE_integer("seed", 0, "Seed of the point sampling.")
    flags.DEFINE_bool("plot", True, "Write the overlay PNG.")
    flags.mark_flags_as_required(["saved_model", "depth"])


class PredictInputError(ValueError):
    """A user input of the predict program (flag, image, camera file) is not what it should be."""


def parse_floats(text: str, n: int, name: str) -> list:
    """'a,b,c' -> n finite floats, else PredictInputError naming --name."""
    try:
        vals = [float(x) for x in str(text).split(",")]
    except ValueError:
        vals = []
    if len(vals) != n or not all(np.isfinite(vals)):
        raise PredictInputError(f"--{name}: expected {n} comma-separated finite numbers, found {text!r}")
    return vals


def load_depth(path: str, scale: float = 1.0) -> np.ndarray:
    """Read a depth image -> [H, W] float64 mm (0 = missing).

    Raises:
      PredictInputError naming the file (or --depth_scale): see the module docstring.
    """
    from data_prep._raw_io import RawDataError, read_png

    if not (np.isfinite(scale) and scale > 0):
        raise PredictInputError(f"--depth_scale: expected a finite number > 0 (mm per unit), found {scale}")
    if not os.path.isfile(path):
        raise PredictInputError(f"--depth: expected an image file, found nothing at {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError / OSError / EOFError on damaged or object arrays
            raise PredictInputError(f"{path}: expected a .npy array of depths, numpy could not read it: {e}") from e
        if d.dtype.kind not in "iuf":
            raise PredictInputError(f"{path}: expected integer or float depths, found dtype {d.dtype}")
    elif ext == ".png":
        try:
            d = read_png(path, what="a 16-bit greyscale depth PNG in mm (an 8-bit or colour image cannot hold "
                         "depth in mm)", colour_types=(0,), bit_depths=(16,))
        except RawDataError as e:
            raise PredictInputError(str(e)) from e
    else:
        raise PredictInputError(f"--depth: expected a .png or .npy file, found {path}")
    if d.ndim != 2 or d.size == 0:
        raise PredictInputError(f"{path}: expected a single-channel depth image [H, W], found shape {d.shape}")
    d = d.astype(np.float64) * scale
    if not np.all(np.isfinite(d)):
        raise PredictInputError(f"{path}: expected finite depths (0 = missing), found {np.sum(~np.isfinite(d))} "
                                "NaN/Inf values")
    if d.min() < 0:
        raise PredictInputError(f"{path}: expected depths >= 0 mm (0 = missing), found a minimum of {d.min():g}")
    if not np.any(d > 0):
        raise PredictInputError(f"{path}: expected some valid depth (> 0), found an all-zero depth map")
    return d


def load_camera(spec: str):
    """A preset name or a JSON file of intrinsics -> Camera."""
    from hsr_tf.geometry.camera import Camera

    if os.path.exists(spec):
        try:
            with open(spec) as f:
                return Camera.from_dict(json.load(f))
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise PredictInputError(f"--camera={spec}: expected a JSON file {{fx, fy, cx, cy, width, height}}: "
                                    f"{e}") from e
    try:
        return Camera.preset(spec)
    except ValueError as e:
        raise PredictInputError(f"--camera: expected a preset name or an existing JSON file: {e}") from e


def hand_points(depth, camera, center=None, crop=None, cube_size: float = 300.0) -> np.ndarray:
    """Camera-mm points [M, 3] of the hand selected by a (u, v, d) centre or a pixel box + depth range.

    Raises:
      PredictInputError naming --center / --crop / --cube_size: both or neither given, a centre outside the image
      or too close for the cube, an empty or inverted box or depth range.
    """
    if (center is None) == (crop is None):
        raise PredictInputError("give exactly one of --center=u,v,d and --crop=u0,v0,u1,v1,dmin,dmax")
    h, w = depth.shape
    if center is not None:
        u, v, d = (float(x) for x in center)
        if not (0 <= u < w and 0 <= v < h):
            raise PredictInputError(f"--center: expected a pixel inside the {w}x{h} image (0 <= u < {w}, "
                                    f"0 <= v < {h}), found u = {u:g}, v = {v:g}")
        if not (np.isfinite(cube_size) and cube_size > 0):
            raise PredictInputError(f"--cube_size: expected a finite size > 0 mm, found {cube_size}")
        if d - 0.5 * cube_size <= 0:
            raise PredictInputError(f"--center: expected a depth d > {0.5 * cube_size:g} mm (half of --cube_size, so "
                                    f"that the cube stays in front of the camera), found d = {d:g}")
        return camera.crop_hand(depth, np.array([u, v, d]), cube_size, center_is_uvd=True)["points"]
    u0, v0, u1, v1, dmin, dmax = (float(x) for x in crop)
    cu0, cv0, cu1, cv1 = int(max(u0, 0)), int(max(v0, 0)), int(min(u1, w)), int(min(v1, h))
    if cu1 <= cu0 or cv1 <= cv0:
        raise PredictInputError(f"--crop: expected a non-empty box inside the {w}x{h} image, found {list(crop)}")
    if not 0 <= dmin < dmax:
        raise PredictInputError(f"--crop: expected a depth range 0 <= dmin < dmax mm, found dmin = {dmin:g}, "
                                f"dmax = {dmax:g}")
    mask = np.zeros(depth.shape, bool)
    mask[cv0:cv1, cu0:cu1] = True
    mask &= (depth >= dmin) & (depth <= dmax) & (depth > 0)
    return camera.depth_to_points(depth, mask=mask)


def select_hand(depth_path: str, camera_spec: str = "nyu", center=None, crop=None, cube_size: float = 300.0,
                depth_scale: float = 1.0):
    """Every check of the program's inputs, before any model is loaded.

    Args:
      center: (u, v, d) or None. crop: (u0, v0, u1, v1, dmin, dmax) or None (exactly one of the two).
    Returns:
      (depth [H, W] mm, camera, hand points [M, 3] camera mm, M >= 1).
    Raises:
      PredictInputError naming the flag or the file.
    """
    camera = load_camera(camera_spec)
    depth = load_depth(depth_path, depth_scale)
    if depth.shape != (camera.height, camera.width):
        raise PredictInputError(f"{depth_path}: expected a {camera.width}x{camera.height} image for camera "
                                f"{camera_spec!r}, found {depth.shape[1]}x{depth.shape[0]}")
    pts = hand_points(depth, camera, center, crop, cube_size)
    if len(pts) == 0:
        raise PredictInputError(f"{depth_path}: expected hand pixels in the given --center/--crop region, found none")
    return depth, camera, pts


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
    center = parse_floats(FLAGS.center, 3, "center") if FLAGS.center else None
    crop = parse_floats(FLAGS.crop, 6, "crop") if FLAGS.crop else None
    depth, camera, pts = select_hand(FLAGS.depth, FLAGS.camera, center, crop, FLAGS.cube_size, FLAGS.depth_scale)
    from hsr_tf.export import LoadedModel  # TensorFlow only once the inputs are known to be good
    from hsr_tf.geometry import pointcloud

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
    define_flags()
    app.run(main)
