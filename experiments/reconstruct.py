"""The main job: reconstruct held-out synthetic hands with the shipped (or any trained) depth model.

  python -m experiments.reconstruct --workdir=runs/main [--model=pretrained:depth|WORKDIR]
      [--frames_per_subject=24] [--views=default,frontal] [--sheet_frames=12]

1. Renders held-out frames (``experiments.heldout``): the test-split subjects of the set the model was trained
   on (for the shipped model: 4 subjects of data_prep.synth seed 0, 40 subjects), ``--frames_per_subject`` frames
   each, Kinect-like noise, for each viewpoint set of ``--views``: 'default' = the training set's own viewpoints
   (these frames are bit-identical to frames of its test shards) and 'frontal' = palm towards the camera.
2. Reconstructs them with the model and evaluates (section IV-A): joint, model-joint, shape, aligned-shape,
   rest-shape and point-cloud errors, the fraction of frames under each max-joint-error threshold.
3. Writes, per viewpoint set V, into WORKDIR/V/: ``frames/`` (the rendered shards), ``eval/`` (metrics.json,
   per_joint.csv, per_frame.csv, threshold_curve.csv|png), ``meshes/<frame_id>.ply`` (predicted mesh, camera mm),
   ``joints.json`` (predicted and true joints of every frame, camera mm, with per-frame errors),
   ``overlays/<frame_id>.png`` (front / side / ground-truth views of the sheet's frames) and
   WORKDIR/contact_sheet_V.png: input depth | predicted mesh over it | side view of prediction vs truth, for
   ``--sheet_frames`` frames evenly spread over the set, each titled with its errors. WORKDIR/summary.json holds
   the metrics of every set and the timings.

Legend: F frames, N points, V vertices, J joints.
"""
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from experiments import common, heldout, model_spec

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "pretrained:depth", "The model: 'pretrained:NAME' (shipped weights) or a run WORKDIR.")
flags.DEFINE_string("training_manifest", None, "data_prep.synth manifest of the model's training set (default: "
                    "the shipped model's training_data.json, or manifest.json in the run's --data_dir).")
flags.DEFINE_integer("frames_per_subject", 24, "Held-out frames per test subject and viewpoint set (0 = every pose "
                     "and view of the test split).")
flags.DEFINE_list("views", ["default", "frontal"], f"Viewpoint sets to render: {sorted(heldout.VIEW_SETS)}.")
flags.DEFINE_integer("sheet_frames", 12, "Frames on each contact sheet (evenly spread over the set).")
flags.DEFINE_integer("overlays", 4, "Frames (the sheet's first ones) that also get a front/side/GT overlay PNG "
                     "(about 1 s of CPU each).")
flags.DEFINE_integer("render_workers", 2, "Processes rendering the held-out frames.")
flags.DEFINE_integer("crop_size", 128, "Side (px) of the stored depth crops shown on the contact sheet.")

PRED_RGB = np.array([0.95, 0.55, 0.15])   # predicted mesh: orange
GT_RGB = np.array([0.25, 0.75, 0.35])     # ground-truth mesh: green


def shaded(cos_incidence, rgb):
    """[H, W] |cos| of the incidence angle -> [H, W, 3] Lambert-shaded colour (0 where no hit)."""
    c = np.asarray(cos_incidence, np.float64)[..., None]
    return np.where(c > 0, rgb * (0.25 + 0.75 * c), 0.0)


def crop_resize(image, window, size):
    """[H, W(, C)] full-frame image -> [size, size(, C)] nearest-neighbour resize of window (u0, v0, u1, v1)."""
    u0, v0, u1, v1 = (int(x) for x in window)
    sub = image[v0:v1, u0:u1]
    rows = np.minimum((np.arange(size) + 0.5) * sub.shape[0] / size, sub.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size) + 0.5) * sub.shape[1] / size, sub.shape[1] - 1).astype(int)
    return sub[rows][:, cols]


