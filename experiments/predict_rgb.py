"""Run an exported RGB SavedModel on one photo: PLY mesh, joints JSON and an overlay PNG on the photo.

  python -m experiments.predict_rgb --saved_model=E --image=hand.jpg [--bbox=x,y,w,h] [--camera=fx,fy,cx,cy]
      [--hand=right|left] [--root_depth=mm] [--bone_scale=mm] [--margin=0.25] --out_dir=O

Crop: a square of side ceil((1 + 2 margin) max(w, h)) px centred on the box --bbox (x, y = its top-left pixel,
w, h its size in px), or, without --bbox, the square of side max(W, H) centred on the whole W x H photo; the
part outside the photo is black. The crop is resized to 256 x 256 (PIL bilinear, antialiased when shrinking)
and its intrinsics follow from the photo's (data_prep/_rgb_common.py, the rule of the converted datasets):
  f_crop = f k,   c_crop = (c - u0 + 0.5) k - 0.5,   k = 256 / side, (u0, v0) the crop's top-left pixel.
--hand=left marks a left hand: the SavedModel mirrors it into its right-hand model and its outputs back.

What is assumed when not given (printed, and listed under "assumed" in joints.json):
  --camera      fx = fy = max(W, H) px (a field of view of about 53 degrees across the longer side), principal
                point at the photo's centre ((W - 1) / 2, (H - 1) / 2);
  --root_depth  500 mm (the wrist's distance from the camera);
  --bone_scale  the middle finger's MCP -> PIP length of the packaged hand model's mean shape (~48 mm).
The network predicts image coordinates and scale-invariant relative depth, so the joints' pixel positions do
not depend on these values; the millimetre outputs scale with them (section 5.1 of Ge et al. gives both).

Outputs in --out_dir: mesh.ply (camera mm; left hands use the mirrored winding so normals point outwards),
joints.json (per joint: camera mm and photo px; the crop box, both cameras, the assumptions), overlay.png
(the photo with the projected mesh edges, the skeleton and the crop square).

Legend: W x H photo size (px), V vertices, J joints, S = 256 the SavedModel's crop size.
"""
import json
import os

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags, defined when it runs: importing this module (tests, other programs whose flags share
    names such as --out_dir) defines none."""
    flags.DEFINE_string("saved_model", None, "RGB SavedModel directory written by experiments.export.")
    flags.DEFINE_string("image", None, "Photo (JPG/PNG, any size; converted to RGB).")
    flags.DEFINE_string("bbox", None, "x,y,w,h: box around the hand, px (default: the whole photo).")
    flags.DEFINE_float("margin", 0.25, "Added on each side of --bbox, fraction of its longer side (the training "
                       "crops' margin).")
    flags.DEFINE_string("camera", None, "fx,fy,cx,cy of the photo, px (default: see the module docstring).")
    flags.DEFINE_enum("hand", "right", ["right", "left"], "Which hand the photo shows.")
    flags.DEFINE_float("root_depth", None, "Wrist depth, mm (default 500).")
    flags.DEFINE_float("bone_scale", None, "Middle finger MCP -> PIP length, mm (default: the hand model's mean).")
    flags.DEFINE_string("out_dir", None, "Output directory (default: <image>_prediction next to the photo).")


DEFAULT_ROOT_DEPTH_MM = 500.0
FINGER_COLOURS = ((255, 60, 60), (255, 220, 0), (60, 220, 60), (0, 220, 220), (230, 60, 230))


def parse_floats(text: str, n: int, name: str) -> list:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n or not np.all(np.isfinite(vals)):
        raise app.UsageError(f"--{name}: expected {n} comma-separated finite numbers, found {text!r}")
    return vals


def load_photo(path: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file (grey, palette, alpha and 16-bit images are converted)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image: expected an image file, found nothing at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                raise ValueError(f"{path}: expected a colour photo (8-bit RGB), found a {im.mode} image "
                                 "(a depth map? use experiments.predict)")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: expected a readable JPG/PNG image, found an unreadable file ({e})") from e


def crop_box(width: int, height: int, bbox=None, margin: float = 0.25) -> tuple:
    """(u0, v0, side) ints: the square crop of the module docstring."""
    if bbox is None:
        side = max(width, height)
        cu, cv = 0.5 * (width - 1), 0.5 * (height - 1)
    else:
        x, y, w, h = bbox
        if w < 1 or h < 1:
            raise app.UsageError(f"--bbox: expected width and height >= 1 px, found {w} x {h}")
        if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
            raise ValueError(f"--bbox: expected a box overlapping the {width}x{height} photo, found {bbox}")
        if margin < 0:
            raise app.UsageError(f"--margin: expected >= 0, found {margin}")
        side = int(np.ceil((1.0 + 2.0 * margin) * max(w, h)))
        cu, cv = x + 0.5 * (w - 1), y + 0.5 * (h - 1)
    return int(np.round(cu - 0.5 * (side - 1))), int(np.round(cv - 0.5 * (side - 1))), int(side)


def default_bone_scale() -> float:
    """|joint 9 - joint 10| (mm) of the packaged hand model's mean shape."""
    from hsr_tf.hand_model import HandModel

    model = HandModel.load()
    joints = model.joint_regressor @ model.mean_shape
    return float(np.linalg.norm(joints[9] - joints[10]))


