"""NYU-format conversion rate vs PNG decode rate, in one run.

    python -m benchmarks.data_prep [--frames=256] [--num_workers=N] [--raw_dir=R]

Writes ``--frames`` NYU-format frames (rendered hands, tests/fixtures_raw.py; or uses an existing NYU-format
``--raw_dir`` with a ``test/`` split), then measures on the same files:

* decode: ``data_prep.nyu.decode_depth_png`` of every PNG, spread over the same number of worker processes;
* convert: the whole ``data_prep.nyu.convert`` (listing + .mat + decode + crop + sample + normalise + shard write)
  into a fresh directory with ``--num_workers`` processes.

Prints frames/s of both and their ratio (goal: conversion within 2x of decoding).

STB (``--stb_frames`` > 0): writes an STB-format tree (B1Counting, 640x480 colour + depth PNGs rendered by
tests/fixtures_rgb_raw.py, a few distinct frames repeated), then on the same files: decode of every colour and
depth PNG (``data_prep.stb.read_colour`` + ``decode_depth``) vs the whole ``data_prep.stb.convert`` (labels +
decode + depth warp into the colour camera + crop + mask + RGB shard write), same worker count.

Synthetic RGB (``--rgb_poses`` > 0): renders the same frames (``--rgb_subjects`` subjects x ``--rgb_poses`` poses
x 1 view, same seed, hence the same subjects, poses and viewpoints) with ``data_prep.synth`` (depth maps, the
peer) and with ``data_prep.synth_rgb`` (shaded ``--rgb_image_size`` crops + mask + crop depth), same worker
count, and prints both rates and their ratio; then reads the RGB set back through ``hsr_tf.data.rgb_reader``
(background compositing, crop and colour jitter, heat-maps; batch 32) at ``--rgb_image_size`` (the paper's
network input) and at the CPU-sized network's 64 px (experiments/flags/rgb_cpu_small.flags: heat-maps 16 x 16,
sigma 1 px), and times one phase-3 training step of that CPU-sized network (RGBMeshNet 'mesh', L_fully, RMSprop,
batch 32, on a reader batch) in the same process: it prints reader frames/s over training samples/s (wall clock,
each alone on the machine's cores) and the same ratio in CPU time (process CPU seconds per training sample over
per reader frame: the share of the cores the reader takes from training when both run together, and far less
sensitive to other processes' load than the wall clock).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("frames", 256, "frames to write and convert (ignored with --raw_dir)")
flags.DEFINE_integer("num_workers", None, "processes for both measurements (default: all cores)")
flags.DEFINE_string("raw_dir", None, "an existing NYU-format root to use instead of rendering fixtures")
flags.DEFINE_integer("shard_size", 64, "frames per shard")
flags.DEFINE_integer("repeats", 2, "best of N timings of each")
flags.DEFINE_integer("stb_frames", 64, "STB-format frames for the STB conversion rate (0: skip it)")
flags.DEFINE_integer("rgb_poses", 24, "poses per subject of the synthetic RGB vs depth render rate (0: skip it)")
flags.DEFINE_integer("rgb_subjects", 4, "subjects of the synthetic RGB vs depth render rate")
flags.DEFINE_integer("rgb_image_size", 256, "crop size S of the synthetic RGB render")
flags.DEFINE_integer("rgb_reader_batches", 8, "timed RGB reader batches (of 32) per image size")
flags.DEFINE_integer("rgb_train_steps", 3, "timed training steps of the CPU-sized RGB network (best of)")

BATCH = 32


def _decode_chunk(paths):
    from data_prep import nyu

    for p in paths:
        nyu.decode_depth_png(p)
    return len(paths)


def _decode_stb_chunk(pairs):
    from data_prep import stb

    for colour, depth in pairs:
        stb.read_colour(colour)
        stb.decode_depth(depth)
    return len(pairs)


def _decode_vs_convert(items, decode_chunk, convert, out_dir, workers):
    """Best-of-``--repeats`` seconds of decoding ``items`` (spread over ``workers`` processes with
    ``decode_chunk``) and of ``convert(out_dir)`` into a fresh directory; returns (decode_s, convert_s, result)."""
    n = len(items)
    chunks = [items[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("fork")
    decode_s, convert_s, res = [], [], None
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        if workers > 1:
            with ctx.Pool(workers) as pool:
                assert sum(pool.map(decode_chunk, chunks)) == n
        else:
            decode_chunk(items)
        decode_s.append(time.perf_counter() - t0)
        shutil.rmtree(out_dir, ignore_errors=True)
        t0 = time.perf_counter()
        res = convert(out_dir)
        convert_s.append(time.perf_counter() - t0)
    return min(decode_s), min(convert_s), res


def _stb_rate(tmp, workers):
    """STB conversion vs decoding the same PNGs alone (frames/s); see the module docstring."""
    from data_prep import stb

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import fixtures_rgb_raw

    raw = os.path.join(tmp, "stb_raw")
    t0 = time.perf_counter()
    fixtures_rgb_raw.write_stb(raw, frames_per_sequence=FLAGS.stb_frames, unique=4, seed=0)
    print(f"wrote {FLAGS.stb_frames} STB-format frames per sequence in {time.perf_counter() - t0:.1f} s")
    tasks = stb.list_frames(raw, ["B1Counting"])["test"]
    pairs = [t.source[1:3] for t in tasks]
    n = len(pairs)
    d, c, res = _decode_vs_convert(
        pairs, _decode_stb_chunk,
        lambda out: stb.convert(raw, out, sequences=["B1Counting"], shard_size=max(1, n // workers),
                                num_workers=workers, progress=False), os.path.join(tmp, "stb_out"), workers)
    report = {"stb_frames": n, "workers": workers, "written": res["test"]["frames"], "decode_fps": n / d,
              "convert_fps": n / c, "convert_over_decode_time": c / d}
    print(json.dumps(report, indent=2))
    print(f"STB PNG decode (colour + depth): {n / d:.1f} frames/s; full conversion: {n / c:.1f} frames/s; "
          f"conversion takes {c / d:.2f}x the decode time ({workers} workers)")


def _rgb_rate(tmp, workers):
    """Synthetic RGB render vs depth render of the same frames, then the RGB reader's rate; see the docstring."""
    import dataclasses

    from data_prep.synth import render as depth_render
    from data_prep.synth_rgb import dataset as rgb_dataset
    from hsr_tf.data import rgb_reader

    common = dict(num_subjects=FLAGS.rgb_subjects, poses_per_subject=FLAGS.rgb_poses, views_per_pose=1, seed=0,
                  frames_per_shard=max(1, FLAGS.rgb_poses // 2))
    depth_cfg = depth_render.DatasetConfig(**common)
    base = rgb_dataset.RGBDatasetConfig().frame
    rgb_cfg = rgb_dataset.RGBDatasetConfig(**common, frame=dataclasses.replace(base, image_size=FLAGS.rgb_image_size))
    quiet = lambda *a, **k: None  # noqa: E731
    depth = depth_render.generate(os.path.join(tmp, "synth_depth"), depth_cfg, num_workers=workers, progress=False,
                                  log=quiet)
    rgb = rgb_dataset.generate(os.path.join(tmp, "synth_rgb"), rgb_cfg, num_workers=workers, progress=False,
                               log=quiet)
    frames = depth["frames"]
    assert rgb["frames"] == frames, (rgb["frames"], frames)
    depth_fps = frames / depth["seconds"]
    rgb_fps = frames / rgb["seconds"]
    from benchmarks._inference_rgb import CPU_NETWORK  # the network of experiments/flags/rgb_cpu_small.flags

    data = os.path.join(tmp, "synth_rgb")
    reader_fps, reader_cpu_ms, _ = _reader_rate(data, FLAGS.rgb_image_size)
    cpu_size = CPU_NETWORK["image_size"]
    small_fps, small_cpu_ms, batch = _reader_rate(data, cpu_size)
    train_sps, train_cpu_ms = _train_rate(batch)
    report = {"synth_frames": frames, "workers": workers, "image_size": FLAGS.rgb_image_size,
              "depth_render_fps": depth_fps, "rgb_render_fps": rgb_fps, "rgb_over_depth_time": depth_fps / rgb_fps,
              "rgb_reader_fps": reader_fps, "rgb_reader_cpu_ms_per_frame": reader_cpu_ms,
              "cpu_net_image_size": cpu_size, "rgb_reader_fps_cpu_net": small_fps,
              "rgb_reader_cpu_ms_per_frame_cpu_net": small_cpu_ms, "cpu_net_train_samples_per_s": train_sps,
              "cpu_net_train_cpu_ms_per_sample": train_cpu_ms, "reader_over_train_wall": small_fps / train_sps,
              "reader_over_train_cpu": train_cpu_ms / small_cpu_ms, "load_avg_1min": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))
    print(f"synthetic render of the same {frames} frames: depth {depth_fps:.1f} frames/s, RGB "
          f"{rgb_fps:.1f} frames/s (RGB takes {depth_fps / rgb_fps:.2f}x the depth time, {workers} workers); "
          f"RGB reader with augmentation: {reader_fps:.0f} frames/s at {FLAGS.rgb_image_size} px "
          f"({reader_cpu_ms:.1f} CPU ms a frame)")
    print(f"CPU-sized network ({cpu_size} px, batch {BATCH}): reader {small_fps:.0f} frames/s vs phase-3 training "
          f"{train_sps:.1f} samples/s: ratio {small_fps / train_sps:.1f} (wall), {train_cpu_ms / small_cpu_ms:.1f} "
          f"(CPU: {train_cpu_ms:.1f} ms a sample to train, {small_cpu_ms:.2f} ms a frame to read); load average "
          f"{os.getloadavg()[0]:.1f}")


def _reader_rate(data, size):
    """(frames/s wall, process CPU ms per frame, one batch) of the augmented RGB reader at ``size`` px, batch
    BATCH, heat-maps at size / 4 with sigma 4 size / 256 (experiments.rgb_common), after a warm-up batch."""
    from hsr_tf.data import rgb_reader

    ds = rgb_reader.make_rgb_dataset(data, "train", BATCH, image_size=size, augment=True, seed=0,
                                     drop_remainder=False, repeat=True, heatmap_size=size // 4,
                                     heatmap_sigma=4.0 * size / 256)
    it = iter(ds)
    batch = next(it)  # warm-up: tracing, shard open
    n_frames, t0, c0 = 0, time.perf_counter(), time.process_time()
    for _ in range(FLAGS.rgb_reader_batches):
        n_frames += int(next(it)["image"].shape[0])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del it  # stops the prefetching threads before anything else is timed
    return n_frames / wall, 1e3 * cpu / n_frames, batch


def _train_rate(batch):
    """(samples/s wall, process CPU ms per sample) of a phase-3 step (L_fully, RMSprop, the pose regressor
    frozen, as experiments.rgb_common) of the CPU-sized RGBMeshNet on one reader batch (best of the timed steps)."""
    import keras
    import tensorflow as tf

    from benchmarks._inference_rgb import CPU_NETWORK
    from hsr_tf import losses_rgb
    from hsr_tf.models.rgb_mesh_net import RGBMeshNet

    keras.utils.set_random_seed(0)
    net = RGBMeshNet("mesh", **CPU_NETWORK)
    size = net.image_size
    net(net.example_input(1))
    frozen = {id(v) for v in net.pose_regressor.trainable_variables}
    variables = [v for v in net.trainable_variables if id(v) not in frozen]
    opt = keras.optimizers.RMSprop(1e-4)
    cfg = losses_rgb.RGBLossConfig()

    @tf.function
    def step(b):
        with tf.GradientTape() as tape:
            total, _ = losses_rgb.fully_supervised_loss(b, net(b, training=True), net.faces, cfg, size)
        opt.apply_gradients(zip(tape.gradient(total, variables), variables))
        return total

    step(batch).numpy()  # tracing
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(FLAGS.rgb_train_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(batch).numpy()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    n = int(batch["image"].shape[0])
    return n / best_wall, 1e3 * best_cpu / n


def main(argv):
    del argv
    from data_prep import nyu

    workers = FLAGS.num_workers or os.cpu_count()
    tmp = tempfile.mkdtemp(prefix="bench_data_prep_")
    try:
        raw = FLAGS.raw_dir
        if raw is None:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
            import fixtures_raw

            raw = os.path.join(tmp, "raw")
            t0 = time.perf_counter()
            fixtures_raw.write_nyu(raw, {"test": FLAGS.frames}, seed=0)
            print(f"wrote {FLAGS.frames} NYU-format frames in {time.perf_counter() - t0:.1f} s")
        tasks = nyu.list_frames(raw, "test")
        paths = [t.name for t in tasks]
        n = len(paths)
        d, c, res = _decode_vs_convert(
            paths, _decode_chunk,
            lambda out: nyu.convert(raw, out, splits=("test",), shard_size=FLAGS.shard_size, num_workers=workers,
                                    progress=False), os.path.join(tmp, "out"), workers)
        report = {"frames": n, "workers": workers, "written": res["test"]["frames"],
                  "skipped": len(res["test"]["skipped"]), "decode_fps": n / d, "convert_fps": n / c,
                  "convert_over_decode_time": c / d}
        print(json.dumps(report, indent=2))
        print(f"NYU PNG decode: {n / d:.1f} frames/s; full conversion: {n / c:.1f} frames/s; "
              f"conversion takes {c / d:.2f}x the decode time ({workers} workers)")
        if FLAGS.stb_frames > 0:
            _stb_rate(tmp, workers)
        if FLAGS.rgb_poses > 0:
            _rgb_rate(tmp, workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
