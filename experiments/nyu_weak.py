"""Depth model on NYU with the paper's weak supervision (joint + Chamfer + mean-shape loss, no shape loss).

  python -m data_prep.nyu --raw_dir=R --out_dir=D
  python -m experiments.nyu_weak --flagfile=experiments/flags/nyu_full.flags --data_dir=D --workdir=W
      [--init_from=SYNTH_WORKDIR]

See experiments/real_common.py for the flags and what a run does (train, evaluate_real, export).
"""
from absl import app

from experiments import real_common

main = real_common.program_main("nyu")

if __name__ == "__main__":
    app.run(main)
