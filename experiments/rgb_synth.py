"""RGB hand mesh network (Ge et al.) on the synthetic RGB set: the paper's three-phase schedule, then evaluation.

  python -m experiments.rgb_synth --flagfile=experiments/flags/rgb_demo.flags --workdir=runs/rgb_demo
  python -m experiments.rgb_synth --flagfile=experiments/flags/rgb_table1_full.flags \
      --flagfile=experiments/flags/rgb_cpu_small.flags --workdir=runs/rgb_t1_full_small

Renders the data if --data_dir is empty, trains phase 1 (hourglass, L_H), phase 2 (pose regressor on GT
meshes, L_J) and phase 3 (end to end, L_fully) -- rerunning the same command resumes where it stopped --,
evaluates on the held-out subjects (W/eval), exports and predicts. See experiments/rgb_common.py for the flags.
"""
from absl import app

from experiments import rgb_common, rgb_run


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rgb_run.run()


if __name__ == "__main__":
    rgb_common.apply_rgb_defaults()
    app.run(main)
