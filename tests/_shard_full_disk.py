"""Subprocess side of the full-disk shard tests: rewrite a shard under a file-size limit (RLIMIT_FSIZE), as a full
disk would fail the write, and report what the writer raised.

  python tests/_shard_full_disk.py depth|rgb PATH LIMIT_BYTES   -> prints 'ShardWriteError <errno> <message>'

Run in a subprocess because the limit applies to the whole process. Legend: F frames, P points, S image size.
"""
import os
import resource
import signal
import sys

import numpy as np


def depth_arrays(frames, points, seed):
    rng = np.random.default_rng(seed)
    return ({"points": rng.normal(size=(frames, points, 3)), "joints": rng.normal(size=(frames, 21, 3)) + [0, 0, 500],
             "center": rng.normal(size=(frames, 3)) + [0, 0, 500], "scale": np.full((frames,), 150.0)},
            {"dataset": "unit", "split": "train", "camera": {"fx": 588.0, "fy": 587.0, "cx": 320.0, "cy": 240.0,
                                                              "width": 640, "height": 480},
             "joint_names": [f"j{i}" for i in range(21)]})


def rgb_arrays(frames, size, seed):
    from hsr_tf.data import rgb_shards

    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 40, (frames, 21, 3)) + [0, 0, 500]
    cam = np.tile([[300.0, 310.0, size / 2, size / 2]], (frames, 1))
    return ({"image": rng.integers(0, 256, (frames, size, size, 3)), "mask": rng.integers(0, 256, (frames, size, size)),
             "depth": rng.integers(0, 2000, (frames, size, size)), "joints": joints,
             "joints_uv": rgb_shards.project(joints, cam), "camera": cam,
             "bone_scale": np.linalg.norm(joints[:, 9] - joints[:, 10], axis=-1), "root_depth": joints[:, 0, 2],
             "mirrored": np.zeros(frames, np.uint8), "frame_index": np.arange(frames)},
            {"dataset": "unit", "split": "train", "image_size": size, "joint_names": [f"j{i}" for i in range(21)]})


def write(kind, path, frames, seed):
    from hsr_tf.data import rgb_shards, shards

    if kind == "depth":
        arrays, attrs = depth_arrays(frames, 256, seed)
        shards.write_shard(path, arrays, attrs)
    else:
        arrays, attrs = rgb_arrays(frames, 32, seed)
        rgb_shards.write_rgb_shard(path, arrays, attrs)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hsr_tf.data.shards import ShardWriteError

    kind, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        write(kind, path, 40, seed=1)
    except ShardWriteError as e:
        print("ShardWriteError", e.errno, e)
        sys.exit(0)
    print("no error")
    sys.exit(3)