def project(points, camera) -> np.ndarray:
    """Camera mm [N, 3] -> px [N, 2] (u = cx + fx x / z, v = cy - fy y / z: y up in the camera frame)."""
    fx, fy, cx, cy = camera
    p = np.asarray(points, np.float64)
    return np.stack([cx + fx * p[:, 0] / p[:, 2], cy - fy * p[:, 1] / p[:, 2]], -1)


def write_ply(path: str, vertices, faces) -> None:
    """ASCII PLY with float vertices (mm) and triangle faces."""
    with open(path, "w") as f:
        f.write("ply\nformat ascii 1.0\ncomment hsr_tf RGB prediction, camera-frame mm\n")
        f.write(f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n")
        f.write(f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
        f.writelines(f"{v[0]:.4f} {v[1]:.4f} {v[2]:.4f}\n" for v in np.asarray(vertices, np.float64))
        f.writelines(f"3 {t[0]} {t[1]} {t[2]}\n" for t in np.asarray(faces, np.int64))


def draw_overlay(photo, vertices_px, faces, joints_px, box) -> "Image.Image":
    """The photo with the mesh edges (grey), the skeleton (thumb red ... pinky magenta, wrist white) and the
    crop square (white), all in photo px."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(photo).convert("RGB")
    mesh = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(mesh)
    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    for a, b in edges:
        d.line([tuple(vertices_px[a]), tuple(vertices_px[b])], fill=(200, 200, 255, 110), width=1)
    img = Image.alpha_composite(img.convert("RGBA"), mesh).convert("RGB")
    d = ImageDraw.Draw(img)
    width = max(2, int(round(box[2] / 128)))
    for f in range(5):
        chain = [0] + list(range(1 + 4 * f, 5 + 4 * f))
        for a, b in zip(chain[:-1], chain[1:]):
            d.line([tuple(joints_px[a]), tuple(joints_px[b])], fill=FINGER_COLOURS[f], width=width)
    x, y = joints_px[0]
    d.ellipse([x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width], fill=(255, 255, 255))
    u0, v0, side = box
    d.rectangle([u0 - 0.5, v0 - 0.5, u0 + side - 0.5, v0 + side - 0.5], outline=(255, 255, 255), width=1)
    return img


def predict(saved_model: str, photo: np.ndarray, camera=None, bbox=None, margin=0.25, hand="right",
            root_depth=None, bone_scale=None) -> dict:
    """Crop, run, map back (module docstring). Returns a dict of arrays and the JSON document."""
    from data_prep._rgb_common import crop_intrinsics, crop_window, resize_image
    from hsr_tf.export import LoadedRGBModel

    h, w = photo.shape[:2]
    assumed = []
    if camera is None:
        camera = [float(max(w, h)), float(max(w, h)), 0.5 * (w - 1), 0.5 * (h - 1)]
        assumed.append(f"camera fx = fy = {camera[0]:.1f} px (max(W, H)), cx, cy = {camera[2]:.1f}, {camera[3]:.1f} "
                       "(the photo's centre)")
    if camera[0] <= 0 or camera[1] <= 0:
        raise app.UsageError(f"--camera: expected fx, fy > 0, found {camera[:2]}")
    if root_depth is None:
        root_depth = DEFAULT_ROOT_DEPTH_MM
        assumed.append(f"root_depth = {root_depth:.0f} mm (wrist distance)")
    if bone_scale is None:
        bone_scale = default_bone_scale()
        assumed.append(f"bone_scale = {bone_scale:.1f} mm (middle MCP -> PIP of the hand model's mean shape)")
    for name, val in (("root_depth", root_depth), ("bone_scale", bone_scale)):
        if not (np.isfinite(val) and val > 0):
            raise app.UsageError(f"--{name}: expected a positive number of mm, found {val}")
    model = LoadedRGBModel(saved_model)
    s = model.input_size
    u0, v0, side = crop_box(w, h, bbox, margin)
    crop = resize_image(crop_window(photo, u0, v0, side), s)
    crop_cam = crop_intrinsics(camera, u0, v0, side, s).astype(np.float32)
    left = hand == "left"
    out = model(crop[None], crop_cam[None], [root_depth], [bone_scale], [left])
    verts, joints = out["vertices"][0], out["joints"][0]
    k = s / float(side)
    joints_px = (out["joints_uv"][0] + 0.5) / k - 0.5 + [u0, v0]  # crop px -> photo px
    names = model.metadata.get("model_joint_names") or [f"joint_{j}" for j in range(len(joints))]
    doc = {"units": "joints camera_mm: camera-frame mm (x right, y up, z away); image_px: photo pixels (u right, "
                    "v down, pixel centres integer)",
           "hand": hand, "image_size": [int(w), int(h)], "camera": [float(c) for c in camera],
           "crop": {"u0": u0, "v0": v0, "side": side, "resized_to": s, "camera": [float(c) for c in crop_cam]},
           "root_depth_mm": float(root_depth), "bone_scale_mm": float(bone_scale), "assumed": assumed,
           "joints": [{"name": str(n), "camera_mm": [float(c) for c in p], "image_px": [float(c) for c in q]}
                      for n, p, q in zip(names, joints, joints_px)]}
    return {"vertices": verts, "joints": joints, "joints_px": joints_px, "faces": model.faces_left if left
            else model.faces, "box": (u0, v0, side), "camera": np.asarray(camera), "doc": doc}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for name in ("saved_model", "image"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    photo = load_photo(FLAGS.image)
    res = predict(FLAGS.saved_model, photo,
                  camera=parse_floats(FLAGS.camera, 4, "camera") if FLAGS.camera else None,
                  bbox=parse_floats(FLAGS.bbox, 4, "bbox") if FLAGS.bbox else None, margin=FLAGS.margin,
                  hand=FLAGS.hand, root_depth=FLAGS.root_depth, bone_scale=FLAGS.bone_scale)
    out_dir = FLAGS.out_dir or os.path.splitext(FLAGS.image)[0] + "_prediction"
    os.makedirs(out_dir, exist_ok=True)
    write_ply(os.path.join(out_dir, "mesh.ply"), res["vertices"], res["faces"])
    with open(os.path.join(out_dir, "joints.json"), "w") as f:
        json.dump(res["doc"], f, indent=1)
    draw_overlay(photo, project(res["vertices"], res["camera"]), res["faces"], res["joints_px"],
                 res["box"]).save(os.path.join(out_dir, "overlay.png"))
    for line in res["doc"]["assumed"]:
        logging.warning("Assumed (not given): %s", line)
        print(f"assumed: {line}")
    print(f"wrote {out_dir}/mesh.ply, joints.json, overlay.png; crop {res['box']} (u0, v0, side px); wrist at "
          f"{np.round(res['joints'][0], 1).tolist()} mm")


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("saved_model")
    flags.mark_flag_as_required("image")
    app.run(main)
