"""The RGB half of ``python -m experiments.package_pretrained``: an RGB run -> the pieces of the shipped package.

``experiments.package_pretrained --workdir=W --name=rgb`` comes here when W/run_kind.txt says ``rgb`` (written by
``experiments.rgb_synth``). The run keeps one Trainer per phase in W/phase1..3; when phase 3 ends the final
network is published to W/checkpoints (model variables only) beside W/model_config.json. That published
checkpoint is packaged by default; ``--checkpoint=W/phase3/checkpoints/ckpt-N`` packages an unfinished run's
phase-3 checkpoint instead (its optimizer slots are dropped). Phase 1 / 2 checkpoints hold parts of the network
only and are refused.

Held-out evaluation: every frame of the run's test split (its held-out subjects), un-augmented, with the
backgrounds the run's own evaluation composites (its recorded --seed and --background_dir), by
``hsr_tf.train.rgb_evaluation.evaluate`` with the mean-pose / mean-mesh baseline of the training split: pose error,
3D PCK and AUC, 2D joint error (px), mesh and aligned mesh errors. The same numbers as the run's W/eval when it
evaluated the same checkpoint on the whole test split.

Legend: B batch, S the network's crop size (px), V vertices (1305), J joints (21).
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from experiments import common

PHASES = ("phase1", "phase2", "phase3")
METRIC_KEYS = ("pose_error_mm", "mesh_error_mm", "aligned_mesh_error_mm", "joint_2d_error_px", "auc_0_50",
               "auc_20_50", "mean_baseline_pose_error_mm", "mean_baseline_mesh_error_mm",
               "mean_baseline_aligned_mesh_error_mm", "mean_baseline_auc_0_50", "mean_baseline_auc_20_50",
               "num_frames")
CURVE_KEYS = ("pose_error_mm", "mesh_error_mm", "aligned_mesh_error_mm")


def run_settings(workdir: str) -> dict:
    """The run's recorded flags (W/flags.txt) that fix its held-out frames and schedule: seed, background_dir,
    heatmap_sigma (0 = the paper's 4 px at 64 x 64 scaled with S), batch_size, phase<N>_steps."""
    def flag(name, cast, default):
        v = common.workdir_flag(workdir, name)
        return default if v in (None, "") else cast(v)

    return {"seed": flag("seed", int, 0), "background_dir": flag("background_dir", str, None),
            "heatmap_sigma": flag("heatmap_sigma", float, 0.0), "batch_size": flag("batch_size", int, None),
            "phase_steps": {p: flag(f"{p}_steps", int, None) for p in PHASES}}


def load_final(workdir: str, checkpoint=None):
    """(RGB network with the packaged weights, checkpoint prefix, step) of the run (module docstring)."""
    from hsr_tf.train import loop

    if checkpoint is None:
        import tensorflow as tf

        checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, loop.CHECKPOINT_SUBDIR))
        if checkpoint is None:
            raise FileNotFoundError(
                f"{os.path.join(workdir, loop.CHECKPOINT_SUBDIR)}: expected the RGB run's published final network "
                "(written when phase 3 ends), found none; pass --checkpoint=W/phase3/checkpoints/ckpt-N to package "
                "an unfinished run")
    parent = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
    if parent in ("phase1", "phase2"):
        raise ValueError(f"--checkpoint={checkpoint}: expected the published network (W/checkpoints) or a phase-3 "
                         f"checkpoint, found a {parent} checkpoint (it holds part of the network only)")
    m = re.search(r"ckpt-(\d+)$", checkpoint)
    if m is None:
        raise ValueError(f"--checkpoint: expected a prefix ending in ckpt-<step>, found {checkpoint}")
    model, ckpt = loop.load_model_from_workdir(workdir, checkpoint)
    if not hasattr(model, "image_size") or not hasattr(model, "sub_networks"):
        raise ValueError(f"{workdir}: expected an RGB network (RGBMeshNet) in model_config.json, found "
                         f"{type(model).__name__}")
    return model, ckpt, int(m.group(1))


