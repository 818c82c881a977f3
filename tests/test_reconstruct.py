"""The main job (experiments.reconstruct) on a tiny held-out set with the shipped depth model: it renders frames of
subjects outside the model's training split, and its files agree with each other and with hand computations."""
import json
import os
import subprocess
import sys

import numpy as np

from hsr_tf import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reconstruct_tiny_heldout_set(tmp_path):
    wd = tmp_path / "main"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "experiments.reconstruct", f"--workdir={wd}", "--frames_per_subject=2",
                          "--sheet_frames=3", "--overlays=1", "--render_workers=1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.load(open(wd / "summary.json"))
    # Held-out: the subjects are the test split of the training set the shipped model names, none trained on.
    from data_prep.synth import render
    m = pretrained.read_json("depth", "training_data.json")
    split = render.split_subjects(m["num_subjects"], m["test_fraction"], m["seed"])
    assert summary["heldout_subjects"] == split["test"] and not set(split["test"]) & set(split["train"])
    import open3d as o3d
    from hsr_tf.hand_model import HandModel
    faces = np.asarray(HandModel.load().faces)
    for view in ("default", "frontal"):
        doc = json.load(open(wd / view / "joints.json"))
        frames = doc["frames"]
        assert len(frames) == 2 * len(split["test"]) == summary["sets"][view]["num_frames"]
        assert {f["subject"] for f in frames} == set(split["test"])
        errs = []
        for f in frames:
            # The per-frame joint error, recomputed from the written joints.
            pred, true = np.asarray(f["dataset_joints"]), np.asarray(f["true_joints"])
            errs.append(np.linalg.norm(pred - true, axis=-1).mean())
            assert abs(errs[-1] - f["joint_error_mm"]) < 0.01
            mesh = o3d.io.read_triangle_mesh(str(wd / view / "meshes" / f"{f['frame_id']}.ply"))
            verts = np.asarray(mesh.vertices)
            assert verts.shape == (1305, 3) and np.array_equal(np.asarray(mesh.triangles), faces)
            # The mesh sits on the hand: its centroid within 40 mm of the true joints' centroid, at depth > 250 mm.
            assert np.linalg.norm(verts.mean(0) - true.mean(0)) < 40 and verts[:, 2].mean() > 250
        metrics = json.load(open(wd / view / "eval" / "metrics.json"))
        assert abs(metrics["mean_joint_error_mm"] - np.mean(errs)) < 0.01
        # Trained weights: an untrained network sits at the trivial solution, ~65 mm or more.
        assert metrics["mean_joint_error_mm"] < 45, metrics["mean_joint_error_mm"]
        assert os.path.getsize(wd / f"contact_sheet_{view}.png") > 20_000
        assert len(os.listdir(wd / view / "overlays")) == 1
