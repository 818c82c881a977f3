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
(background compositing, crop and colour jitter, heat-maps; batch 32) and prints its frames/s.
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
    chunks = [pairs[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("fork")
    decode_s, convert_s = [], []
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        if workers > 1:
            with ctx.Pool(workers) as pool:
                assert sum(pool.map(_decode_stb_chunk, chunks)) == n
        else:
            _decode_stb_chunk(pairs)
        decode_s.append(time.perf_counter() - t0)
        out = os.path.join(tmp, "stb_out")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = stb.convert(raw, out, sequences=["B1Counting"], shard_size=max(1, n // workers), num_workers=workers,
                          progress=False)
        convert_s.append(time.perf_counter() - t0)
    d, c = min(decode_s), min(convert_s)
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
    ds = rgb_reader.make_rgb_dataset(os.path.join(tmp, "synth_rgb"), "train", 32, image_size=FLAGS.rgb_image_size,
                                     augment=True, seed=0, drop_remainder=False, repeat=True)
    it = iter(ds)
    next(it)  # warm-up: tracing, shard open
    n_batches, n_frames, t0 = 0, 0, time.perf_counter()
    while n_batches < 8:
        n_frames += int(next(it)["image"].shape[0])
        n_batches += 1
    reader_fps = n_frames / (time.perf_counter() - t0)
    report = {"synth_frames": frames, "workers": workers, "image_size": FLAGS.rgb_image_size,
              "depth_render_fps": depth_fps, "rgb_render_fps": rgb_fps, "rgb_over_depth_time": depth_fps / rgb_fps,
              "rgb_reader_fps": reader_fps}
    print(json.dumps(report, indent=2))
    print(f"synthetic render of the same {frames} frames: depth {depth_fps:.1f} frames/s, RGB "
          f"{rgb_fps:.1f} frames/s (RGB takes {depth_fps / rgb_fps:.2f}x the depth time, {workers} workers); "
          f"RGB reader with augmentation: {reader_fps:.0f} frames/s")


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
        chunks = [paths[i::workers] for i in range(workers)]
        decode_s, convert_s = [], []
        ctx = multiprocessing.get_context("fork")
        for _ in range(FLAGS.repeats):
            t0 = time.perf_counter()
            if workers > 1:
                with ctx.Pool(workers) as pool:
                    assert sum(pool.map(_decode_chunk, chunks)) == n
            else:
                _decode_chunk(paths)
            decode_s.append(time.perf_counter() - t0)
            out = os.path.join(tmp, "out")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            res = nyu.convert(raw, out, splits=("test",), shard_size=FLAGS.shard_size, num_workers=workers,
                              progress=False)
            convert_s.append(time.perf_counter() - t0)
        d, c = min(decode_s), min(convert_s)
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
