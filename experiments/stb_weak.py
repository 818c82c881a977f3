"""Weakly-supervised fine-tuning on STB (Ge et al. 2019, section 4.4; Fig. 8 and Fig. 9 middle / right).

  python -m data_prep.stb --raw_dir=R --out_dir=data/stb
  python -m experiments.rgb_synth --flagfile=experiments/flags/rgb_table2_ours.flags --task_transfer \
      --workdir=runs/rgb_synth_full                      # the pretrained network (once)
  python -m experiments.stb_weak --flagfile=experiments/flags/stb_weak_full.flags --workdir=runs/stb_full

One flagfile per curve: stb_{baseline1,baseline2,weak_full,weak_full_task_transfer}{,_pose}.flags (``_pose``:
with 3D pose supervision, Fig. 8 left and Fig. 9 middle; without: Fig. 8 right and Fig. 9 right). STB's AUC is
reported over 20-50 mm (metrics.json ``auc_20_50``); the root joint is the wrist (data_prep.stb moves it from
the palm centre). See experiments/rgb_weak_common.py for the steps and flags.
"""
from absl import app

from experiments import rgb_weak_common


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rgb_weak_common.run()


if __name__ == "__main__":
    rgb_weak_common.apply_weak_defaults("data/stb")
    app.run(main)
