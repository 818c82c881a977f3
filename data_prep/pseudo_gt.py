"""Pseudo-ground-truth meshes (Ge et al. 2019, section 4.4) for a set of RGB shards, from a pretrained run.

  python -m data_prep.pseudo_gt --data_dir=data/stb --model_workdir=runs/rgb_synth [--split=train] [--tag=T]

Runs the run's network (an RGBMeshNet of variant "mesh", its newest checkpoint) on every frame of
``{data_dir}/{split}-*.h5`` without augmentation and with the GROUND-TRUTH heat-maps, and writes one file per
shard to ``{data_dir}/pseudo_gt/{tag}/`` (atomic; a rerun skips finished shards). ``--tag`` defaults to the
model workdir's name, so pseudo-GT of different pretrained models never mix. Format: hsr_tf/train/pseudo_gt.py.
"""
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Directory of RGB shards.")
flags.DEFINE_string("model_workdir", None, "Workdir of the fully-supervised (pretrained) RGB run.")
flags.DEFINE_string("checkpoint", None, "Explicit checkpoint prefix (default: the workdir's newest).")
flags.DEFINE_string("split", "train", "Shard split to process.")
flags.DEFINE_string("tag", None, "Sub-folder name of the output (default: the model workdir's base name).")
flags.DEFINE_integer("batch_size", 16, "Frames per forward pass.", lower_bound=1)
flags.mark_flags_as_required(["data_dir", "model_workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hsr_tf.train import pseudo_gt

    pseudo_gt.generate_from_workdir(FLAGS.data_dir, FLAGS.model_workdir, FLAGS.split, FLAGS.tag, FLAGS.batch_size,
                                    FLAGS.checkpoint, log=logging.info)


if __name__ == "__main__":
    app.run(main)
