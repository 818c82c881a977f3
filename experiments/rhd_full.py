"""Fine-tuning on RHD with 3D pose supervision (Ge et al. 2019, Fig. 9 left).

  python -m data_prep.rhd --raw_dir=R --out_dir=data/rhd
  python -m experiments.rhd_full --flagfile=experiments/flags/rhd_full.flags --workdir=runs/rhd_full

The network pretrained on the synthetic set is fine-tuned on RHD's training images with L_weakly + 10 L_J
(RHD's depth maps give L_D; its 3D joints L_J), then evaluated on RHD's test split (AUC 0-50 mm, metrics.json
``auc_0_50``). See experiments/rgb_weak_common.py for the steps and flags.
"""
from absl import app

from experiments import rgb_weak_common


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rgb_weak_common.run()


if __name__ == "__main__":
    rgb_weak_common.apply_weak_defaults("data/rhd")
    app.run(main)
