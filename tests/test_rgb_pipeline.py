"""The RGB run pipeline (experiments.rgb_common / rgb_run): the demo flags end to end on a tiny set, resumed after
a kill mid-phase, and (slow) a killed-and-resumed schedule equal to an uninterrupted one."""
import contextlib
import json
import os

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import evaluate, rgb_run  # noqa: F401 (evaluate first: it defines the flags evaluate_rgb reuses)
from hsr_tf.train import loop, run_kind
from hsr_tf.train.evaluation import read_per_frame_csv

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments", "flags", "rgb_demo.flags")


@contextlib.contextmanager
def parsed(args):
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(["prog"] + args)
        yield


def _tiny(data_dir, workdir, steps=(2, 2, 2)):
    """The demo flagfile with a tiny set (2 subjects: 1 train, 1 test, 4 frames each) and schedule."""
    return ["--flagfile=" + DEMO, f"--data_dir={data_dir}", f"--workdir={workdir}", "--synth_num_subjects=2",
            "--synth_poses_per_subject=4", "--synth_views_per_pose=1", "--synth_workers=1", "--batch_size=2",
            f"--phase1_steps={steps[0]}", f"--phase2_steps={steps[1]}", f"--phase3_steps={steps[2]}",
            "--checkpoint_every=1", "--summary_every=1", "--eval_every=0", "--visual_every=2", "--num_overlays=1",
            "--noexport", "--nopredict", "--noprogress"]


def _published_weights(workdir):
    net, _ = loop.load_model_from_workdir(workdir)
    return [v.numpy() for v in net.variables]


def test_demo_flags_end_to_end_on_a_tiny_set(tmp_path):
    data, wd = str(tmp_path / "data"), str(tmp_path / "w")
    with parsed(_tiny(data, wd)):
        res = rgb_run.run()
    assert not res["interrupted"]
    assert {p: r["steps_here"] for p, r in res["schedule"]["phases"].items()} == {1: 2, 2: 2, 3: 2}
    assert run_kind.read_run_kind(wd) == "rgb"
    metrics = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    for key in ("pose_error_mm", "mesh_error_mm", "aligned_mesh_error_mm", "joint_2d_error_px", "auc_20_50",
                "mean_baseline_pose_error_mm", "mean_baseline_mesh_error_mm"):
        assert np.isfinite(metrics[key]), key
    assert metrics["num_frames"] == 4
    assert len(read_per_frame_csv(os.path.join(wd, "eval", "per_frame.csv"))["frame_id"]) == 4
    assert len(os.listdir(os.path.join(wd, "eval", "overlays"))) == 1
    # experiments.evaluate forwards an RGB run to evaluate_rgb and reproduces the pipeline's numbers
    out = str(tmp_path / "eval_again")
    with parsed([f"--workdir={wd}", f"--out_dir={out}"]):
        evaluate.main(["evaluate"])
    again = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("pose_error_mm", "mesh_error_mm", "joint_2d_error_px"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-4), key


@pytest.mark.slow
def test_killed_schedule_equals_uninterrupted(tmp_path):
    data = str(tmp_path / "data")
    ref, wd = str(tmp_path / "ref"), str(tmp_path / "w")
    steps = (3, 3, 4)
    with parsed(_tiny(data, ref, steps) + ["--noevaluate"]):
        full = rgb_run.run()
    done = []
    for stop in (4, 3, None):  # killed in phase 2, then in phase 3, then finished
        with parsed(_tiny(data, wd, steps) + ["--noevaluate"]):
            res = rgb_run.run(stop_after=stop)
        assert res["interrupted"] == (stop is not None)
        assert not os.path.exists(os.path.join(wd, "checkpoints")) or stop is None  # published only at the end
        done.append({p: r["steps_here"] for p, r in res["schedule"]["phases"].items()})
    assert done == [{1: 3, 2: 1}, {1: 0, 2: 2, 3: 1}, {1: 0, 2: 0, 3: 3}], done  # each run does only what is left
    # the same batches in the same order: phase 3's last steps see the losses of the uninterrupted run
    ref_losses = [h["loss"] for h in full["schedule"]["phases"][3]["history"]]
    got_losses = [h["loss"] for h in res["schedule"]["phases"][3]["history"]]
    np.testing.assert_allclose(got_losses, ref_losses[-len(got_losses):], rtol=1e-4)
    for a, b in zip(_published_weights(ref), _published_weights(wd)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_full_demo_learns(tmp_path):
    """The whole demo (render, three phases, evaluation, export, predict) as a user runs it; its held-out errors
    are below the mean baseline of the same run. Its time is written to W/timings.json (not asserted: it
    depends on the machine's other load)."""
    import subprocess
    import sys

    wd = str(tmp_path / "demo")
    cmd = [sys.executable, "-m", "experiments.rgb_synth", "--flagfile=" + DEMO, f"--workdir={wd}",
           f"--data_dir={tmp_path / 'data'}", "--noprogress"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    assert m["pose_error_mm"] < m["mean_baseline_pose_error_mm"]
    assert m["mesh_error_mm"] < m["mean_baseline_mesh_error_mm"]
    for sub in ("export", "predict"):
        assert os.listdir(os.path.join(wd, sub)), sub