def depth_gray(depth):
    """Depth crop [H, W] mm -> [H, W, 3] grey (near = light), missing pixels dark blue."""
    d = np.asarray(depth, np.float64)
    valid = d > 0
    out = np.tile(np.array([0.08, 0.08, 0.2]), d.shape + (1,))
    if valid.any():
        lo, hi = np.percentile(d[valid], [1, 99])
        g = 0.9 - 0.7 * np.clip((d - lo) / max(hi - lo, 1.0), 0, 1)
        out[valid] = g[valid, None]
    return out


def side_view(pred_vertices, gt_vertices, faces, camera, size):
    """Prediction (orange) and truth (green) turned 90 deg about the vertical axis through the true centroid and
    ray-cast with the same camera: depth errors that the camera's own view hides become visible."""
    from data_prep.synth import render
    from scipy.spatial.transform import Rotation

    c = gt_vertices.mean(axis=0)
    rot = Rotation.from_rotvec([0.0, np.pi / 2, 0.0]).as_matrix()
    hits = []
    for verts in (pred_vertices, gt_vertices):
        r = render.raycast_depth((verts - c) @ rot.T + c, faces, camera)
        hits.append(r)
    both = np.concatenate([pred_vertices, gt_vertices]) - c
    uv = camera.points_to_uvd(both @ rot.T + c)[:, :2]
    (u0, v0), (u1, v1) = uv.min(0), uv.max(0)
    half = 0.55 * max(u1 - u0, v1 - v0) + 2
    cu, cv = 0.5 * (u0 + u1), 0.5 * (v0 + v1)
    window = (max(int(cu - half), 0), max(int(cv - half), 0), min(int(cu + half) + 1, camera.width),
              min(int(cv + half) + 1, camera.height))
    dp, dg = hits[0]["depth"], hits[1]["depth"]
    pred_front = (dp > 0) & ((dg == 0) | (dp <= dg))
    img = np.where(pred_front[..., None], shaded(hits[0]["cos_incidence"], PRED_RGB),
                   shaded(hits[1]["cos_incidence"], GT_RGB))
    img[(dp == 0) & (dg == 0)] = 1.0
    return crop_resize(img, window, size)


def front_view(depth_crop, window, pred_vertices, faces, camera, size):
    """The predicted mesh, shaded, over the grey input depth crop (same camera and crop window)."""
    from data_prep.synth import render

    r = render.raycast_depth(pred_vertices, faces, camera)
    mesh = crop_resize(shaded(r["cos_incidence"], PRED_RGB), window, size)
    hit = crop_resize(r["depth"], window, size) > 0
    return np.where(hit[..., None], mesh, depth_gray(depth_crop))


