"""experiments.heldout: the training set's configuration from its manifest, and the held-out slots (no rendering)."""
import json

import pytest

from data_prep.synth import render
from experiments import heldout


def small_config(**over):
    args = dict(num_subjects=12, poses_per_subject=30, views_per_pose=3, seed=4)
    args.update(over)
    return render.DatasetConfig(**args)


def test_manifest_round_trip_and_refusals(tmp_path):
    config = small_config(frame=render.FrameConfig(noise="none"))
    manifest = json.loads(json.dumps(config.to_json_dict()))  # as written to manifest.json
    assert heldout.dataset_config_from_manifest(manifest) == config
    broken = dict(manifest)
    del broken["seed"]
    with pytest.raises(ValueError, match="my_manifest.*seed"):
        heldout.dataset_config_from_manifest(broken, source="my_manifest")
    with pytest.raises(FileNotFoundError, match="manifest"):
        heldout.read_manifest_file(str(tmp_path / "missing.json"))


def test_all_slots_are_the_test_split_of_the_plan():
    """frames_per_subject=0: exactly the (subject, pose, view, frame_id) slots render.plan_shards puts in 'test'."""
    config = small_config()
    planned = [tuple(s) for t in render.plan_shards(config) if t["split"] == "test" for s in t["slots"]]
    assert heldout.heldout_slots(config, 0) == planned
    train = {s for t in render.plan_shards(config) if t["split"] == "train" for s, *_ in t["slots"]}
    assert not set(heldout.test_subjects(config)) & train


def test_subsampled_slots_spread_over_poses_and_views():
    config = small_config()
    slots = heldout.heldout_slots(config, 7)
    planned = {tuple(s) for t in render.plan_shards(config) if t["split"] == "test" for s in t["slots"]}
    assert set(slots) <= planned and len(slots) == 7 * len(heldout.test_subjects(config))
    first = [s for s in slots if s[0] == slots[0][0]]
    assert first[0][1] == 0 and first[-1][1] == config.poses_per_subject - 1  # first and last pose of the library
    assert {k for _, _, k, _ in first} == {0, 1, 2}
    many = heldout.heldout_slots(config, 50)  # more than the 30 poses: (pose, view) pairs
    assert len(set(many)) == 50 * len(heldout.test_subjects(config)) and set(many) <= planned
    with pytest.raises(ValueError, match="frames_per_subject"):
        heldout.heldout_slots(config, 30 * 3 + 1)


def test_frontal_views_change_only_the_viewpoints():
    config = small_config()
    frontal = heldout.with_views(config, "frontal", depth_crop_size=64)
    assert (frontal.frame.view.cone_deg, frontal.frame.view.back_prob, frontal.frame.view.inplane_deg) == (25, 0, 15)
    assert frontal.frame.view.distance_mm == config.frame.view.distance_mm and frontal.frame.depth_crop_size == 64
    assert frontal.frame.camera == config.frame.camera and frontal.seed == config.seed
    assert heldout.with_views(config, "default") == config
    with pytest.raises(ValueError, match="view_set"):
        heldout.with_views(config, "sideways")
