"""Render the synthetic hand depth dataset into HDF5 shards.

  python -m data_prep.synth --out_dir=D --num_subjects=S --poses_per_subject=P --views_per_pose=K \
      --seed=0 --num_workers=0 --noise=kinect --camera=nyu

Any --poses_per_subject >= 1 works (P < 22: the first P named gestures; see poses.pose_library).
Small configuration (tests, demo): --num_subjects=10 --poses_per_subject=100 --views_per_pose=3 (3000 frames).
Full configuration (paper size, ~276K frames): --num_subjects=50 --poses_per_subject=1840 --views_per_pose=3.
See data_prep/synth/render.py for the viewpoint and frame model, data_prep/synth/noise.py for the noise model,
hsr_tf/data/shards.py for the shard schema. Rerunning into the same --out_dir resumes (finished shards are kept).
"""
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Output directory for the shards (created).")
flags.DEFINE_integer("num_subjects", 50, "Number of procedural subjects.", lower_bound=1)
flags.DEFINE_integer("poses_per_subject", 1840, "Poses from the pose library applied to every subject: any P >= 1; "
                     "P < 22 takes the first P named gestures (open, relaxed, fist, point, pinch, ...), P >= 22 all "
                     "22 gestures, their jittered variants, then sampled poses (data_prep/synth/poses.py).",
                     lower_bound=1)
flags.DEFINE_integer("views_per_pose", 3, "Random viewpoints per (subject, pose).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of subjects, poses, split and every frame.")
flags.DEFINE_integer("num_workers", 0, "Worker processes (0 = all cores).")
flags.DEFINE_enum("noise", "kinect", ["kinect", "none"], "Sensor noise model.")
flags.DEFINE_enum("camera", "nyu", ["nyu", "icvl", "msra"], "Camera intrinsics preset.")
flags.DEFINE_float("test_fraction", 0.1, "Fraction of subjects in the test split (no subject in both).")
flags.DEFINE_integer("frames_per_shard", 256, "Frame slots per shard.")
flags.DEFINE_integer("num_points", 1024, "Points sampled per frame.")
flags.DEFINE_integer("min_pixels", 300, "Frames whose hand covers fewer valid pixels are skipped (counted).")
flags.DEFINE_float("distance_min", 300.0, "Nearest hand-centroid depth, mm.")
flags.DEFINE_float("distance_max", 700.0, "Farthest hand-centroid depth, mm.")
flags.DEFINE_float("cone_deg", 70.0, "Palm (or back) normal within this angle of facing the camera.")
flags.DEFINE_float("back_prob", 0.5, "Probability that the back of the hand faces the camera.")
flags.DEFINE_float("inplane_deg", 180.0, "In-plane (roll) rotation range +-deg.")
flags.DEFINE_float("center_region", 0.5, "Hand centroid projects into this central fraction of the image.")
flags.DEFINE_bool("require_in_view", True, "Redraw viewpoints until every vertex projects inside the image.")
flags.DEFINE_enum("center_mode", "mean", ["mean", "bbox"], "Normalisation centre.")
flags.DEFINE_enum("scale_mode", "fixed", ["fixed", "max_dist"], "Normalisation scale.")
flags.DEFINE_float("fixed_scale", 150.0, "Scale (mm) for --scale_mode=fixed.")
flags.DEFINE_bool("obb", False, "Hand PointNet oriented-bounding-box normalisation (stores rotation).")
flags.DEFINE_integer("depth_crop_size", 0, "Store a depth crop resized to this size (0 = none).")
flags.DEFINE_float("cube_size", 300.0, "Cube (mm) of the stored depth crop.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flag_as_required("out_dir")


def main(argv):
    del argv
    from data_prep.synth import render
    from hsr_tf.geometry.camera import Camera

    frame = render.FrameConfig(
        camera=Camera.preset(FLAGS.camera),
        view=render.ViewConfig(distance_mm=(FLAGS.distance_min, FLAGS.distance_max), cone_deg=FLAGS.cone_deg,
                               back_prob=FLAGS.back_prob, inplane_deg=FLAGS.inplane_deg,
                               center_region=FLAGS.center_region, require_in_view=FLAGS.require_in_view),
        noise=FLAGS.noise, num_points=FLAGS.num_points, min_pixels=FLAGS.min_pixels,
        center_mode=FLAGS.center_mode, scale_mode=FLAGS.scale_mode, fixed_scale=FLAGS.fixed_scale, obb=FLAGS.obb,
        depth_crop_size=FLAGS.depth_crop_size, cube_size=FLAGS.cube_size)
    config = render.DatasetConfig(num_subjects=FLAGS.num_subjects, poses_per_subject=FLAGS.poses_per_subject,
                                  views_per_pose=FLAGS.views_per_pose, seed=FLAGS.seed,
                                  test_fraction=FLAGS.test_fraction, frames_per_shard=FLAGS.frames_per_shard,
                                  frame=frame)
    logging.info("command: %s", " ".join(__import__("sys").argv))
    render.generate(FLAGS.out_dir, config, num_workers=FLAGS.num_workers, progress=FLAGS.progress,
                    log=logging.info)


if __name__ == "__main__":
    app.run(main)
