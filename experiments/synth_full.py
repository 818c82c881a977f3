"""Depth model on the synthetic set with full supervision (joint + Chamfer + mean-shape + shape loss).

  python -m experiments.synth_full --flagfile=experiments/flags/demo.flags --workdir=/tmp/demo

Renders the data if --data_dir has no shards, trains (resumable: rerun the same command), evaluates,
exports a SavedModel and predicts one depth image. See experiments/common.py for the flags.
"""
from absl import app

from experiments import common


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run("full")


if __name__ == "__main__":
    app.run(main)
