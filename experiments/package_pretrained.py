"""Package a trained depth or RGB run as the shipped pretrained model, evaluate it, and write its model card.

  python -m experiments.package_pretrained --workdir=runs/pretrained_depth [--checkpoint=W/checkpoints/ckpt-N] \
      --name=depth [--frontal_frames_per_subject=0] [--card=docs/model_card_depth.md]
  python -m experiments.package_pretrained --workdir=runs/rgb_t1_full_small --name=rgb \
      --card=docs/model_card_rgb.md [--data_dir=D]

The run's kind comes from W/run_kind.txt (``hsr_tf.train.run_kind``); --name=depth / --name=rgb must name a run of
that kind. An RGB run (``experiments.rgb_synth``: phases in W/phase1..3, the final network published to
W/checkpoints) is packaged by experiments/_package_rgb.py: the same files (plus run_kind.txt), reference.npz with
uint8 images and their camera / root depth / bone scale, and card.json with the held-out RGB evaluation (mesh,
aligned mesh and pose errors, PCK / AUC, 2D px, the mean-pose baseline) over the run's whole test split; no
frontal set. The rest of this docstring describes a depth run.

Writes hsr_tf/assets/pretrained/<name>/ (see hsr_tf/pretrained.py for its files): the run's model_config.json,
the checkpoint's model variables only (no optimizer slots: a third of a training checkpoint), data_info.json and
training_data.json from the run's --data_dir, reference.npz (the first --reference_frames test frames and the
packaged model's outputs on them), and card.json with:

* held-out errors on the DEFAULT views: every frame of the run's test split (its held-out subjects, the renderer's
  default viewpoints, the set's noise) -- the figure the run's own evaluations report;
* held-out errors on FRONTAL views: the same subjects and poses rendered with frontal viewpoints
  (``experiments.heldout``; --frontal_frames_per_subject, 0 = all of them);
* the run's held-out curve (TensorBoard eval scalars, when the workdir has them) and the training wall time
  (sum of the gaps under 15 min between consecutive training summaries: pauses between sessions excluded).

Then writes the card (Markdown, --card) and its curve PNG beside it, from card.json alone, so rerunning this one
command after more training refreshes every figure of the card. The package is written to a temporary directory
and swapped in at the end: an interrupted run leaves the previous package intact.

Legend: F frames, N points, V vertices, J joints.
"""
import json
import os
import re
import shutil
import time

import numpy as np
from absl import app, flags, logging

from experiments import common, heldout, model_card  # model_card defines --card and --name

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to package (default: the newest in WORKDIR/checkpoints).")
flags.DEFINE_string("out_root", None, "Directory receiving <name>/ (default: the package's hsr_tf/assets/pretrained).")
flags.DEFINE_integer("reference_frames", 4, "Test frames stored with their outputs in reference.npz.")
flags.DEFINE_integer("frontal_frames_per_subject", 0, "Frontal held-out frames per test subject (0 = every pose and "
                     "view of the test split).")
flags.DEFINE_integer("render_workers", 2, "Processes rendering the frontal frames.")
flags.DEFINE_string("card_note", None, "Text for the card's 'What limited it' section (kept in card.json).")
flags.DEFINE_string("scratch_dir", None, "Where the frontal frames are rendered (default WORKDIR/package_eval; give "
                    "another directory to leave a running training's workdir untouched).")
flags.DEFINE_string("prior_curve", None, "JSON {metric: [[step, mm], ...], 'source': text} of held-out evaluations of "
                    "the same run that its workdir no longer holds (e.g. before a resume); merged into the curve, the "
                    "workdir's own evaluations winning at equal steps.")
flags.DEFINE_float("session_gap_min", 15.0, "Gaps between training summaries longer than this are pauses, not "
                   "training time.")
flags.DEFINE_integer("max_package_mb", 25, "Refuse to package a model whose files exceed this size.")

METRIC_KEYS = ("mean_joint_error_mm", "model_joint_error_mm", "shape_error_mm", "aligned_shape_error_mm",
               "rest_shape_error_mm", "point_cloud_error_mm", "num_frames")


