"""Damaged raw depth datasets (NYU, ICVL, MSRA): truncated and bit-flipped PNG / .bin / .mat / label files,
PNGs of the wrong mode or bit depth, NaN / Inf / implausible joints.

What every case must do: raise ``RawDataError`` whose message names the file (and line, for label files) --
never another exception, a hang, or data read silently wrong. Where a format carries no checksum (the float
bytes of an MSRA .bin, the numbers of an uncompressed .mat, the digits of a label line), a damaged value cannot
be told from a real one; the properties then state exactly how much may change: only the values the flipped
bytes belong to, and nothing else. The valid trees come from ``tests/fixtures_raw.py``.
"""
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fixtures_raw
from _fuzz_helpers import (DEFAULT_EXAMPLES, PNG_FORMATS, corrupt, corruptions, fuzz_variants, pixels_for,
                           read_damaged, write_corrupted, write_png)
from data_prep import _raw_common as rc
from data_prep import icvl, msra, nyu

FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck))


class Trees(dict):
    """The fixture's dict, printed short in hypothesis reports (it holds whole files)."""

    def __repr__(self):
        return "<valid raw trees>"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_raw")
    nyu_root, icvl_root, msra_root = (str(root / n) for n in ("nyu", "icvl", "msra"))
    fixtures_raw.write_nyu(nyu_root, frames_per_split={"train": 2, "test": 1}, seed=3, kinects=1, source="capsule")
    fixtures_raw.write_icvl(icvl_root, num_train=2, num_rotated=1, test_counts=(1, 1), seed=3, source="capsule")
    fixtures_raw.write_msra(msra_root, subjects=("P0",), frames_per_gesture=2, seed=3, gestures=("1",),
                             source="capsule")
    files = {
        "nyu_png": os.path.join(nyu_root, "train", "depth_1_0000001.png"),
        "icvl_png": os.path.join(icvl_root, "Training", "Depth", "201403121135", "image_0000.png"),
        "nyu_mat": os.path.join(nyu_root, "train", "joint_data.mat"),
        "icvl_labels": os.path.join(icvl_root, "Training", "labels.txt"),
        "msra_joints": os.path.join(msra_root, "P0", "1", "joint.txt"),
        "msra_bin": os.path.join(msra_root, "P0", "1", "000000_depth.bin"),
    }
    originals = {k: open(p, "rb").read() for k, p in files.items()}
    return Trees({"root": str(root), "nyu": nyu_root, "icvl": icvl_root, "msra": msra_root, "files": files,
            "originals": originals})


PNGS = st.sampled_from(["nyu_png", "icvl_png"])
DECODERS = {"nyu_png": nyu.decode_depth_png, "icvl_png": icvl.decode_depth_png, "msra_bin": msra.read_depth_bin,
            "nyu_mat": nyu.read_joint_data, "msra_joints": msra.read_joints}


def restore(trees):
    for key, path in trees["files"].items():
        with open(path, "wb") as f:
            f.write(trees["originals"][key])


def _check_png(trees, key, op):
    path = trees["files"][key]
    try:
        if op[0] == "flip" and not write_corrupted(path, trees["originals"][key], op):
            return  # the flips cancelled out
        write_corrupted(path, trees["originals"][key], op)
        # Every byte of a PNG lies in a chunk with a CRC (or in the signature), so any damage must raise.
        with pytest.raises(rc.RawDataError, match=f"^{path}: expected"):
            DECODERS[key](path)
    finally:
        restore(trees)


test_damaged_png_always_raises, test_damaged_png_always_raises_many = fuzz_variants(
    _check_png, dict(key=PNGS, op=corruptions()),
    dict(key=PNGS, op=corruptions(max_flips=16)))


