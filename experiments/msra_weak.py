"""Depth model on MSRA with the paper's weak supervision (joint + Chamfer + mean-shape loss, no shape loss).

  python -m data_prep.msra --raw_dir=R --out_dir=D
  python -m experiments.msra_weak --flagfile=experiments/flags/msra_full.flags --data_dir=D --workdir=W
      [--init_from=SYNTH_WORKDIR]

Runs the nine leave-one-subject-out folds (--msra_test_subjects) and averages them (W/loso_summary.json).
See experiments/real_common.py for the flags and what a run does (train, evaluate_real, export).
"""
from absl import app

from experiments import real_common

main = real_common.program_main("msra")

if __name__ == "__main__":
    app.run(main)