def read_scalars(logdir: str) -> dict:
    """{tag: [(step, wall_time, value)]} of the TF2 scalar summaries in ``logdir`` (empty when there is none)."""
    if not os.path.isdir(logdir):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("tensors", []):
        rows = []
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            if value.size == 1 and value.dtype.kind in "fiu":  # scalars, not text summaries
                rows.append((int(e.step), float(e.wall_time), float(value.reshape(()))))
        if rows:
            out[tag] = sorted(rows)
    for tag in acc.Tags().get("scalars", []):
        out.setdefault(tag, sorted((int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag)))
    return out


def summary_dir(workdir: str, which: str) -> str:
    """``workdir/<which>`` (current layout) or ``workdir/tb/<which>`` (runs written before the move)."""
    for path in (os.path.join(workdir, which), os.path.join(workdir, "tb", which)):
        if os.path.isdir(path) and any(n.startswith("events.") for n in os.listdir(path)):
            return path
    return os.path.join(workdir, which)


def training_wall_time(train_scalars: dict, gap_s: float) -> dict:
    """Active training time from the wall times of the training summaries: the sum of consecutive gaps < gap_s."""
    times = sorted({t for rows in train_scalars.values() for _, t, _ in rows})
    if len(times) < 2:
        return {"active_hours": None, "first_to_last_hours": None, "pauses": 0}
    gaps = np.diff(times)
    return {"active_hours": float(gaps[gaps < gap_s].sum() / 3600), "first_to_last_hours": (times[-1] - times[0]) / 3600,
            "pauses": int((gaps >= gap_s).sum())}


def held_out_curve(eval_scalars: dict, keys=("mean_joint_error_mm", "model_joint_error_mm",
                                             "aligned_shape_error_mm", "shape_error_mm")) -> dict:
    """{metric: [[step, value], ...]} of the run's held-out evaluations during training (the ``keys`` metrics)."""
    out = {}
    for key in keys:
        rows = eval_scalars.get(f"metrics/{key}")
        if rows:
            out[key] = [[s, v] for s, _, v in rows]
    return out


def write_reference(model, data_dir: str, n: int, path: str) -> None:
    """reference.npz: the first ``n`` test frames (normalised points, centre, scale) and the model's outputs."""
    from hsr_tf import pretrained
    from hsr_tf.train import pipeline

    batch = pipeline.take_batch(pipeline.eval_dataset(data_dir, n, include_vertices=False))
    out = model(batch["points"], training=False)
    arrays = {"points": batch["points"].numpy(), "center": batch["center"].numpy(),
              "scale": np.reshape(batch["scale"].numpy(), [-1])}
    arrays.update({k: out[k].numpy() for k in pretrained.REFERENCE_KEYS})
    np.savez_compressed(path, **arrays)


def dir_size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6


def check_name_kind(name: str, kind: str, workdir: str) -> None:
    """Refuse packaging a run under a shipped name of the other kind (a depth run as 'rgb', an RGB run as 'depth')."""
    from hsr_tf import pretrained

    expected = pretrained.NAME_KINDS.get(name)
    if expected is not None and expected != kind:
        raise ValueError(f"--name={name}: expected {pretrained.ARTICLED[expected]} run to package under that name, "
                         f"found {pretrained.ARTICLED[kind]} run in {workdir} (its run_kind.txt)")


def stage(workdir: str, model, step: int, docs: dict, kind: str) -> tuple:
    """A fresh ``<root>/<name>.tmp`` with the run's model_config.json, the weights (variables only), the JSON
    ``docs`` ({file: dict}) and, for RGB, run_kind.txt. Returns (tmp, final)."""
    from hsr_tf import pretrained
    from hsr_tf.train import loop, run_kind

    root = FLAGS.out_root or pretrained.ASSET_ROOT
    final = os.path.join(root, FLAGS.name)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(os.path.join(workdir, loop.MODEL_CONFIG_FILE), os.path.join(tmp, loop.MODEL_CONFIG_FILE))
    pretrained.write_weights(model, tmp, step)
    if kind != "depth":
        run_kind.write_run_kind(tmp, kind)
    for name, doc in docs.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    return tmp, final


def run_text(workdir: str) -> dict:
    """The run's recorded flags (flags.txt lines) and last command (command.txt)."""
    flags_txt = os.path.join(workdir, "flags.txt")
    command_txt = os.path.join(workdir, "command.txt")
    return {"flags": open(flags_txt).read().splitlines() if os.path.exists(flags_txt) else None,
            "command": open(command_txt).read().strip().splitlines()[-1] if os.path.exists(command_txt) else None}


