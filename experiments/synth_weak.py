"""Depth model on the synthetic set with weak supervision: joint + Chamfer + mean-shape loss, no shape loss.

  python -m experiments.synth_weak --flagfile=experiments/flags/table2a_joint_chamfer.flags --workdir=W

--lambda_shape must stay unset (or 0). See experiments/common.py for the flags.
"""
from absl import app

from experiments import common


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.run("weak")


if __name__ == "__main__":
    app.run(main)
