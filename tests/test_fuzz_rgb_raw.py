"""Damaged raw RGB datasets (STB, RHD): truncated and bit-flipped PNGs, STB label .mat files and RHD annotation
pickles, PNGs of the wrong mode or bit depth, NaN / implausible joints, pickles that reference other code.

As in tests/test_fuzz_raw.py: each case raises ``RawDataError`` naming the file, or -- where the format has no
checksum (the numbers of a .mat or a pickle) -- changes at most the values that the flipped bytes belong to. The
valid trees come from ``tests/fixtures_rgb_raw.py``.
"""
import os
import pickle
import shutil

import numpy as np
import pytest
from hypothesis import event
from hypothesis import strategies as st

import fixtures_rgb_raw as fx
from _fuzz_helpers import PNG_FORMATS, corruptions, fuzz_variants, pixels_for, read_damaged, write_corrupted, write_png
from data_prep import rhd, stb
from data_prep._raw_io import RawDataError

class Trees(dict):
    def __repr__(self):
        return "<valid raw RGB trees>"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_rgb_raw")
    stb_root, rhd_root = str(root / "stb"), str(root / "rhd")
    fx.write_stb(stb_root, frames_per_sequence=1, seed=2)
    fx.write_rhd(rhd_root, counts={"training": 2, "evaluation": 1}, seed=2)
    files = {
        "stb_colour": os.path.join(stb_root, "B2Random", "SK_color_0.png"),
        "stb_depth": os.path.join(stb_root, "B2Random", "SK_depth_0.png"),
        "stb_labels": os.path.join(stb_root, "labels", "B2Random_SK.mat"),
        "rhd_colour": os.path.join(rhd_root, "training", "color", "00001.png"),
        "rhd_depth": os.path.join(rhd_root, "training", "depth", "00001.png"),
        "rhd_mask": os.path.join(rhd_root, "training", "mask", "00001.png"),
        "rhd_anno": os.path.join(rhd_root, "training", "anno_training.pickle"),
    }
    return Trees({"stb": stb_root, "rhd": rhd_root, "files": files,
                  "originals": {k: open(p, "rb").read() for k, p in files.items()}})


READERS = {"stb_colour": stb.read_colour, "stb_depth": stb.decode_depth, "stb_labels": stb.read_labels,
           "rhd_colour": lambda p: rhd.load_frame(("rhd", p, *_rhd_others(p)), __import__("data_prep._rgb_common",
                                                  fromlist=["CropConfig"]).CropConfig()),
           "rhd_depth": rhd.decode_depth, "rhd_mask": rhd.read_mask, "rhd_anno": rhd.read_annotations}


def _rhd_others(colour_path):
    d = os.path.dirname(os.path.dirname(colour_path))
    name = os.path.basename(colour_path)
    ann = rhd.read_annotations(os.path.join(d, "anno_training.pickle"))[int(name[:5])]
    return os.path.join(d, "depth", name), os.path.join(d, "mask", name), ann


def restore(trees):
    for key, path in trees["files"].items():
        with open(path, "wb") as f:
            f.write(trees["originals"][key])


def names_file(e, path):
    return str(e).startswith(path) and "expected" in str(e)


PNGS = ["stb_colour", "stb_depth", "rhd_colour", "rhd_depth", "rhd_mask"]


def _check_png(trees, key, op):
    path = trees["files"][key]
    try:
        if not write_corrupted(path, trees["originals"][key], op) and op[0] == "flip":
            return  # the flips cancelled out
        with pytest.raises(RawDataError) as info:
            READERS[key](path)
        assert names_file(info.value, path), info.value
    finally:
        restore(trees)


test_damaged_png_always_raises, test_damaged_png_always_raises_many = fuzz_variants(
    _check_png, dict(key=st.sampled_from(PNGS), op=corruptions()),
    dict(key=st.sampled_from(PNGS), op=corruptions(max_flips=16)))


LABELS = st.sampled_from(["stb_labels", "rhd_anno"])


def _numbers(obj):
    """Every number of an annotation structure, flattened in a fixed order (dict keys sorted)."""
    if isinstance(obj, dict):
        return np.concatenate([_numbers(obj[k]) for k in sorted(obj)]) if obj else np.zeros(0)
    return np.asarray(obj, dtype=np.float64).ravel()


def _check_labels(trees, key, op):
    path = trees["files"][key]
    good = READERS[key](path)
    try:
        changed = write_corrupted(path, trees["originals"][key], op)
        got = read_damaged(READERS[key], path, RawDataError)
        if got is None:
            return
        # No checksum in either format: a flip may change a number, nothing else.
        n_flips = len(changed) if op[0] == "flip" else 0
        if key == "rhd_anno":
            assert sorted(got) == sorted(good)
            assert all(sorted(got[s]) == sorted(good[s]) for s in good)
        else:
            assert got.shape == good.shape
        a, b = _numbers(got), _numbers(good)
        assert a.shape == b.shape and np.all(np.isfinite(a))
        assert np.count_nonzero(a != b) <= n_flips
        event("changed values only" if n_flips and np.any(a != b) else "unchanged")
    finally:
        restore(trees)


