"""Depth model on MSRA with the paper's weak supervision, all nine leave-one-subject-out folds in one command.

    python -m data_prep.msra --raw_dir=R --out_dir=D
    python -m experiments.msra_weak --flagfile=experiments/flags/msra_full.flags --data_dir=D --workdir=W

Each fold (--msra_test_subjects) trains and evaluates in W/folds/Pk; W/loso_summary.json averages them.
See experiments/real_common.py for the flags and what a run does.
"""
from experiments import real_common

if __name__ == "__main__":
    real_common.run_program("msra")
