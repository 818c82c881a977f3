"""experiments.model_card renders the card from card.json facts alone (no model, no evaluation)."""
import json

from experiments import model_card  # not package_pretrained: its --checkpoint is also experiments.evaluate's


def make_card(flags, curve):
    metrics = {"mean_joint_error_mm": 11.5, "model_joint_error_mm": 10.0, "shape_error_mm": 9.0,
               "aligned_shape_error_mm": 7.0, "rest_shape_error_mm": 6.0, "point_cloud_error_mm": 5.0,
               "num_frames": 40.0, "fraction_good_frames": {"20": 0.25, "40": 0.75}}
    return {"name": "depth", "package_command": "/x/bin/python -m experiments.package_pretrained --workdir=W "
                                                "'--card_note=long text here'",
            "packaged_utc": "now", "step": 900, "samples_seen": 28800, "source_workdir": "W", "package_mb": 6.0,
            "num_parameters": 1000, "flags": flags, "command": None,
            "training_data": {"num_subjects": 10, "poses_per_subject": 4, "views_per_pose": 1, "seed": 3},
            "view": {"back_prob": 0.5, "cone_deg": 70.0, "inplane_deg": 180.0, "distance_mm": [300, 700]},
            "noise": "kinect", "train_frames": 36, "test_frames": 40, "heldout_subjects": [2],
            "wall_time": {"active_hours": None}, "curve": curve, "curve_prior": None,
            "heldout": {"default": metrics, "frontal": dict(metrics, mean_joint_error_mm=13.0)}, "note": "NOTE"}


def test_card_text_follows_the_facts(tmp_path):
    curve = {"mean_joint_error_mm": [[s, 40 - s / 100] for s in range(100, 1000, 100)]}
    card = make_card(["--noaugment", "--batch_size=32", "--nojoint_regression"], curve)
    path = model_card.write(card, str(tmp_path / "card.md"))
    text = open(path).read()
    assert "Online augmentation: off" in text and "joint regression off" in text
    assert "**reached** (11.5 mm)" in text and "still falling" in text and "NOTE" in text
    assert "long text" not in text and "`python -m experiments.package_pretrained --workdir=W --card_note=...`" in text
    assert "| default views (the run's test split) | 40 | 11.5 | 10.0 | 9.0 | 7.0 | 6.0 | 5.0 | 25% / 75% |" in text
    assert (tmp_path / "card_curve.png").stat().st_size > 10_000
    flat = make_card(["--augment"], {"mean_joint_error_mm": [[s, 20.0] for s in range(100, 1000, 100)]})
    flat["heldout"]["default"]["mean_joint_error_mm"] = 20.0
    text = model_card.render(flat, None)
    assert "Online augmentation: on" in text and "**not reached** (20.0 mm)" in text and ": flat." in text
    assert "## Held-out error during training" not in text


def test_prior_curve_merges_under_the_runs_own_points(tmp_path):
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"source": "old log", "mean_joint_error_mm": [[500, 60.0], [1000, 50.0]],
                                 "aligned_shape_error_mm": [[500, 30.0]]}))
    curve, source = model_card.read_prior_curve(str(prior))
    merged = model_card.merge_curves(curve, {"mean_joint_error_mm": [[1000, 45.0], [1500, 40.0]]})
    assert source == "old log"
    assert merged == {"aligned_shape_error_mm": [[500, 30.0]],
                      "mean_joint_error_mm": [[500, 60.0], [1000, 45.0], [1500, 40.0]]}