def contact_sheet(path, frames, pred, faces, camera, per_frame, picks, title, per_row=3):
    """Write a grid of (input depth | predicted mesh over it | side view pred vs truth) for frames ``picks``.

    One mosaic image shown 1:1 (a crop_size-pixel panel per view), captions in the strip above each frame.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = frames["depth"].shape[1]
    gap, head = 6, 34
    tile_w, tile_h = 3 * size + 2 * gap, size + head
    rows = -(-len(picks) // per_row)
    width = per_row * tile_w + (per_row + 1) * 3 * gap
    height = rows * (tile_h + 2 * gap) + 2 * gap
    mosaic = np.ones((height, width, 3))
    captions = []
    for n, i in enumerate(picks):
        r, c = divmod(n, per_row)
        x0 = 3 * gap + c * (tile_w + 3 * gap)
        y0 = 2 * gap + r * (tile_h + 2 * gap)
        panels = [depth_gray(frames["depth"][i]),
                  front_view(frames["depth"][i], frames["crop_window"][i], pred["vertices"][i], faces, camera, size),
                  side_view(pred["vertices"][i], frames["vertices"][i], faces, camera, size)]
        for k, img in enumerate(panels):
            x = x0 + k * (size + gap)
            mosaic[y0 + head:y0 + head + size, x:x + size] = np.clip(img, 0, 1)
        captions.append((x0, y0, f"subject {frames['subject'][i]}, pose {frames['pose'][i]}: joint "
                         f"{per_frame['joint_error_mm'][i]:.1f} mm, shape {per_frame['shape_error_mm'][i]:.1f} mm"))
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, (height + 40) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + 40)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for x0, y0, text in captions:
        ax.text(x0, y0 + 2, text, fontsize=8, va="top", ha="left")
        for k, name in enumerate(("input depth", "predicted mesh", "side: predicted / true")):
            ax.text(x0 + k * (size + gap), y0 + head - 3, name, fontsize=7, va="bottom", ha="left", color="0.3")
    fig.text(0.5, 1 - 8 / (height + 40), title, fontsize=8.5, va="top", ha="center")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_outputs(out_dir, frames, pred, faces, per_frame, joint_names, picks, overlays):
    """meshes/<frame_id>.ply for every frame, joints.json, overlays/<frame_id>.png for the first ``overlays`` picks."""
    import open3d as o3d
    from PIL import Image

    from hsr_tf.train import summaries

    os.makedirs(os.path.join(out_dir, "meshes"), exist_ok=True)
    doc = {"units": "camera-frame mm (x right, y up, z away from the camera)", "joint_names": joint_names,
           "frames": []}
    for i, fid in enumerate(frames["frame_id"].tolist()):
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(pred["vertices"][i].astype(np.float64)),
                                         o3d.utility.Vector3iVector(np.asarray(faces, np.int32)))
        o3d.io.write_triangle_mesh(os.path.join(out_dir, "meshes", f"{fid}.ply"), mesh, write_vertex_normals=False)
        doc["frames"].append({
            "frame_id": fid, "subject": int(frames["subject"][i]), "pose": int(frames["pose"][i]),
            "view": int(frames["view"][i]), "joints": np.round(pred["joints"][i], 3).tolist(),
            "dataset_joints": np.round(pred["dataset_joints"][i], 3).tolist(),
            "true_joints": np.round(frames["joints"][i].astype(np.float64), 3).tolist(),
            **{k: round(float(per_frame[k][i]), 3) for k in per_frame if k.endswith("_mm")}})
    with open(os.path.join(out_dir, "joints.json"), "w") as f:
        json.dump(doc, f)
    os.makedirs(os.path.join(out_dir, "overlays"), exist_ok=True)
    for i in picks[:overlays]:
        fid = int(frames["frame_id"][i])
        img = summaries.render_overlay(np.zeros((0, 3)), pred["vertices"][i], faces, frames["vertices"][i],
                                       pred["joints"][i], frames["joints"][i], size_px=720,
                                       title=f"frame {fid}: joint error {per_frame['joint_error_mm'][i]:.1f} mm")
        Image.fromarray(img).save(os.path.join(out_dir, "overlays", f"{fid}.png"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir: expected an output directory, found none")
    unknown = sorted(set(FLAGS.views) - set(heldout.VIEW_SETS))
    if unknown or not FLAGS.views:
        raise app.UsageError(f"--views: expected a list of {sorted(heldout.VIEW_SETS)}, found {FLAGS.views}")
    if FLAGS.ops == "fallback":  # common's --ops: the pure-TF PointNet++ ops
        os.environ["HSR_TF_OPS"] = "fallback"
    t_start = time.time()
    workdir = FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    config = heldout.read_manifest_file(FLAGS.training_manifest or model_spec.training_manifest_path(FLAGS.model))
    slots = heldout.heldout_slots(config, FLAGS.frames_per_subject)
    logging.info("Held-out subjects %s of the training set (%d subjects, seed %d): %d frames per viewpoint set",
                 heldout.test_subjects(config), config.num_subjects, config.seed, len(slots))
    # Rendering first, in forked workers, before TensorFlow starts its threads.
    timings, rendered = {}, {}
    for view in FLAGS.views:
        t0 = time.time()
        rendered[view] = heldout.render_heldout(os.path.join(workdir, view, "frames"),
                                                heldout.with_views(config, view, FLAGS.crop_size), slots,
                                                num_workers=FLAGS.render_workers)
        timings[f"render_{view}_s"] = time.time() - t0
        logging.info("%s: %s in %.1f s", view, rendered[view], timings[f"render_{view}_s"])
    t0 = time.time()
    from hsr_tf.train import evaluation, pipeline

    model, ckpt = model_spec.load_model_spec(FLAGS.model)
    timings["load_model_s"] = time.time() - t0
    faces = np.asarray(model.faces)
    predict_fn = evaluation.make_predict_fn(model)  # one trace for every set
    summary = {"model": FLAGS.model, "checkpoint": ckpt, "command": common.command_line(),
               "heldout_subjects": heldout.test_subjects(config),
               "training_set": {"num_subjects": config.num_subjects, "seed": config.seed,
                                "poses_per_subject": config.poses_per_subject}, "sets": {}}
    for view in FLAGS.views:
        t0 = time.time()
        out_dir = os.path.join(workdir, view)
        data_dir = os.path.join(out_dir, "frames")
        res = heldout.evaluate_dir(model, data_dir, config, FLAGS.batch_size, predict_fn, keep_outputs=True)
        joint_names = [str(n) for n in pipeline.read_data_info(data_dir, "test")["joint_names"]]
        evaluation.write_report(res, os.path.join(out_dir, "eval"), joint_names=joint_names,
                                label=f"{FLAGS.model}, {view} views", extra={"view_set": view, "checkpoint": ckpt})
        frames = heldout.read_frames(data_dir)
        pred = res.pop("outputs")
        ids = res["per_frame"]["frame_id"]
        if not np.array_equal(ids, frames["frame_id"]):
            raise RuntimeError(f"{data_dir}: expected the evaluation and the frames in one order, found other ids")
        n = len(ids)
        picks = sorted(set(np.round(np.linspace(0, n - 1, min(FLAGS.sheet_frames, n))).astype(int).tolist()))
        write_outputs(out_dir, frames, pred, faces, res["per_frame"], joint_names, picks, FLAGS.overlays)
        camera = heldout.with_views(config, view).frame.camera
        sheet = os.path.join(workdir, f"contact_sheet_{view}.png")
        title = (f"{FLAGS.model} on {n} held-out frames ({view} views, subjects {heldout.test_subjects(config)}): "
                 f"mean joint error {res['mean_joint_error_mm']:.1f} mm, aligned shape "
                 f"{res['aligned_shape_error_mm']:.1f} mm; {len(picks)} frames evenly spread")
        contact_sheet(sheet, frames, pred, faces, camera, res["per_frame"], picks, title)
        keys = ("mean_joint_error_mm", "model_joint_error_mm", "shape_error_mm", "aligned_shape_error_mm",
                "rest_shape_error_mm", "point_cloud_error_mm", "num_frames")
        summary["sets"][view] = {k: float(res[k]) for k in keys if k in res}
        summary["sets"][view]["fraction_good_frames_at_40mm"] = float(
            np.interp(40.0, res["thresholds_mm"], res["fraction_good_frames"]))
        summary["sets"][view]["skipped_frames"] = rendered[view]["skipped"]
        timings[f"evaluate_write_{view}_s"] = time.time() - t0
        logging.info("%s views: %s -> %s", view, summary["sets"][view], sheet)
    timings["total_s"] = time.time() - t_start
    summary["timings"] = timings
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({v: {k: round(x, 2) for k, x in s.items() if isinstance(x, float)}
                      for v, s in summary["sets"].items()} | {"total_s": round(timings["total_s"], 1)}, indent=1))


if __name__ == "__main__":
    app.run(main)
