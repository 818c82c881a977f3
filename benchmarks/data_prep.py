"""NYU-format conversion rate vs PNG decode rate, in one run.

    python -m benchmarks.data_prep [--frames=256] [--num_workers=N] [--raw_dir=R]

Writes ``--frames`` NYU-format frames (rendered hands, tests/fixtures_raw.py; or uses an existing NYU-format
``--raw_dir`` with a ``test/`` split), then measures on the same files:

* decode: ``data_prep.nyu.decode_depth_png`` of every PNG, spread over the same number of worker processes;
* convert: the whole ``data_prep.nyu.convert`` (listing + .mat + decode + crop + sample + normalise + shard write)
  into a fresh directory with ``--num_workers`` processes.

Prints frames/s of both and their ratio (goal: conversion within 2x of decoding).
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


def _decode_chunk(paths):
    from data_prep import nyu

    for p in paths:
        nyu.decode_depth_png(p)
    return len(paths)


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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
