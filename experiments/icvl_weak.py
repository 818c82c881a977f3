"""Depth model on ICVL with the paper's weak supervision: ``python -m experiments.icvl_weak
--flagfile=experiments/flags/icvl_full.flags --data_dir=D --workdir=W [--init_from=SYNTH_WORKDIR]`` after
``python -m data_prep.icvl --raw_dir=R --out_dir=D``.

ICVL's 16 joints pair with ours through a virtual palm centre (docs/conventions.md); the protocol is the 16
joints on the 1,596 test frames. Runs and flags: experiments/real_common.py.
"""
from experiments import real_common

if __name__ == "__main__":
    real_common.run_program("icvl")