def _check_bin(trees, op):
    path = trees["files"]["msra_bin"]
    good = msra.read_depth_bin(path)
    try:
        changed = write_corrupted(path, trees["originals"]["msra_bin"], op)
        depth = read_damaged(msra.read_depth_bin, path, rc.RawDataError)
        if depth is None or not changed:
            return  # raised, or the flips cancelled out
        # No checksum in the format: a flipped float byte changes that pixel only (never the header: a header
        # flip changes the box size, so the byte count stops matching).
        assert op[0] == "flip" and min(changed) >= msra.HEADER_BYTES
        assert depth.shape == good.shape and depth.dtype == good.dtype and np.all(np.isfinite(depth))
        assert np.count_nonzero(depth != good) <= len({(p - msra.HEADER_BYTES) // 4 for p in changed})
        event("changed pixels only")
    finally:
        restore(trees)


test_damaged_msra_bin_raises_or_changes_only_the_flipped_pixels, test_damaged_msra_bin_many = fuzz_variants(
    _check_bin, dict(op=corruptions()),
    dict(op=corruptions(max_flips=16)))


def _check_mat(trees, op):
    path = trees["files"]["nyu_mat"]
    good = nyu.read_joint_data(path)
    try:
        write_corrupted(path, trees["originals"]["nyu_mat"], op)
        data = read_damaged(nyu.read_joint_data, path, rc.RawDataError)
        if data is None:
            return
        # Uncompressed MAT v5 has no checksum: a flip in a float64 changes that number. Every value is a
        # joint coordinate, so at most one per flipped byte may differ, the shapes stay, all finite.
        n_flips = len(op[1]) if op[0] == "flip" else 0  # a truncated file must always raise
        for key in ("joint_xyz", "joint_uvd"):
            assert data[key].shape == good[key].shape and np.all(np.isfinite(data[key]))
            assert np.count_nonzero(data[key] != good[key]) <= n_flips
        assert data["joint_names"] == good["joint_names"]
        event("changed values only")
    finally:
        restore(trees)


test_damaged_nyu_mat_raises_or_changes_only_the_flipped_values, test_damaged_nyu_mat_many = fuzz_variants(
    _check_mat, dict(op=corruptions()),
    dict(op=corruptions(max_flips=16)))


def _check_labels(trees, key, keep_fraction):
    """Truncate a label file; every frame the reader still returns must be exact, except the last number."""
    path = trees["files"][key]
    original = trees["originals"][key]
    try:
        data, _ = corrupt(original, ("truncate", keep_fraction))
        with open(path, "wb") as f:
            f.write(data)
        if key == "icvl_labels":
            good = icvl.read_labels(os.path.join(trees["icvl"], "Training", "labels.txt.orig"))
            call = lambda: icvl.read_labels(path)  # noqa: E731
        else:
            good = None
            call = lambda: msra.read_joints(path)  # noqa: E731
        got = read_damaged(lambda p: call(), path, rc.RawDataError)
        if got is None:
            return
        if key == "msra_joints":  # the frame count on line 1 catches every lost line
            truth = msra.read_joints(os.path.join(os.path.dirname(path), "joint.txt.orig"))
            assert got.shape == truth.shape
            values = got
        else:  # ICVL has no count: a cut at a line end loses the following frames (documented)
            assert 1 <= len(got) <= len(good)
            assert [g[1] for g in got] == [g[1] for g in good[:len(got)]]
            values, truth = np.stack([g[2] for g in got]), np.stack([g[2] for g in good[:len(got)]])
            if len(got) < len(good):
                event("ICVL lost trailing lines")
        # A cut inside the last number of the last line leaves a shorter, valid number: undetectable by the
        # format; it is the only value allowed to differ, and only when the file no longer ends in a newline.
        last = (len(values) - 1, values.shape[1] - 1, values.shape[2] - 1)
        diff = [tuple(d) for d in np.argwhere(values != truth)]
        assert diff in ([], [last]), diff
        if diff:
            assert not data.endswith(b"\n")
            event("last number cut")
    finally:
        restore(trees)



@settings(max_examples=DEFAULT_EXAMPLES, **FUZZ)
@given(key=st.sampled_from(["icvl_labels", "msra_joints"]), keep=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_label_files(trees, key, keep):
    for k, name in (("icvl_labels", "labels.txt.orig"), ("msra_joints", "joint.txt.orig")):
        copy = os.path.join(os.path.dirname(trees["files"][k]), name)
        if not os.path.exists(copy):
            shutil.copyfile(trees["files"][k], copy)
    _check_labels(trees, key, keep)


@pytest.mark.parametrize("fmt", PNG_FORMATS, ids=[f[0] for f in PNG_FORMATS])
def test_png_of_wrong_mode_or_bit_depth_raises(trees, fmt, tmp_path):
    """NYU takes only 8-bit RGB, ICVL only 16-bit greyscale; 16-bit RGB (which PIL reads as 8-bit) is refused."""
    for key, width, height, accepted in (("nyu_png", 640, 480, "RGB"), ("icvl_png", 320, 240, "I;16")):
        path = str(tmp_path / f"{key}.png")
        write_png(path, pixels_for(fmt, width, height), fmt[1], fmt[2])
        if fmt[0] == accepted:
            assert DECODERS[key](path).shape == (height, width)
        else:
            with pytest.raises(rc.RawDataError, match=f"^{path}: expected .*found mode '{fmt[0]}'"):
                DECODERS[key](path)


BAD_VALUES = {"nan": "NaN", "inf": "Inf", "-1e9": "z in", "1e7": "joint depths z|bounding-box"}


@pytest.mark.parametrize("value", list(BAD_VALUES))
def test_non_finite_or_implausible_joints_raise(trees, tmp_path, value):
    """One coordinate replaced in each dataset's annotation: the conversion refuses the file (naming it)."""
    import scipy.io

    bad = float(value)
    work = str(tmp_path / "tree")
    # NYU: joint_xyz of frame 1, joint 5, z
    shutil.copytree(trees["nyu"], os.path.join(work, "nyu"))
    mat_path = os.path.join(work, "nyu", "train", "joint_data.mat")
    mat = scipy.io.loadmat(mat_path)
    mat["joint_xyz"][0, 0, 5, 2] = bad
    scipy.io.savemat(mat_path, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(rc.RawDataError, match=f"{mat_path}.*({BAD_VALUES[value]})"):
        nyu.list_frames(os.path.join(work, "nyu"), "train")
    # ICVL: the d of joint 3 on line 1
    shutil.copytree(trees["icvl"], os.path.join(work, "icvl"))
    lab = os.path.join(work, "icvl", "Training", "labels.txt")
    lines = open(lab).read().splitlines(True)
    parts = lines[0].split()
    parts[1 + 3 * 3 + 2] = value
    lines[0] = " ".join(parts) + "\n"
    open(lab, "w").writelines(lines)
    with pytest.raises(rc.RawDataError, match=f"{lab}:1: .*({BAD_VALUES[value]}|d > 0)"):
        icvl.list_frames(os.path.join(work, "icvl"), "train")
    # MSRA: z of joint 7 of frame 2 (stored negated, so the flipped sign is what the reader sees)
    path = os.path.join(trees["msra"], "P0", "1", "joint.txt")
    lines = open(path).read().splitlines(True)
    parts = lines[2].split()
    parts[7 * 3 + 2] = value if value in ("nan", "inf") else str(-bad)
    lines[2] = " ".join(parts) + "\n"
    mpath = str(tmp_path / "joint.txt")
    open(mpath, "w").writelines(lines)
    with pytest.raises(rc.RawDataError, match=f"{mpath}.*(NaN|z < 0)") if value in ("nan", "inf", "-1e9") else \
            pytest.raises(rc.RawDataError, match=f"{mpath}:3: .*({BAD_VALUES[value]})"):
        joints = msra.read_joints(mpath)
        for i, j in enumerate(joints):
            rc.check_hand_joints(j, f"{mpath}:{i + 2}", msra.SPEC.depth_range)


def test_conversion_in_worker_processes_reports_a_damaged_png(trees, tmp_path):
    """A damaged PNG found by a worker process reaches the caller as the same clear error (no hang)."""
    work = str(tmp_path / "nyu")
    shutil.copytree(trees["nyu"], work)
    png = os.path.join(work, "train", "depth_1_0000002.png")
    data = open(png, "rb").read()
    open(png, "wb").write(data[:len(data) // 2])
    with pytest.raises(rc.RawDataError, match=f"{png}: expected .*truncated"):
        nyu.convert(work, str(tmp_path / "out"), splits=("train",), num_workers=2, shard_size=1, progress=False)


def _segfault(data):
    import faulthandler
    import signal

    faulthandler.disable()
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_crash_of_the_mat_parser_is_a_clear_error(trees, monkeypatch):
    """scipy.io.loadmat segfaults on some damaged files (found by the fuzz above); read_mat runs it in a child
    process, so a crash there becomes RawDataError naming the file (simulated here by a child that segfaults)."""
    from data_prep import _raw_io

    monkeypatch.setattr(_raw_io, "_loadmat_bytes", _segfault)
    path = trees["files"]["nyu_mat"]
    with pytest.raises(rc.RawDataError, match=f"^{path}: expected .*crashed"):
        nyu.read_joint_data(path)


@pytest.mark.slow
def test_real_scipy_crashes_are_caught(trees):
    """Seeded random flips (1-16 bytes) of the NYU .mat: about 2 % crash scipy's reader; every case raises
    RawDataError or changes only flipped values, and at least one crash is met and reported as such."""
    path, original = trees["files"]["nyu_mat"], trees["originals"]["nyu_mat"]
    rng = np.random.default_rng(0)
    crashed = 0
    try:
        for _ in range(400):
            flips = [(float(rng.random()), int(rng.integers(1, 256))) for _ in range(int(rng.integers(1, 17)))]
            write_corrupted(path, original, ("flip", flips))
            try:
                nyu.read_joint_data(path)
            except rc.RawDataError as e:
                crashed += "crashed" in str(e)
    finally:
        restore(trees)
    assert crashed >= 1


def test_icvl_test_split_of_another_size_is_reported(trees, caplog):
    """ICVL label files have no frame count; a test split whose size differs from the published 1,596 frames
    (e.g. a file cut at a line end) is logged as a warning naming the directory."""
    with caplog.at_level("WARNING", logger="data_prep.icvl"):
        tasks = icvl.list_frames(trees["icvl"], "test")
    assert len(tasks) == 2
    assert any("2 test frames listed, the published test split has 1596" in r.getMessage() and
               os.path.join(trees["icvl"], "Testing") in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="data_prep.icvl"):
        icvl.list_frames(trees["icvl"], "test", max_frames=1)  # a deliberate subset: no warning
    assert not caplog.records


def _read_in_daemon(path, queue):
    try:
        queue.put(len(nyu.read_joint_data(path)["joint_xyz"][0]))
    except Exception as e:  # reported to the parent
        queue.put(repr(e))


def test_mat_reader_works_inside_a_pool_worker(trees):
    """A daemonic worker (multiprocessing.Pool) may not start the child process read_mat uses: it reads in
    place there instead of failing."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_daemon, args=(trees["files"]["nyu_mat"], queue), daemon=True)
    proc.start()
    proc.join(60)
    assert queue.get(timeout=5) == 2