test_damaged_labels_raise_or_change_only_flipped_values, test_damaged_labels_many = fuzz_variants(
    _check_labels, dict(key=LABELS, op=corruptions()),
    dict(key=LABELS, op=corruptions(max_flips=16)))


@pytest.mark.parametrize("fmt", PNG_FORMATS, ids=[f[0] for f in PNG_FORMATS])
def test_png_of_wrong_mode_or_bit_depth_raises(trees, tmp_path, fmt):
    """Each PNG kind accepts its documented formats only; 16-bit RGB (read by PIL as 8-bit) is refused."""
    kinds = {"stb_colour": (640, 480, ("RGB",)), "stb_depth": (640, 480, ("RGB",)),
             "rhd_depth": (320, 320, ("RGB", "RGBA")), "rhd_mask": (320, 320, ("L",))}
    for key, (w, h, accepted) in kinds.items():
        path = str(tmp_path / f"{key}.png")
        px = pixels_for(fmt, w, h)
        write_png(path, px if key != "rhd_mask" else px % 34, fmt[1], fmt[2])
        if fmt[0] in accepted:
            assert READERS[key](path).shape[:2] == (h, w)
        else:
            with pytest.raises(RawDataError, match=f"^{path}: expected .*found mode '{fmt[0]}'"):
                READERS[key](path)


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e7])
def test_non_finite_or_implausible_joints_raise(trees, tmp_path, value):
    import scipy.io

    # STB: one coordinate of frame 0 in handPara
    work = str(tmp_path / "stb")
    shutil.copytree(trees["stb"], work)
    mat = os.path.join(work, "labels", "B2Random_SK.mat")
    para = scipy.io.loadmat(mat)["handPara"]
    para[2, 7, 0] = value
    scipy.io.savemat(mat, {"handPara": para})
    if np.isfinite(value):  # read fine; the frame's joints are refused when it is converted
        tasks = stb.list_frames(work, ["B2Random"])["train"]
        with pytest.raises(RawDataError, match=r"SK_color_0.png \(its handPara label\): expected joint depths"):
            stb.load_frame(tasks[0].source, __import__("data_prep._rgb_common", fromlist=["x"]).CropConfig())
    else:
        with pytest.raises(RawDataError, match=f"{mat}: 'handPara': expected finite"):
            stb.list_frames(work, ["B2Random"])
    # RHD: one coordinate of sample 0's xyz
    path = trees["files"]["rhd_anno"]
    anno = pickle.load(open(path, "rb"))
    anno[0]["xyz"] = np.array(anno[0]["xyz"], dtype=np.float64)
    anno[0]["xyz"][21 + 5, 0] = value  # sample 0 shows a right hand (rows 21-41)
    bad = str(tmp_path / "anno.pickle")
    pickle.dump(anno, open(bad, "wb"))
    if np.isfinite(value):
        with pytest.raises(RawDataError, match=r"hand 'xyz'\): expected the joints of one hand|hand 'xyz'\)"):
            ann = rhd.read_annotations(bad)[0]
            d = os.path.join(trees["rhd"], "training")
            rhd.load_frame(("rhd", *(os.path.join(d, s, "00000.png") for s in ("color", "depth", "mask")), ann),
                           __import__("data_prep._rgb_common", fromlist=["x"]).CropConfig())
    else:
        with pytest.raises(RawDataError, match=f"{bad}: sample 0: 'xyz': expected finite"):
            rhd.read_annotations(bad)


def test_pickle_that_calls_code_is_refused(tmp_path):
    """The annotation reader unpickles NumPy arrays and containers only: a pickle referencing os.system (a
    damaged or hostile file) raises instead of running it."""
    path = str(tmp_path / "anno_training.pickle")
    marker = str(tmp_path / "ran")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickle.dump({0: Evil()}, open(path, "wb"))
    with pytest.raises(RawDataError, match=f"{path}: expected a readable pickle.*posix.system|{path}: .*system"):
        rhd.read_annotations(path)
    assert not os.path.exists(marker)


def test_sample_ids_with_a_gap_raise(trees, tmp_path):
    """Sample ids name the PNGs; a damaged id (a gap, or two ids collapsed into one) raises."""
    anno = pickle.load(open(trees["files"]["rhd_anno"], "rb"))
    anno[5] = anno.pop(1)
    path = str(tmp_path / "anno.pickle")
    pickle.dump(anno, open(path, "wb"))
    with pytest.raises(RawDataError, match=f"{path}: expected the sample ids 0 .. 1"):
        rhd.read_annotations(path)
