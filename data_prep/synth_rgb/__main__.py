"""Render the synthetic RGB hand dataset into RGB shards (hsr_tf/data/rgb_shards.py).

  python -m data_prep.synth_rgb --out_dir=D --num_subjects=50 --poses_per_subject=1840 --views_per_pose=3 \
      --seed=0 --num_workers=0 --image_size=256

Same subjects, poses, viewpoints (same per-frame viewpoint as data_prep.synth with the same seed and counts)
and subject split as the depth set. Rendering: open3d ray casting + NumPy shading, 5 skin tones, 40 lighting
set-ups, adaptive 3x3 supersampling (data_prep/synth_rgb/raster.py, appearance.py). The hand is stored with
its coverage mask on black; the reader (hsr_tf.data.rgb_reader) composites backgrounds at training time.

Shifted domain (issue 13): --skin_tones=0,1,2 --lighting=0-19 --depth_noise=kinect renders only those
tones / set-ups with Kinect-like noisy reference depth. Rerunning into the same --out_dir resumes.
Look at the result: python -m data_prep.synth_rgb.contact_sheet --data_dir=D --out=sheet.png
"""
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Output directory for the shards (created).")
flags.DEFINE_integer("num_subjects", 50, "Number of procedural subjects.", lower_bound=1)
flags.DEFINE_integer("poses_per_subject", 1840, "Poses from the pose library applied to every subject.",
                     lower_bound=1)
flags.DEFINE_integer("views_per_pose", 3, "Random viewpoints per (subject, pose).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of subjects, poses, split, viewpoints and appearance.")
flags.DEFINE_integer("num_workers", 0, "Worker processes (0 = all cores).", lower_bound=0)
flags.DEFINE_enum("camera", "nyu", ["nyu", "icvl", "msra"], "Full-frame camera of the viewpoint sampler.")
flags.DEFINE_float("test_fraction", 0.1, "Fraction of subjects in the test split (no subject in both).")
flags.DEFINE_integer("frames_per_shard", 256, "Frame slots per shard.", lower_bound=1)
flags.DEFINE_integer("image_size", 256, "Side S of the stored square crop (px).", lower_bound=8)
flags.DEFINE_float("crop_margin", 0.25, "Crop margin per side, as a fraction of the joint box's longer side.")
flags.DEFINE_integer("supersample", 3, "Odd supersampling factor at silhouettes (k x k rays per pixel).")
flags.DEFINE_string("skin_tones", "all", "Skin tones to draw from, e.g. '0,1,2' or '0-4' (5 tones, light->dark).")
flags.DEFINE_string("lighting", "all", "Lighting set-ups to draw from, e.g. '0-19' (40 set-ups; see "
                    "data_prep/synth_rgb/appearance.py for the groups).")
flags.DEFINE_enum("depth_noise", "none", ["none", "kinect"], "Noise of the stored reference depth.")
flags.DEFINE_float("image_noise", 0.0, "Gaussian camera noise on the hand (std, 8-bit levels).")
flags.DEFINE_float("blur_prob", 0.0, "Probability of a Gaussian blur of image and mask per frame.")
flags.DEFINE_float("blur_sigma_max", 1.5, "Largest blur sigma (px).")
flags.DEFINE_string("background_dir", None, "Folder of JPG/PNG background images (e.g. a copy of COCO). The "
                    "renderer stores no background; the folder is checked and recorded in every shard "
                    "(attribute background_dir), and the reader composites its images when it is given no "
                    "background_dir of its own and the folder exists.")
flags.DEFINE_float("distance_min", 300.0, "Nearest hand-centroid depth, mm.")
flags.DEFINE_float("distance_max", 700.0, "Farthest hand-centroid depth, mm.")
flags.DEFINE_float("cone_deg", 70.0, "Palm (or back) normal within this angle of facing the camera.")
flags.DEFINE_float("back_prob", 0.5, "Probability that the back of the hand faces the camera.")
flags.DEFINE_float("inplane_deg", 180.0, "In-plane (roll) rotation range +-deg.")
flags.DEFINE_float("center_region", 0.5, "Hand centroid projects into this central fraction of the image.")
flags.DEFINE_bool("require_in_view", True, "Redraw viewpoints until every vertex projects inside the image.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flag_as_required("out_dir")


def config_from_flags():
    from data_prep.synth import render as depth_render
    from data_prep.synth_rgb import appearance, dataset, raster
    from hsr_tf.geometry.camera import Camera

    view = depth_render.ViewConfig(distance_mm=(FLAGS.distance_min, FLAGS.distance_max), cone_deg=FLAGS.cone_deg,
                                   back_prob=FLAGS.back_prob, inplane_deg=FLAGS.inplane_deg,
                                   center_region=FLAGS.center_region, require_in_view=FLAGS.require_in_view)
    frame = raster.RGBFrameConfig(
        camera=Camera.preset(FLAGS.camera), view=view, image_size=FLAGS.image_size, crop_margin=FLAGS.crop_margin,
        supersample=FLAGS.supersample,
        skin_tones=tuple(appearance.parse_index_list(FLAGS.skin_tones, appearance.NUM_SKIN_TONES, "--skin_tones")),
        lighting=tuple(appearance.parse_index_list(FLAGS.lighting, appearance.NUM_LIGHTING, "--lighting")),
        depth_noise=FLAGS.depth_noise, image_noise_std=FLAGS.image_noise, blur_prob=FLAGS.blur_prob,
        blur_sigma_max=FLAGS.blur_sigma_max)
    return dataset.RGBDatasetConfig(num_subjects=FLAGS.num_subjects, poses_per_subject=FLAGS.poses_per_subject,
                                    views_per_pose=FLAGS.views_per_pose, seed=FLAGS.seed,
                                    test_fraction=FLAGS.test_fraction, frames_per_shard=FLAGS.frames_per_shard,
                                    frame=frame)


def main(argv):
    del argv
    import os
    import sys

    from data_prep.synth_rgb import dataset

    try:
        config = config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e))
    extra = {}
    if FLAGS.background_dir:
        from hsr_tf.data import backgrounds

        files = backgrounds.list_background_images(FLAGS.background_dir)  # raises if missing / empty
        logging.info("--background_dir: %d images in %s", len(files), FLAGS.background_dir)
        extra["background_dir"] = os.path.abspath(FLAGS.background_dir)
    logging.info("command: %s", " ".join(sys.argv))
    dataset.generate(FLAGS.out_dir, config, num_workers=FLAGS.num_workers, progress=FLAGS.progress,
                     log=logging.info, extra_attrs=extra)


if __name__ == "__main__":
    app.run(main)
