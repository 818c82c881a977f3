"""Rendering the synthetic RGB set for the RGB programs: the --synth_* RGB flags and an empty --data_dir filled.

Re-exported by ``experiments.rgb_common`` (``rgb_common.ensure_rgb_data``, ``rgb_common.rgb_dataset_config``);
the view flags (--synth_cone_deg, ...) and --synth_num_subjects etc. are the depth programs' (experiments.common).
"""
from __future__ import annotations

import dataclasses
import os
import time

from absl import flags, logging

from experiments import common  # the shared --synth_* flags, --render_if_empty, --progress

FLAGS = flags.FLAGS

flags.DEFINE_integer("synth_image_size", 256, "Rendering: side of the stored RGB crop (px).")
flags.DEFINE_string("synth_skin_tones", "all", "Rendering: skin tones, e.g. '0,1,2' (data_prep.synth_rgb).")
flags.DEFINE_string("synth_lighting", "all", "Rendering: lighting set-ups, e.g. '0-19' (data_prep.synth_rgb).")
flags.DEFINE_float("synth_test_fraction", 0.1, "Rendering: fraction of subjects held out (test split).")
flags.DEFINE_integer("synth_frames_per_shard", 256, "Rendering: frames per shard.")


def rgb_dataset_config():
    """The RGBDatasetConfig of data_prep.synth_rgb for the --synth_* flags."""
    from data_prep.synth_rgb import appearance, dataset, raster

    view = common.synth_dataset_config().frame.view  # the depth set's viewpoints for the --synth_* view flags
    frame = dataclasses.replace(
        raster.RGBFrameConfig(), view=view, image_size=FLAGS.synth_image_size, depth_noise=FLAGS.synth_noise,
        skin_tones=tuple(appearance.parse_index_list(FLAGS.synth_skin_tones, appearance.NUM_SKIN_TONES,
                                                     "--synth_skin_tones")),
        lighting=tuple(appearance.parse_index_list(FLAGS.synth_lighting, appearance.NUM_LIGHTING,
                                                   "--synth_lighting")))
    return dataset.RGBDatasetConfig(num_subjects=FLAGS.synth_num_subjects,
                                    poses_per_subject=FLAGS.synth_poses_per_subject,
                                    views_per_pose=FLAGS.synth_views_per_pose, seed=FLAGS.synth_seed,
                                    test_fraction=FLAGS.synth_test_fraction,
                                    frames_per_shard=FLAGS.synth_frames_per_shard, frame=frame)


def ensure_rgb_data(data_dir: str) -> None:
    """Make sure ``data_dir`` holds a whole RGB set before training.

    Shards without a manifest (converted elsewhere: STB, RHD) are used as they are. A directory rendered by
    ``data_prep.synth_rgb`` with the --synth_* configuration is completed when a render was interrupted (the
    renderer skips finished shards); one rendered with another configuration raises (the renderer's manifest
    check names the differing settings). An empty directory is rendered (--render_if_empty).
    """
    from data_prep.synth_rgb import dataset
    from hsr_tf.data import rgb_shards

    manifest = os.path.join(data_dir, dataset.MANIFEST)
    has = os.path.isdir(data_dir) and bool(rgb_shards.list_rgb_shards(data_dir, "train")) and \
        bool(rgb_shards.list_rgb_shards(data_dir, "test"))
    if has and not os.path.exists(manifest):
        return
    if not has and not os.path.exists(manifest) and not FLAGS.render_if_empty:
        raise FileNotFoundError(f"{data_dir}: expected train-*.h5 and test-*.h5 RGB shards, found none (render "
                                "them with python -m data_prep.synth_rgb or pass --render_if_empty)")
    config = rgb_dataset_config()
    t0 = time.time()
    summary = dataset.generate(data_dir, config, num_workers=FLAGS.synth_workers, progress=FLAGS.progress,
                               log=logging.info)
    if summary["frames"]:
        logging.info("Rendering %s took %.1f s", data_dir, time.time() - t0)
