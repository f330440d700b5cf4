from __future__ import annotations

import gc

import numpy as np
import torch

from zcopy_data import NumpyDataset, zero_copy_collate
from zcopy_data.memory.policy import HostAllocation


def _gather(ds, idx):
    return zero_copy_collate(ds.__getitems__(idx))["x"]


def _dataset():
    return NumpyDataset({"x": np.arange(64 * 3, dtype=np.int32).reshape(64, 3)})


def test_dropped_batches_are_reused_held_ones_never_overwritten():
    ds = _dataset()
    held = [_gather(ds, [i, 40, 2 * i + 1]) for i in range(8)]
    assert len({t.data_ptr() for t in held}) == 8  # all held: every batch has its own buffer
    for i, t in enumerate(held):  # and none was overwritten by a later gather
        assert np.array_equal(t.numpy(), ds.columns()["x"][[i, 40, 2 * i + 1]])
    del held, t
    gc.collect()
    first = _gather(ds, [5, 1, 9]).data_ptr()
    second = _gather(ds, [5, 1, 9]).data_ptr()  # the first batch was dropped at once
    assert first == second


def test_a_view_or_array_keeps_the_buffer_busy():
    ds = _dataset()
    batch = _gather(ds, [3, 0, 7])
    row = batch[1]
    arr = batch.numpy()
    ptr = batch.data_ptr()
    del batch
    assert _gather(ds, [4, 0, 7]).data_ptr() != ptr
    del row
    assert _gather(ds, [4, 0, 7]).data_ptr() != ptr  # the NumPy array still references it
    assert arr.tolist() == ds.columns()["x"][[3, 0, 7]].tolist()
    del arr
    assert _gather(ds, [4, 0, 7]).data_ptr() == ptr


def test_pool_stays_bounded():
    alloc = HostAllocation(per_shape=4)
    pool = alloc.pool
    for n in range(pool.keys + 5):
        alloc((n + 1, 2), torch.float32)
    assert len(pool._bufs) <= pool.keys
    held = [alloc((7, 7), torch.uint8) for _ in range(pool.per_key + 3)]
    assert len({t.data_ptr() for t in held}) == len(held)
    assert len(pool._bufs[((7, 7), torch.uint8)]) == pool.per_key