def heldout_dataset(data_dir: str, model, settings: dict, batch_size: int = 32):
    """Un-augmented test-split batches at the network's crop size, in file order (as the run's evaluation)."""
    from hsr_tf.data import rgb_reader

    s = int(model.image_size)
    return rgb_reader.make_rgb_dataset(data_dir, "test", batch_size, image_size=s, augment=False,
                                       seed=settings["seed"], shuffle=False, background_dir=settings["background_dir"],
                                       heatmap_size=s // 4, heatmap_sigma=settings["heatmap_sigma"] or 4.0 * s / 256)


def data_info(data_dir: str, model, settings: dict) -> dict:
    """data_info.json of an RGB package: what a user or an export needs to feed the network as it was trained."""
    from hsr_tf import export as export_lib
    from hsr_tf.data import rgb_reader, rgb_shards

    attrs = rgb_shards.validate_rgb_shard(rgb_reader.resolve_files(data_dir, "train")[0])["attrs"]
    s = int(model.image_size)
    return {"kind": "rgb", "dataset": str(attrs.get("dataset", "")), "joint_names": [str(n) for n in
                                                                                     attrs["joint_names"]],
            "shard_image_size": int(attrs["image_size"]), "model_image_size": s,
            "export_input_size": export_lib.RGB_INPUT_SIZE, "heatmap_size": s // 4,
            "heatmap_sigma": settings["heatmap_sigma"] or 4.0 * s / 256, "seed": settings["seed"],
            "background_dir": settings["background_dir"],
            "camera": "fx, fy, cx, cy (px) of the S x S crop, pixel centres at integer coordinates",
            "units": "vertices, joints: camera-frame mm (x right, y up, z away); root_depth, bone_scale: mm"}


def training_manifest(data_dir: str):
    """The data_prep.synth_rgb manifest of the training set (None for shards converted from a real set)."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def heldout_subjects(manifest):
    """The test split's subjects of a data_prep.synth_rgb set (None without a manifest)."""
    if manifest is None:
        return None
    from data_prep.synth import render

    return render.split_subjects(manifest["num_subjects"], manifest["test_fraction"], manifest["seed"])["test"]


def write_reference(model, data_dir: str, settings: dict, n: int, path: str) -> None:
    """reference.npz (``hsr_tf.pretrained``): the first ``n`` held-out frames, image rounded to uint8 at the
    network's crop size, and the model's outputs on exactly that image (/ 255)."""
    import tensorflow as tf

    from hsr_tf import pretrained

    batch = next(iter(heldout_dataset(data_dir, model, settings, batch_size=n).take(1)), None)
    if batch is None:
        raise ValueError(f"{data_dir}: expected test frames for reference.npz, found none")
    image = np.clip(np.round(batch["image"].numpy() * 255.0), 0, 255).astype(np.uint8)
    inputs = {"image": tf.constant(image.astype(np.float32) / 255.0), "camera": batch["camera"],
              "root_depth": batch["root_depth"], "bone_scale": batch["bone_scale"]}
    out = model(inputs, training=False)
    arrays = {"image": image, "camera": batch["camera"].numpy().astype(np.float32),
              "root_depth": batch["root_depth"].numpy().astype(np.float32),
              "bone_scale": batch["bone_scale"].numpy().astype(np.float32),
              "frame_id": batch["frame_id"].numpy()}
    arrays.update({k: np.asarray(out[k], np.float32) for k in pretrained.RGB_REFERENCE_KEYS})
    np.savez_compressed(path, **arrays)


def evaluate(model, data_dir: str, settings: dict) -> dict:
    """Held-out metrics of ``model`` on the whole test split with the training split's mean baseline:
    {METRIC_KEYS..., "pck_at": {"<t>mm": fraction}, "pck_thresholds_mm": [T], "pck": [T],
    "mean_baseline_pck": [T]} (mm, px, fractions)."""
    from hsr_tf.data import rgb_reader
    from hsr_tf.train import rgb_evaluation

    mean_pose = rgb_evaluation.mean_pose_from_shards(rgb_reader.resolve_files(data_dir, "train"))
    res = rgb_evaluation.evaluate(model, heldout_dataset(data_dir, model, settings), mean_pose=mean_pose)
    out = {k: float(res[k]) for k in METRIC_KEYS if k in res}
    thr = np.asarray(res["pck_thresholds_mm"], np.float64)
    out["pck_at"] = {f"{t:g}mm": float(p) for t, p in zip(thr, res["pck"]) if t in (10, 20, 30, 40, 50)}
    out["pck_thresholds_mm"] = thr.tolist()
    out["pck"] = np.asarray(res["pck"], np.float64).tolist()
    if "mean_baseline_pck" in res:
        out["mean_baseline_pck"] = np.asarray(res["mean_baseline_pck"], np.float64).tolist()
    return out


def card_fields(workdir: str, data_dir: str, model, manifest, settings: dict) -> dict:
    """The RGB-specific entries of card.json (training data, schedule, network widths)."""
    from hsr_tf.data import rgb_reader

    cfg = model.get_config()
    frame = (manifest or {}).get("frame", {})
    return {"kind": "rgb", "training_data": {k: v for k, v in (manifest or {}).items() if k != "frame"} or None,
            "view": frame.get("view"), "noise": frame.get("depth_noise"),
            "frame": {k: frame.get(k) for k in ("image_size", "skin_tones", "lighting", "blur_prob",
                                                 "image_noise_std")} if frame else None,
            "heldout_subjects": heldout_subjects(manifest), "train_frames": rgb_reader.count_frames(data_dir, "train"),
            "phase_steps": settings["phase_steps"], "network": {k: cfg.get(k) for k in (
                "variant", "image_size", "filters", "num_stacks", "num_residual", "gcn_fc", "gcn_features",
                "regressor_features", "regressor_hidden", "mlp_hidden", "task_transfer")},
            "batch_size": settings["batch_size"]}


def portable_path(path):
    """``path`` relative to the root of the git worktree holding it (the directory with ``.git`` above it), as a
    reader of the card finds it in their own checkout; unchanged when no worktree holds it (e.g. /tmp)."""
    if not path:
        return path
    full = os.path.abspath(path)
    d = os.path.dirname(full)
    while d != os.path.dirname(d):
        if os.path.exists(os.path.join(d, ".git")):
            return os.path.relpath(full, d)
        d = os.path.dirname(d)
    return path


def portable_command(command):
    """A recorded command with ``python`` for the interpreter's path and :func:`portable_path` for every
    ``--flag=<existing path>`` (the card is committed: no machine's absolute paths in it)."""
    import shlex

    if not command:
        return command
    args = shlex.split(command)
    if os.path.basename(args[0]).startswith("python"):
        args[0] = "python"
    out = []
    for a in args:
        name, eq, value = a.partition("=")
        is_path = os.path.exists(value) or os.path.exists(value + ".index")  # a checkpoint is a prefix
        if eq and name.startswith("--") and os.path.isabs(value) and is_path:
            a = f"{name}={portable_path(value)}"
        out.append(a)
    return " ".join(shlex.quote(a) for a in out)


def summary_dirs(workdir: str, which: str) -> list:
    """W/phase<N>/<which> of the phases the run has (the Trainers' TensorBoard directories)."""
    return [os.path.join(workdir, p, which) for p in PHASES if os.path.isdir(os.path.join(workdir, p, which))]
