"""The next epoch is prepared in the background without changing any epoch's batches (resume contract)."""
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from hsr_tf.train import pipeline
from tests.test_train_pipeline import write_tiny_shards


def _ids(ds, n=None):
    ds = ds if n is None else ds.take(n)
    return [b["frame_id"].numpy().tolist() for b in ds]


def test_prefetching_keeps_every_epochs_batches(tmp_path):
    d = write_tiny_shards(tmp_path, n_train=40)
    plain = pipeline.epoch_dataset_fn(str(d), batch_size=8, seed=3, augment=True, prefetch_next_epoch=False)
    fast = pipeline.epoch_dataset_fn(str(d), batch_size=8, seed=3, augment=True, prefetch_batches=2)
    want = {e: [b for b in plain(e)] for e in range(3)}
    # The training loop's pattern: one batch of epoch 0 to build the model, then epochs 0, 1, 2 in turn;
    # then a restart in the middle of epoch 1 (take/skip) and a second pass over epoch 0.
    first = next(iter(fast(0).take(1)))
    np.testing.assert_array_equal(first["points"], want[0][0]["points"])
    for e in range(3):
        got = list(fast(e).take(5))
        assert len(got) == 5
        for g, w in zip(got, want[e]):
            for k in w:
                np.testing.assert_array_equal(g[k], w[k], err_msg=f"epoch {e}, {k}")
    assert _ids(fast(1).take(5).skip(2)) == [w["frame_id"].numpy().tolist() for w in want[1][2:]]
    assert _ids(fast(0)) == [w["frame_id"].numpy().tolist() for w in want[0]]


class _Recorder:
    """A stand-in for the per-epoch pipeline: records when each epoch is built, can fail or be slow."""

    def __init__(self, fail_epoch=None, build_delay=0.0):
        self.built = []
        self.fail_epoch = fail_epoch
        self.build_delay = build_delay
        self.lock = threading.Lock()

    def __call__(self, epoch):
        with self.lock:
            self.built.append(epoch)
        time.sleep(self.build_delay)
        if epoch == self.fail_epoch:
            raise ValueError(f"shard of epoch {epoch} is corrupt")
        return tf.data.Dataset.range(epoch * 100, epoch * 100 + 6).map(lambda i: {"frame_id": i})


def test_next_epoch_is_built_while_the_current_one_is_consumed():
    rec = _Recorder(build_delay=0.3)
    fn = pipeline._EpochPrefetcher(rec, depth=2)
    it = iter(fn(0))
    assert int(next(it)["frame_id"]) == 0
    deadline = time.time() + 10
    while 1 not in rec.built and time.time() < deadline:
        time.sleep(0.02)
    assert 1 in rec.built, rec.built  # epoch 1 started before anybody asked for it
    rest = [int(b["frame_id"]) for b in it]
    assert rest == [1, 2, 3, 4, 5]
    calls_before = rec.built.count(1)
    t0 = time.perf_counter()
    assert [int(b["frame_id"]) for b in fn(1)] == list(range(100, 106))
    assert rec.built.count(1) == calls_before  # the prepared pipeline was used, not rebuilt
    assert time.perf_counter() - t0 < 5


def test_a_failure_in_the_prepared_epoch_is_raised_when_it_is_read():
    rec = _Recorder(fail_epoch=1)
    fn = pipeline._EpochPrefetcher(rec, depth=2)
    assert [int(b["frame_id"]) for b in fn(0)] == list(range(6))
    with pytest.raises(Exception, match="shard of epoch 1 is corrupt"):
        list(fn(1))
