"""experiments.common.ensure_data: an interrupted render is finished or refused, never trained on half-done."""
import os

import h5py
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import common

FLAGS = flags.FLAGS
SMALL = dict(synth_num_subjects=2, synth_poses_per_subject=22, synth_views_per_pose=1, synth_workers=1,
             synth_noise="none", progress=False)


@pytest.fixture()
def parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()
    yield


def _points(path):
    with h5py.File(path, "r") as f:
        return f["points"][...]


def test_interrupted_render_is_finished_or_refused(tmp_path, parsed_flags, caplog):
    data = str(tmp_path / "synth")
    with flagsaver.flagsaver(data_dir=data, render_if_empty=True, **SMALL):
        common.ensure_data(data)
        names = sorted(n for n in os.listdir(data) if n.endswith(".h5"))
        assert names == ["test-00000.h5", "train-00000.h5"]
        want = _points(os.path.join(data, "train-00000.h5"))
        os.remove(os.path.join(data, "train-00000.h5"))  # as if the render had been killed before this shard
        with flagsaver.flagsaver(render_if_empty=False):
            with pytest.raises(FileNotFoundError, match=r"interrupted render \(1 planned shards missing, first "
                                                        r"train-00000\.h5\)"):
                common.ensure_data(data)
        common.ensure_data(data)  # resumes: the missing shard comes back identical
        np.testing.assert_array_equal(_points(os.path.join(data, "train-00000.h5")), want)
        # a complete set rendered with other settings is used as it is, with a warning naming them
        with flagsaver.flagsaver(synth_cone_deg=30.0):
            caplog.clear()
            common.ensure_data(data)
            assert "frame" in caplog.text and "other settings" in caplog.text
            # ... but an interrupted one with other settings is refused, naming the difference
            os.remove(os.path.join(data, "test-00000.h5"))
            with pytest.raises(FileNotFoundError, match=r"settings differ from the --synth_\* flags in \['frame'\]"):
                common.ensure_data(data)
        assert not os.path.exists(os.path.join(data, "test-00000.h5"))


def test_shards_without_manifest_are_used_as_they_are(tmp_path, parsed_flags):
    data = tmp_path / "other"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}-00000.h5").write_bytes(b"")  # not read: ensure_data only checks presence here
    with flagsaver.flagsaver(render_if_empty=False, **SMALL):
        common.ensure_data(str(data))
    empty = tmp_path / "empty"
    empty.mkdir()
    with flagsaver.flagsaver(render_if_empty=False, **SMALL):
        with pytest.raises(FileNotFoundError, match="expected train-\\*.h5 and test-\\*.h5 shards, found none"):
            common.ensure_data(str(empty))


def test_predict_demo_depth_shows_the_hand_at_the_returned_centre(tmp_path, parsed_flags):
    """render_demo_depth: a 16-bit depth PNG of a held-out subject, whole hand in view, centre on the hand."""
    from PIL import Image

    with flagsaver.flagsaver(**SMALL):
        png, (u, v, d) = common.render_demo_depth(str(tmp_path / "depth.png"))
    depth = np.asarray(Image.open(png)).astype(np.float64)
    assert depth.shape == (480, 640)
    rows, cols = np.nonzero(depth)
    assert rows.size > 300
    # in view with the renderer's margin: no hand pixel on the image border
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 479 and cols.max() < 639
    assert cols.min() <= u <= cols.max() and rows.min() <= v <= rows.max()
    assert depth[depth > 0].min() - 20 <= d <= depth.max() + 20
