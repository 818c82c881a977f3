"""The RGB half of ``python -m experiments.export``: a run of the RGB network -> the RGB SavedModel.

``experiments.export --workdir=W`` comes here when :func:`is_rgb_run` says W holds an RGB run (its
``run_kind.txt`` says ``rgb``, written by the RGB programs, or its ``model_config.json`` is an ``RGBMeshNet``), and
``experiments.export --pretrained=NAME`` when the package NAME holds an RGB model (``hsr_tf.pretrained.kind``): then
the check runs on the package's reference frames and also compares the export with its stored outputs.
The export (``hsr_tf.export.export_rgb_saved_model``) is then reloaded and checked on held-out frames of the
run's data (``--data_dir`` or the run's own), or on synthetic patterns when no RGB shards are at hand:

* right hands: SavedModel vs the Keras model (image resized and camera adapted the same way), max |diff|;
* left hands: each frame flipped left-right with cx -> 255 - cx and declared left must give the right-hand
  outputs mirrored (x -> -x, u -> 255 - u).

Both must agree within 0.05 mm (0.05 px for joints_uv), as the depth export, under float32; under a mixed
policy the SavedModel and the eager Keras model round their bfloat16/float16 activations differently (0.18 mm
vertices, 0.31 mm joints measured on a CPU-sized network), so the Keras comparison allows 1 mm there.

Legend: B batch, V vertices (1305), J joints (21), S = 256 the signature's crop size.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

MAX_DIFF_MM = 0.05        # float32
MAX_DIFF_MIXED_MM = 1.0   # SavedModel vs Keras under mixed_bfloat16 / mixed_float16


def is_rgb_run(workdir: str) -> bool:
    """Whether ``workdir`` holds a run of the RGB network (run_kind.txt, else the saved model config)."""
    from hsr_tf.train import loop, run_kind

    if run_kind.read_run_kind(workdir) == "rgb":
        return True
    cfg = os.path.join(workdir, loop.MODEL_CONFIG_FILE)
    if os.path.exists(cfg):
        with open(cfg) as f:
            return json.load(f).get("class_name") == "RGBMeshNet"
    return False


def check_inputs(data_dir, num_frames: int, seed: int = 0) -> tuple[dict, str]:
    """``num_frames`` un-augmented held-out crops of ``data_dir`` at S = 256 (uint8 image, camera, root depth,
    bone scale), or smooth random patterns with a plausible camera when ``data_dir`` has no RGB shards.
    Returns (inputs, description of the source)."""
    from hsr_tf import export as export_lib
    from hsr_tf.data import rgb_reader
    from hsr_tf.data.rgb_shards import RGBShardError

    s = export_lib.RGB_INPUT_SIZE
    try:
        ds = rgb_reader.make_rgb_dataset(data_dir, "test", num_frames, image_size=s, augment=False, shuffle=False,
                                         seed=seed)
        batch = next(iter(ds))
        x = {"image": np.round(batch["image"].numpy() * 255).astype(np.uint8),
             "camera": batch["camera"].numpy(), "root_depth": batch["root_depth"].numpy(),
             "bone_scale": batch["bone_scale"].numpy()}
        return x, f"{len(x['image'])} held-out frames of {data_dir}"
    except (RGBShardError, FileNotFoundError, TypeError) as e:
        logging.warning("No RGB test shards for the export check (%s); checking on synthetic patterns", e)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    freq = rng.uniform(0.01, 0.06, size=(num_frames, 3, 2))
    image = 127 + 120 * np.sin(freq[:, None, None, :, 0] * xx[None, ..., None] + freq[:, None, None, :, 1] * yy[None, ..., None])
    x = {"image": image.astype(np.uint8),
         "camera": np.tile(np.array([[2.0 * s, 2.0 * s, 0.5 * (s - 1), 0.5 * (s - 1)]], np.float32), (num_frames, 1)),
         "root_depth": rng.uniform(400, 600, num_frames).astype(np.float32),
         "bone_scale": rng.uniform(25, 32, num_frames).astype(np.float32)}
    return x, f"{num_frames} synthetic patterns (no RGB shards found)"


def verify(model, export_dir: str, x: dict, tolerance: float = MAX_DIFF_MM) -> dict:
    """Max |difference| of the SavedModel vs the Keras model (right hands) and vs its own mirrored outputs
    (left hands); raises RuntimeError past the tolerance."""
    import tensorflow as tf

    from hsr_tf import export as export_lib

    s = export_lib.RGB_INPUT_SIZE
    served = export_lib.LoadedRGBModel(export_dir)
    b = len(x["image"])
    right = served(**x, is_left=np.zeros(b, bool))
    img = tf.cast(x["image"], tf.float32) / 255.0
    if model.image_size != s:
        img = tf.image.resize(img, [model.image_size] * 2, method="area" if model.image_size < s else "bilinear")
    ref = model({"image": img, "camera": export_lib.resize_camera(x["camera"], s, model.image_size),
                 "root_depth": tf.constant(x["root_depth"]), "bone_scale": tf.constant(x["bone_scale"])},
                training=False)
    diffs = {k: float(np.max(np.abs(right[k] - np.asarray(ref[k], np.float32)))) for k in ("vertices", "joints")}
    mirrored_cam = x["camera"].copy()
    mirrored_cam[:, 2] = s - 1 - mirrored_cam[:, 2]
    left = served(image=x["image"][:, :, ::-1], camera=mirrored_cam, root_depth=x["root_depth"],
                  bone_scale=x["bone_scale"], is_left=np.ones(b, bool))
    flip = np.array([-1.0, 1.0, 1.0], np.float32)
    diffs["left_vertices_vs_mirrored_right"] = float(np.max(np.abs(left["vertices"] - right["vertices"] * flip)))
    diffs["left_joints_uv_vs_mirrored_right_px"] = float(np.max(np.abs(
        left["joints_uv"] - np.stack([s - 1 - right["joints_uv"][..., 0], right["joints_uv"][..., 1]], -1))))
    bounds = {k: (tolerance if k in ("vertices", "joints") else MAX_DIFF_MM) for k in diffs}
    if any(diffs[k] > bounds[k] for k in diffs):
        raise RuntimeError(f"{export_dir}: expected the export to match the Keras model and its mirror within "
                           f"{bounds} mm / px, found {diffs}")
    return diffs


def reference_check_inputs(ref: dict, num_frames: int):
    """The first ``num_frames`` reference frames of an RGB package (``hsr_tf.pretrained.rgb_reference_batch``) as
    export inputs: each S x S uint8 crop repeated k x k (k = 256 / S), so the export's area resize gives the crop
    back exactly, with the camera of the 256 crop. Returns (inputs, the package's outputs in the export's
    units: vertices, joints camera mm; joints_uv px of the 256 crop), or (None, None) when 256 is no multiple of S."""
    from hsr_tf import export as export_lib

    s, big = int(ref["image_uint8"].shape[1]), export_lib.RGB_INPUT_SIZE
    if big % s:
        return None, None
    k, n = big // s, int(num_frames)
    x = {"image": np.repeat(np.repeat(ref["image_uint8"][:n], k, axis=1), k, axis=2),
         "camera": export_lib.resize_camera(ref["camera"][:n], s, big).numpy(),
         "root_depth": ref["root_depth"][:n].numpy(), "bone_scale": ref["bone_scale"][:n].numpy()}
    want = {key: ref[f"reference/{key}"][:n].numpy() for key in ("vertices", "joints")}
    want["joints_uv"] = (ref["reference/joints_uv"][:n].numpy() + 0.5) * k - 0.5
    return x, want


def export_rgb_model(model, ckpt: str, export_dir: str, data_dir, check_frames: int, precision: str,
                     reference=None) -> dict:
    """Export the built RGB ``model`` (restored from ``ckpt``), check it against the Keras model on held-out frames
    of ``data_dir`` (or on ``reference``: a package's reference batch, then also against its stored outputs);
    returns the report dict (also written to ``export_dir/export_report.json``)."""
    from hsr_tf import export as export_lib
    from hsr_tf.hand_model.skeleton import JOINT_NAMES

    if getattr(model, "variant", "mesh") == "baseline1":
        raise ValueError(f"{ckpt}: expected an RGB network with a mesh to export, found variant 'baseline1' "
                         "(joints only)")
    meta = {"joint_names": list(JOINT_NAMES), "model_joint_names": list(JOINT_NAMES),
            "checkpoint": os.path.abspath(ckpt), "precision": precision, "variant": getattr(model, "variant", None),
            "data_dir": os.path.abspath(data_dir) if data_dir else None}
    export_lib.export_rgb_saved_model(model, export_dir, metadata=meta)
    logging.info("Exported RGB model %s -> %s", ckpt, export_dir)
    report = {"kind": "rgb", "export_dir": os.path.abspath(export_dir), "checkpoint": ckpt,
              "model_image_size": int(model.image_size), "precision": precision}
    tolerance = MAX_DIFF_MM if precision == "float32" else MAX_DIFF_MIXED_MM
    if check_frames:
        x, want = reference_check_inputs(reference, check_frames) if reference is not None else (None, None)
        if x is None:
            x, source = check_inputs(data_dir, check_frames)
        else:
            source = f"{len(x['image'])} reference frames of the package (crops repeated to 256 px)"
        report["check_frames"] = source
        report["max_abs_diff"] = verify(model, export_dir, x, tolerance)
        logging.info("SavedModel vs Keras model / mirrored, max |difference| (mm, px): %s", report["max_abs_diff"])
        if want is not None:
            served = export_lib.LoadedRGBModel(export_dir)(**x, is_left=np.zeros(len(x["image"]), bool))
            diffs = {k: float(np.max(np.abs(served[k] - want[k]))) for k in want}
            report["max_abs_diff_vs_reference"] = diffs
            if max(diffs.values()) > tolerance:
                raise RuntimeError(f"{export_dir}: expected the export to give the package's reference outputs within "
                                   f"{tolerance} mm / px, found {diffs}")
    with open(os.path.join(export_dir, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def export_rgb_run(workdir: str, export_dir: str, checkpoint, data_dir, check_frames: int, precision: str) -> dict:
    """Load the run's network (newest or given checkpoint), export it, check it (:func:`export_rgb_model`)."""
    from hsr_tf.train import loop

    model, ckpt = loop.load_model_from_workdir(workdir, checkpoint)
    return export_rgb_model(model, ckpt, export_dir, data_dir, check_frames, precision)


def export_rgb_pretrained(name: str, export_dir: str, check_frames: int, precision: str) -> dict:
    """``experiments.export --pretrained=NAME`` for an RGB package: the shipped network, checked on the package's
    reference frames against the Keras model, its own mirror and the stored reference outputs."""
    from hsr_tf import pretrained

    model = pretrained.load(name)
    return export_rgb_model(model, pretrained.checkpoint_prefix(name), export_dir, None, check_frames, precision,
                            reference=pretrained.rgb_reference_batch(name))
