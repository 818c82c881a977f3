"""The run of ``experiments.rgb_synth``: render, the three-phase schedule, publish, evaluate, export, predict.

See ``experiments.rgb_common`` (flags and pieces) for what each step does. --init_from=pretrained:rgb or
--init_from=WORKDIR (an RGB run) starts the network from those weights (:func:`init_from`); set --phase1_steps=0
--phase2_steps=0 to fine-tune end to end only. Export and predict are the programs
``experiments.export`` and ``experiments.predict_rgb``, run in subprocesses; each step is skipped with a log line
when its program does not handle RGB runs.
"""
from __future__ import annotations

import json
import os
import time

import keras
import tensorflow as tf
from absl import flags, logging

from experiments import common, model_spec, rgb_common, rgb_distribute

FLAGS = flags.FLAGS


def _handles_rgb(module: str) -> bool:
    """Whether a program of the export/predict engineer serves RGB runs (it reads hsr_tf.train.run_kind)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    with open(spec.origin) as f:
        return module == "experiments.predict_rgb" or "run_kind" in f.read()


def write_predict_input(data_dir: str, out_dir: str) -> dict:
    """The first held-out frame as the predict step's input: ``input.png`` (uint8 RGB crop with a background)
    and ``input.json`` (camera fx, fy, cx, cy of that crop, root_depth and bone_scale mm, frame_id)."""
    import numpy as np
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    batch = next(iter(rgb_common.heldout_dataset(data_dir, batch_size=1)))
    png = os.path.join(out_dir, "input.png")
    Image.fromarray(np.round(batch["image"][0].numpy() * 255).astype(np.uint8)).save(png)
    info = {"image": png, "camera": [float(c) for c in batch["camera"][0]],
            "root_depth": float(batch["root_depth"][0]), "bone_scale": float(batch["bone_scale"][0]),
            "frame_id": int(batch["frame_id"][0])}
    with open(os.path.join(out_dir, "input.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


CONFIG_KEYS_IGNORED = ("name", "trainable", "dtype")


def init_from(net, spec: str) -> str:
    """Copy the weights of the RGB model named by ``spec`` into the built ``net`` (--init_from).

    ``spec``: ``pretrained:NAME`` (``hsr_tf.pretrained``, e.g. pretrained:rgb) or an RGB run's WORKDIR (its
    published final network, W/checkpoints). The source must be an RGB model with ``net``'s configuration (the
    --variant, --image_size, --rgb_network and --task_transfer it was trained with); variables are copied in
    ``net.variables`` order, the order of every checkpoint of the network. Returns the source checkpoint.
    Raises:
      ValueError naming the kind or the configuration entries that differ; FileNotFoundError from the source.
    """
    found = model_spec.spec_kind(spec)
    if found != "rgb":
        raise ValueError(f"--init_from={spec}: expected an RGB model (run_kind.txt 'rgb'), found a {found} model")
    src, ckpt = model_spec.load_model_spec(spec)
    # Through JSON: a config deserialised from model_config.json holds lists where a built one may hold tuples.
    mine, theirs = (json.loads(json.dumps(m.get_config(), default=str)) for m in (net, src))
    differ = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(mine) | set(theirs))
              if k not in CONFIG_KEYS_IGNORED and mine.get(k) != theirs.get(k)}
    if not differ and len(src.variables) != len(net.variables):
        differ = {"variables": (len(src.variables), len(net.variables))}
    if differ:
        raise ValueError(f"--init_from={spec}: expected the source's network configuration, found differences "
                         f"(entry: (source, this run)) {differ}; pass the source's --variant, --image_size, "
                         "--rgb_network, --task_transfer")
    for mine_v, src_v in zip(net.variables, src.variables):
        if tuple(mine_v.shape) != tuple(src_v.shape):
            raise ValueError(f"--init_from={spec}: expected {mine_v.path} of shape {tuple(mine_v.shape)}, found "
                             f"{src_v.path} of shape {tuple(src_v.shape)}")
        mine_v.assign(src_v)
    logging.info("Initialised all %d variables from %s", len(net.variables), ckpt)
    return ckpt


def run(stop_after=None) -> dict:
    """Render (if needed), train the schedule, evaluate, export, predict (module docstring)."""
    if FLAGS.workdir is None:
        raise ValueError("--workdir: expected a run directory, found none")
    t_start = time.time()
    rgb_distribute.strategy()  # --distribution, before any other TensorFlow work (multi_worker); logs the batches
    workdir = FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    rgb_common.write_run_info(workdir)
    rgb_common.ensure_rgb_data(FLAGS.data_dir)
    t_data = time.time()
    keras.utils.set_random_seed(FLAGS.seed)
    net = rgb_common.build_model()
    net(net.example_input(1), training=False)
    from hsr_tf.train import loop, run_kind

    loop.save_model_config(net, workdir)
    run_kind.write_run_kind(workdir, "rgb")
    if FLAGS.init_from and tf.train.latest_checkpoint(os.path.join(workdir, loop.CHECKPOINT_SUBDIR)) is None:
        # Before every phase, also on a resume: each phase's Trainer then restores its own checkpoint and
        # init_from_phases the earlier phases' final weights over it, so a resumed run equals an uninterrupted one.
        init_from(net, FLAGS.init_from)
    heldout = rgb_common.heldout_dataset(FLAGS.data_dir)
    cpu0 = time.process_time()
    sched = rgb_common.train_schedule(net, FLAGS.data_dir, workdir, heldout=heldout, stop_after=stop_after)
    timings = {"render_s": t_data - t_start, "train_s": time.time() - t_data,
               "train_cpu_s": time.process_time() - cpu0}
    if sched["interrupted"]:
        logging.info("Stopped after %s steps of this process (test hook); rerun to resume", stop_after)
        return {"interrupted": True, "schedule": sched, "timings": timings}
    rgb_common.publish(net, workdir, FLAGS.phase3_steps)
    if not rgb_distribute.is_chief():
        rgb_distribute.log_not_chief("evaluation, export, predict and timings.json")
        return {"interrupted": False, "schedule": sched, "metrics": None, "timings": timings}
    metrics = None
    if FLAGS.evaluate:
        t0 = time.time()
        cpu0 = time.process_time()
        metrics = rgb_common.evaluate(net, FLAGS.data_dir, os.path.join(workdir, "eval"),
                                      label=os.path.basename(os.path.abspath(workdir)))
        timings["evaluate_s"] = time.time() - t0
        timings["evaluate_cpu_s"] = time.process_time() - cpu0
        logging.info("Held-out: pose error %.2f mm (mean baseline %.2f), mesh error %s mm (baseline %s), "
                     "aligned %s mm (baseline %s), 2D %.2f px", metrics["pose_error_mm"],
                     metrics.get("mean_baseline_pose_error_mm", float("nan")),
                     *(f"{metrics[k]:.2f}" if k in metrics else "n/a" for k in (
                         "mesh_error_mm", "mean_baseline_mesh_error_mm", "aligned_mesh_error_mm",
                         "mean_baseline_aligned_mesh_error_mm")), metrics["joint_2d_error_px"])
    export_dir = os.path.join(workdir, "export")
    exported = False
    if FLAGS.export:
        if _handles_rgb("experiments.export"):
            t0 = time.time()
            common.run_subprocess("experiments.export", [f"--workdir={workdir}", f"--export_dir={export_dir}",
                                                         f"--data_dir={FLAGS.data_dir}"])
            timings["export_s"] = time.time() - t0
            exported = True
        else:
            logging.warning("Export skipped: experiments.export does not handle RGB runs yet (it does not read "
                            "hsr_tf.train.run_kind)")
    if FLAGS.predict:
        if not exported:
            logging.warning("Predict skipped: no RGB SavedModel was exported")
        elif not _handles_rgb("experiments.predict_rgb"):
            logging.warning("Predict skipped: experiments.predict_rgb does not exist yet")
        else:
            t0 = time.time()
            pred_dir = os.path.join(workdir, "predict")
            info = write_predict_input(FLAGS.data_dir, pred_dir)
            common.run_subprocess("experiments.predict_rgb", [
                f"--saved_model={export_dir}", f"--image={info['image']}",
                "--camera=" + ",".join(f"{c:.4f}" for c in info["camera"]), f"--root_depth={info['root_depth']:.3f}",
                f"--bone_scale={info['bone_scale']:.4f}", f"--out_dir={pred_dir}"])
            timings["predict_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_start
    # CPU seconds of this process (not of the export / predict subprocesses): on a shared machine the wall-clock
    # figures above depend on the other load, this one much less.
    timings["process_cpu_s"] = time.process_time()
    with open(os.path.join(workdir, "timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    logging.info("Done; timings %s", {k: round(v, 1) for k, v in timings.items()})
    return {"interrupted": False, "schedule": sched, "metrics": metrics, "timings": timings}
