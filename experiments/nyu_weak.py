"""Depth model on NYU with the paper's weak supervision (joint + Chamfer + mean-shape loss, no shape loss).

  python -m data_prep.nyu --raw_dir=R --out_dir=D
  python -m experiments.nyu_weak --flagfile=experiments/flags/nyu_full.flags --data_dir=D --workdir=W
      [--init_from=SYNTH_WORKDIR]

Evaluated on the 14 standard joints (all 8,252 test frames) and the model-based protocol (10 joints, the first
2,440 frames); the Table II(b) ablations are the nyu_table2b_*.flags. What a run does (train, evaluate_real,
export) and its flags: experiments/real_common.py.
"""
from experiments import real_common

if __name__ == "__main__":
    real_common.run_program("nyu")