def finish(tmp: str, final: str, card: dict, summary: dict) -> None:
    """Size check, card.json, swap ``tmp`` in for ``final``, the Markdown card (--card), the printed summary."""
    card["package_mb"] = round(dir_size_mb(tmp), 2)
    if card["package_mb"] > FLAGS.max_package_mb:
        raise RuntimeError(f"{tmp}: expected a package under {FLAGS.max_package_mb} MB, found {card['package_mb']} MB")
    with open(os.path.join(tmp, "card.json"), "w") as f:
        json.dump(card, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    logging.info("Packaged %s (step %d) -> %s (%.1f MB)", card["source_checkpoint"], card["step"], final,
                 card["package_mb"])
    if model_card.card_file():
        model_card.write(card, model_card.card_file())
        logging.info("Model card: %s", model_card.card_file())
    print(json.dumps({"package": final, "step": card["step"], "package_mb": card["package_mb"]} | summary, indent=1))


def package_rgb(workdir: str, data_dir: str, t_start: float) -> None:
    """Package an RGB run (experiments/_package_rgb.py): the published final network, evaluated on the test split."""
    from experiments import _package_rgb
    from hsr_tf.train import loop

    settings = _package_rgb.run_settings(workdir)
    model, ckpt, step = _package_rgb.load_final(workdir, FLAGS.checkpoint)
    manifest = _package_rgb.training_manifest(data_dir)
    docs = {"data_info.json": _package_rgb.data_info(data_dir, model, settings)}
    if manifest is not None:
        docs["training_data.json"] = manifest
    tmp, final = stage(workdir, model, step, docs, "rgb")
    _package_rgb.write_reference(model, data_dir, settings, FLAGS.reference_frames, os.path.join(tmp, "reference.npz"))
    packaged, _ = loop.load_model_from_workdir(tmp, os.path.join(tmp, f"ckpt-{step}"))
    t0 = time.time()
    results = {"default": _package_rgb.evaluate(packaged, data_dir, settings)}
    eval_s = time.time() - t0
    logging.info("Held-out: %s", {k: round(v, 2) for k, v in results["default"].items() if isinstance(v, float)})
    train_scalars = {}
    for d in _package_rgb.summary_dirs(workdir, loop.TRAIN_SUMMARY_SUBDIR):
        train_scalars.update({f"{d}:{k}": v for k, v in read_scalars(d).items()})
    eval_dirs = _package_rgb.summary_dirs(workdir, loop.EVAL_SUMMARY_SUBDIR)
    curve = held_out_curve(read_scalars(eval_dirs[-1]), _package_rgb.CURVE_KEYS) if eval_dirs else {}
    text = run_text(workdir)
    text["command"] = _package_rgb.portable_command(text["command"])
    published = os.path.dirname(os.path.abspath(ckpt)) == os.path.abspath(os.path.join(workdir, loop.CHECKPOINT_SUBDIR))
    # Paths relative to their git worktree: the card is committed.
    card = {"name": FLAGS.name, "source_workdir": _package_rgb.portable_path(workdir),
            "source_checkpoint": _package_rgb.portable_path(ckpt), "published": published,
            "step": step, **text, "data_dir": _package_rgb.portable_path(data_dir),
            **_package_rgb.card_fields(workdir, data_dir, model, manifest, settings),
            "test_frames": int(results["default"]["num_frames"]),
            "num_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "wall_time": training_wall_time(train_scalars, 60 * FLAGS.session_gap_min), "curve": curve,
            "curve_prior": None, "heldout": results, "package_mb": None,
            "packaged_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "package_command": _package_rgb.portable_command(common.command_line()), "note": FLAGS.card_note}
    if card["batch_size"]:
        card["samples_seen"] = {p: n * card["batch_size"] for p, n in card["phase_steps"].items() if n}
    finish(tmp, final, card, {"evaluate_s": round(eval_s, 1), "total_s": round(time.time() - t_start, 1),
                              "default": {k: round(v, 2) for k, v in results["default"].items()
                                          if isinstance(v, float)}})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir: expected the run directory to package, found none")
    from hsr_tf.train import run_kind  # no TensorFlow yet: the depth frames are rendered in forked workers first

    t_start = time.time()
    workdir = FLAGS.workdir
    kind = run_kind.read_run_kind(workdir)
    check_name_kind(FLAGS.name, kind, workdir)
    data_dir = common.resolve_data_dir(workdir)
    if kind == "rgb":
        package_rgb(workdir, data_dir, t_start)
        return
    manifest_path = os.path.join(data_dir, "manifest.json")
    config = heldout.read_manifest_file(manifest_path)
    scratch = FLAGS.scratch_dir or os.path.join(workdir, "package_eval")
    frontal_dir = os.path.join(scratch, "frontal")
    # Rendering first, in forked workers, before TensorFlow starts its threads.
    slots = heldout.heldout_slots(config, FLAGS.frontal_frames_per_subject)
    rendered = heldout.render_heldout(frontal_dir, heldout.with_views(config, "frontal"), slots,
                                      num_workers=FLAGS.render_workers)
    logging.info("Frontal held-out frames: %s", rendered)

    from hsr_tf.data import reader as reader_lib
    from hsr_tf.train import loop, pipeline

    info = pipeline.read_data_info(data_dir, "train")
    model, ckpt = loop.load_model_from_workdir(workdir, FLAGS.checkpoint,
                                               example_points_shape=(1, info["num_points"], 3))
    m = re.search(r"ckpt-(\d+)$", ckpt)
    if m is None:
        raise ValueError(f"--checkpoint: expected a prefix ending in ckpt-<step>, found {ckpt}")
    step = int(m.group(1))
    tmp, final = stage(workdir, model, step, {"data_info.json": info, "training_data.json": config.to_json_dict()},
                       "depth")
    write_reference(model, data_dir, FLAGS.reference_frames, os.path.join(tmp, "reference.npz"))
    # The packaged files, loaded as a user loads them, give the evaluated numbers (not the run's model object).
    packaged, _ = loop.load_model_from_workdir(tmp, os.path.join(tmp, f"ckpt-{step}"))
    results = {}
    t0 = time.time()
    for view, d in (("default", data_dir), ("frontal", frontal_dir)):
        res = heldout.evaluate_dir(packaged, d, config)
        results[view] = {k: float(res[k]) for k in METRIC_KEYS if k in res}
        results[view]["fraction_good_frames"] = {f"{t:g}": float(f) for t, f in
                                                 zip(res["thresholds_mm"], res["fraction_good_frames"])}
        logging.info("%s views: %s", view, {k: round(v, 2) for k, v in results[view].items() if k in METRIC_KEYS})
    eval_s = time.time() - t0
    train_scalars = read_scalars(summary_dir(workdir, loop.TRAIN_SUMMARY_SUBDIR))
    card = {
        "name": FLAGS.name, "kind": "depth", "source_workdir": os.path.abspath(workdir),
        "source_checkpoint": os.path.abspath(ckpt), "step": step,
        "batch_size": int(common.workdir_flag(workdir, "batch_size") or 0) or None, **run_text(workdir),
        "data_dir": data_dir, "training_data": {k: v for k, v in config.to_json_dict().items() if k != "frame"},
        "view": config.to_json_dict()["frame"]["view"], "noise": config.frame.noise,
        "heldout_subjects": heldout.test_subjects(config),
        "train_frames": reader_lib.count_frames(data_dir, "train"), "test_frames": int(results["default"]["num_frames"]),
        "frontal_skipped": rendered["skipped"], "num_parameters": int(sum(np.prod(v.shape) for v in
                                                                          model.trainable_variables)),
        "wall_time": training_wall_time(train_scalars, 60 * FLAGS.session_gap_min),
        "curve": held_out_curve(read_scalars(summary_dir(workdir, loop.EVAL_SUMMARY_SUBDIR))), "curve_prior": None,
        "heldout": results, "package_mb": None, "packaged_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "package_command": common.command_line(), "note": FLAGS.card_note,
    }
    if FLAGS.prior_curve:
        prior, source = model_card.read_prior_curve(FLAGS.prior_curve)
        card["curve"] = model_card.merge_curves(prior, card["curve"])
        card["curve_prior"] = {"file": FLAGS.prior_curve, "source": source}
    if card["batch_size"]:
        card["samples_seen"] = step * card["batch_size"]
    finish(tmp, final, card, {"evaluate_s": round(eval_s, 1), "total_s": round(time.time() - t_start, 1)} |
           {v: {k: round(x, 2) for k, x in r.items() if k in METRIC_KEYS} for v, r in results.items()})


if __name__ == "__main__":
    app.run(main)
