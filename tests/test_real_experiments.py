"""Real-data experiment programs: NYU end to end on fixtures (slow), MSRA folds and protocol plumbing (fast)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fixtures_raw
from hsr_tf.data import datasets, shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_NET = {"sa1_npoint": 32, "sa1_radius": 0.2, "sa1_nsample": 8, "sa1_mlp": [8, 8], "sa2_npoint": 16,
            "sa2_radius": 0.4, "sa2_nsample": 8, "sa2_mlp": [16], "global_mlp": [32], "head_hidden": 16,
            "head_batch_norm": False}


def run_module(module, args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{module} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.mark.slow
def test_nyu_convert_train_evaluate_export(tmp_path):
    """data_prep.nyu -> experiments.nyu_weak (1 step, then resumed to 40) -> evaluate(_real) -> export."""
    from tests._hand_model_toy import make_toy_model

    hm, _, _ = make_toy_model(np.random.default_rng(0))
    hm_path = str(tmp_path / "toy.npz")
    hm.save(hm_path)
    raw, data, wd = str(tmp_path / "raw"), str(tmp_path / "data"), str(tmp_path / "run")
    fixtures_raw.write_nyu(raw, {"train": 24, "test": 8}, seed=0)
    run_module("data_prep.nyu", [f"--raw_dir={raw}", f"--out_dir={data}", "--num_points=128", "--num_workers=2",
                                 "--progress=false"])
    base = ["--flagfile=experiments/flags/nyu_full.flags", f"--data_dir={data}", f"--workdir={wd}",
            f"--hand_model={hm_path}", "--shape_network=" + json.dumps(TINY_NET), "--batch_size=4",
            "--num_epochs=20", "--learning_rate=0.003", "--augment=false", "--eval_every=0", "--eval_batches=1",
            "--visual_every=0", "--progress=false"]

    def train_error(tag, program):
        # evaluate_real with the dataset named; experiments.evaluate must forward there and read it from the shards
        out = str(tmp_path / f"eval_{tag}")
        named = ["--dataset=nyu"] if program == "experiments.evaluate_real" else []
        run_module(program, [f"--workdir={wd}", "--split=train", f"--out_dir={out}",
                             "--eval_protocols=standard14"] + named)
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["protocols"]["standard14"]["mean_joint_error_mm"]

    run_module("experiments.nyu_weak", base + ["--max_steps=1", "--export=false", "--evaluate=false"])
    before = train_error("before", "experiments.evaluate_real")
    run_module("experiments.nyu_weak", base + ["--max_steps=40", "--export=true", "--evaluate=true"])
    after = train_error("after", "experiments.evaluate")
    assert after < before, (before, after)
    with open(os.path.join(wd, "eval", "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["protocols"]) == {"standard14", "model_based10"}
    assert summary["protocols"]["standard14"]["num_frames"] == 8
    for proto in ("standard14", "model_based10"):
        for name in ("metrics.json", "per_joint.csv", "threshold_curve.csv", "threshold_curve.png"):
            assert os.path.isfile(os.path.join(wd, "eval", proto, name))
    per_joint = open(os.path.join(wd, "eval", "standard14", "per_joint.csv")).read()
    assert "PALM_3" in per_joint and "F1_KNU3_A" in per_joint
    assert os.path.isfile(os.path.join(wd, "export", "saved_model.pb"))
    flags_txt = open(os.path.join(wd, "flags.txt")).read()
    assert "--reg_joints=eval" in flags_txt and "--num_stages=2" in flags_txt


def _write_fake_msra(data_dir, frames_per_subject=3):
    rng = np.random.default_rng(0)
    for s, subject in enumerate(datasets.MSRA_SUBJECTS):
        n = frames_per_subject
        shards.write_shard(os.path.join(data_dir, f"{subject}-00000.h5"), {
            "points": rng.normal(size=(n, 16, 3)).astype(np.float32), "joints": rng.normal(size=(n, 21, 3)) + 400,
            "center": np.full((n, 3), 400.0), "scale": np.full(n, 150.0), "subject": np.full(n, s),
            "frame_id": np.arange(n)},
            {"dataset": "msra", "split": subject, "camera": {"fx": 241.42, "fy": 241.42, "cx": 160, "cy": 120,
                                                            "width": 320, "height": 240},
             "joint_names": list(datasets.MSRA.joint_names)})


def test_msra_fold_dirs_and_average(tmp_path):
    from experiments import real_common

    data = str(tmp_path / "shards")
    os.makedirs(data)
    _write_fake_msra(data)
    fold = real_common.msra_fold_dir(data, "P3", str(tmp_path / "fold"))
    train = shards.list_shards(fold, "train")
    test = shards.list_shards(fold, "test")
    assert len(train) == 8 and len(test) == 1
    assert os.path.realpath(test[0]) == os.path.realpath(os.path.join(data, "P3-00000.h5"))
    subjects = sorted(int(shards.load_shard(p, ["subject"])["subject"][0]) for p in train)
    assert subjects == [0, 1, 2, 4, 5, 6, 7, 8]
    # idempotent (a rerun of the LOSO command reuses the links)
    assert real_common.msra_fold_dir(data, "P3", str(tmp_path / "fold")) == fold
    with pytest.raises(ValueError, match="msra_test_subjects"):
        real_common.msra_fold_dir(data, "P9", str(tmp_path / "f9"))
    folds = {"P0": {"eval": {"protocols": {"loso21": {"mean_joint_error_mm": 10.0, "num_frames": 100}}}},
             "P1": {"eval": {"protocols": {"loso21": {"mean_joint_error_mm": 16.0, "num_frames": 300}}}}}
    avg = real_common.average_folds(folds)["average"]["loso21"]
    assert avg["mean_over_folds_mm"] == pytest.approx(13.0)
    assert avg["frame_weighted_mm"] == pytest.approx((10 * 100 + 16 * 300) / 400)


def test_protocol_columns():
    from hsr_tf.train import real_evaluation

    table = real_evaluation.protocols_of(datasets.NYU)
    assert set(table) == {"standard14", "model_based10", "correspondence21"}
    # 14-joint regression output: both NYU protocols are computable, the 21-joint ablation one is not
    reg14 = datasets.NYU.regression_joint_indices("eval")
    cols = real_evaluation.prediction_columns(table["model_based10"], reg14)
    np.testing.assert_array_equal(reg14[cols], table["model_based10"].joint_indices)
    assert real_evaluation.prediction_columns(table["correspondence21"], reg14) is None
    # the paired joints (no joint regression) do not contain PALM_2/PALM_3/TH_KNU2_B of the 14
    assert real_evaluation.prediction_columns(table["standard14"], datasets.NYU.dataset_joint_indices) is None
    cols = real_evaluation.prediction_columns(table["correspondence21"], datasets.NYU.dataset_joint_indices)
    np.testing.assert_array_equal(cols, np.arange(21))
    with pytest.raises(ValueError, match="eval_protocols"):
        real_evaluation.protocols_of(datasets.ICVL, ["standard14"])


@pytest.mark.slow
def test_icvl_msra_loso_and_ablation_programs(tmp_path):
    """icvl_weak (16 joints, palm-centre correspondence), msra_weak LOSO over two folds, NYU w/o reg-joint, init_from."""
    from tests._hand_model_toy import make_toy_model

    hm, _, _ = make_toy_model(np.random.default_rng(0))
    hm_path = str(tmp_path / "toy.npz")
    hm.save(hm_path)
    common = [f"--hand_model={hm_path}", "--shape_network=" + json.dumps(TINY_NET), "--batch_size=4",
              "--num_epochs=1", "--max_steps=2", "--eval_every=0", "--eval_batches=1", "--visual_every=0",
              "--progress=false", "--export=false"]
    fixtures_raw.write_icvl(str(tmp_path / "icvl_raw"), num_train=8, num_rotated=1, test_counts=(2, 2))
    run_module("data_prep.icvl", [f"--raw_dir={tmp_path / 'icvl_raw'}", f"--out_dir={tmp_path / 'icvl'}",
                                  "--num_points=128", "--progress=false"])
    run_module("experiments.icvl_weak", ["--flagfile=experiments/flags/icvl_full.flags",
                                         f"--data_dir={tmp_path / 'icvl'}", f"--workdir={tmp_path / 'w_icvl'}"] + common)
    s = json.load(open(tmp_path / "w_icvl" / "eval" / "summary.json"))
    assert s["protocols"]["standard16"]["num_frames"] == 4 and s["dataset"] == "icvl"

    fixtures_raw.write_msra(str(tmp_path / "msra_raw"), subjects=datasets.MSRA_SUBJECTS, frames_per_gesture=1)
    run_module("data_prep.msra", [f"--raw_dir={tmp_path / 'msra_raw'}", f"--out_dir={tmp_path / 'msra'}",
                                  "--num_points=128", "--progress=false"])
    run_module("experiments.msra_weak", ["--flagfile=experiments/flags/msra_full.flags",
                                         f"--data_dir={tmp_path / 'msra'}", f"--workdir={tmp_path / 'w_msra'}",
                                         "--msra_test_subjects=P0,P5"] + common)
    loso = json.load(open(tmp_path / "w_msra" / "loso_summary.json"))
    folds = loso["average"]["loso21"]["folds"]
    assert set(folds) == {"P0", "P5"}
    assert loso["average"]["loso21"]["mean_over_folds_mm"] == pytest.approx((folds["P0"] + folds["P5"]) / 2)
    assert loso["folds"]["P5"]["protocols"]["loso21"]["num_frames"] == 17

    # NYU Table II(b) "w/o reg-joint": no joint regression, evaluated on the 21 paired joints; init from the ICVL
    # run (different joint count: the shared shape-network variables are copied).
    fixtures_raw.write_nyu(str(tmp_path / "nyu_raw"), {"train": 8, "test": 4}, seed=3)
    run_module("data_prep.nyu", [f"--raw_dir={tmp_path / 'nyu_raw'}", f"--out_dir={tmp_path / 'nyu'}",
                                 "--num_points=128", "--progress=false"])
    res = run_module("experiments.nyu_weak", ["--flagfile=experiments/flags/nyu_table2b_wo_reg_joint.flags",
                                              f"--data_dir={tmp_path / 'nyu'}", f"--workdir={tmp_path / 'w_noreg'}",
                                              f"--init_from={tmp_path / 'w_icvl'}"] + common)
    assert "Initialised" in res.stderr
    s = json.load(open(tmp_path / "w_noreg" / "eval" / "summary.json"))
    assert list(s["protocols"]) == ["correspondence21"]
