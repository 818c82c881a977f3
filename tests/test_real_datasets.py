"""Dataset specs and the paper's joint correspondences (Deng et al. III-E-2), checked by joint NAME."""
import numpy as np
import pytest

from hsr_tf.data import datasets
from hsr_tf.hand_model import skeleton

OURS = skeleton.JOINT_NAMES


def _our_name_to_nyu(name):
    """Anatomical mapping written out by hand from the NYU naming (F1 pinky .. F4 index; KNU3_A tip,
    KNU3_B distal joint, KNU2_B middle joint, KNU1_B finger base)."""
    if name == "wrist":
        return "PALM_1"
    finger, part = name.split("_")
    if finger == "thumb":
        return {"cmc": "TH_KNU1_A", "mcp": "TH_KNU2_A", "ip": "TH_KNU3_B", "tip": "TH_KNU3_A"}[part]
    f = {"pinky": "F1", "ring": "F2", "middle": "F3", "index": "F4"}[finger]
    return f + "_" + {"mcp": "KNU1_B", "pip": "KNU2_B", "dip": "KNU3_B", "tip": "KNU3_A"}[part]


def test_nyu_names_and_paper_list():
    spec = datasets.NYU
    assert spec.num_joints == 36 and spec.joint_names[0] == "F1_KNU3_A" and spec.joint_names[-1] == "PALM_6"
    assert spec.joint_names[24] == "TH_KNU3_A" and spec.joint_names[30] == "PALM_1"
    # 1-based list of the paper, one entry per our joint.
    assert list(spec.dataset_joint_indices + 1) == [31, 29, 27, 26, 25, 24, 22, 20, 19, 18, 16, 14, 13, 12, 10,
                                                    8, 7, 6, 4, 2, 1]
    assert list(spec.our_joint_indices) == list(range(21))
    for ours, theirs in zip(spec.our_joint_indices, spec.dataset_joint_indices):
        assert spec.joint_names[theirs] == _our_name_to_nyu(OURS[ours]), OURS[ours]


def test_nyu_eval_joints():
    spec = datasets.NYU
    names = [spec.joint_names[i] for i in spec.eval_joint_indices]
    assert names == ["F1_KNU3_A", "F1_KNU2_B", "F2_KNU3_A", "F2_KNU2_B", "F3_KNU3_A", "F3_KNU2_B", "F4_KNU3_A",
                     "F4_KNU2_B", "TH_KNU3_A", "TH_KNU3_B", "TH_KNU2_B", "PALM_1", "PALM_2", "PALM_3"]
    mb = spec.protocol("model_based10")
    assert mb.num_frames == 2440 and len(mb.joint_indices) == 10
    assert set(mb.joint_indices) <= set(spec.eval_joint_indices)
    # tip and middle joint of every finger
    assert sorted(spec.joint_names[i] for i in mb.joint_indices) == sorted(
        [f"{f}_{p}" for f in ("F1", "F2", "F3", "F4") for p in ("KNU3_A", "KNU2_B")] + ["TH_KNU3_A", "TH_KNU3_B"])
    assert spec.protocol().name == "standard14" and spec.protocol().num_frames is None
    assert len(spec.regression_joint_indices("eval")) == 14
    assert len(spec.regression_joint_indices("correspondence")) == 21
    with pytest.raises(ValueError, match="which"):
        spec.regression_joint_indices("bogus")


def test_icvl_palm_centre_and_pairs(rng):
    spec = datasets.ICVL
    assert spec.num_joints == 16 and spec.palm_centre
    assert list(spec.our_joint_indices + 1) == [1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21]
    # By name: transformed joint 0 is the palm centre; the others are our joints.
    expected = {"palm": "palm_centre", "thumb_root": "thumb_mcp", "thumb_mid": "thumb_ip", "thumb_tip": "thumb_tip"}
    for f in ("index", "middle", "ring", "pinky"):
        expected.update({f"{f}_root": f"{f}_pip", f"{f}_mid": f"{f}_dip", f"{f}_tip": f"{f}_tip"})
    transformed_names = ("palm_centre",) + OURS[1:]
    for ours, theirs in zip(spec.our_joint_indices, spec.dataset_joint_indices):
        assert transformed_names[ours] == expected[spec.joint_names[theirs]]
    j = rng.normal(size=(4, 21, 3)) * 50
    j_before = j.copy()
    t = spec.transform_our_joints(j)
    np.testing.assert_array_equal(j, j_before)  # the input is not modified
    np.testing.assert_allclose(t[:, 0], (j[:, 0] + j[:, 9]) / 2)
    np.testing.assert_array_equal(t[:, 1:], j[:, 1:])
    gt = rng.normal(size=(4, 16, 3))
    a, b = spec.paired(j, gt)
    assert a.shape == (4, 16, 3) and b.shape == (4, 16, 3)
    np.testing.assert_allclose(a[:, 0], (j[:, 0] + j[:, 9]) / 2)
    np.testing.assert_allclose(a[:, 4], j[:, 6])  # ICVL index_root <-> our index_pip


def test_transform_tf_matches_numpy(rng):
    import tensorflow as tf

    j = rng.normal(size=(3, 21, 3)).astype(np.float32)
    gt = rng.normal(size=(3, 16, 3)).astype(np.float32)
    a_np, b_np = datasets.ICVL.paired(j, gt)
    a_tf, b_tf = datasets.ICVL.paired(tf.constant(j), tf.constant(gt))
    np.testing.assert_allclose(a_tf.numpy(), a_np, rtol=1e-6)
    np.testing.assert_allclose(b_tf.numpy(), b_np)
    a_tf, _ = datasets.NYU.paired(tf.constant(j), tf.constant(rng.normal(size=(3, 36, 3)).astype(np.float32)))
    np.testing.assert_array_equal(a_tf.numpy(), j)
    with pytest.raises(ValueError, match=r"joints: expected shape \[..., 21, 3\]"):
        datasets.ICVL.transform_our_joints(np.zeros((2, 20, 3)))


def test_msra_pairs_by_name():
    spec = datasets.MSRA
    assert spec.num_joints == 21 and spec.joint_names[0] == "wrist" and spec.joint_names[17] == "thumb_mcp"
    thumb = {"mcp": "cmc", "pip": "mcp", "dip": "ip", "tip": "tip"}  # MSRA's thumb joints, root -> tip
    for ours, theirs in zip(spec.our_joint_indices, spec.dataset_joint_indices):
        name = spec.joint_names[theirs]
        if name == "wrist":
            want = "wrist"
        else:
            finger, part = name.split("_")
            want = f"thumb_{thumb[part]}" if finger == "thumb" else f"{'pinky' if finger == 'little' else finger}_{part}"
        assert OURS[ours] == want
    assert sorted(spec.our_joint_indices) == list(range(21))


def test_get_spec_and_crop_settings():
    assert datasets.get_spec("NYU") is datasets.NYU
    with pytest.raises(ValueError, match="dataset: expected one of"):
        datasets.get_spec("stb")
    for spec in datasets.SPECS.values():
        assert spec.cube_size > 0 and sum(spec.depth_window) > 0
        assert np.all(spec.eval_joint_indices < spec.num_joints)
        assert np.all(spec.dataset_joint_indices < spec.num_joints)
        assert len(spec.our_joint_indices) == len(spec.dataset_joint_indices)
