"""The one recording collate: a batch travels with the records its assembly made, counted once."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader

from zcopy_data import LEDGER, NumpyDataset, zero_copy_collate
from zcopy_data.ledger import COLLATE, CROSS
from zcopy_data.memory.policy import HostAllocation
from zcopy_data.recording import LedgerBatch, RecordingCollate, unwrap


def _ds() -> NumpyDataset:
    return NumpyDataset({"x": np.arange(64, dtype=np.int64)})


def test_records_of_this_process_are_not_counted_twice() -> None:
    ds = _ds()
    LEDGER.reset()
    collate = RecordingCollate(zero_copy_collate)
    out = collate(ds.__getitems__([3, 1]), allocation=HostAllocation())  # keywords reach the collate
    assert isinstance(out, LedgerBatch) and not out.in_worker
    assert [(r[0], r[4]) for r in out.records] == [(COLLATE, 16)]
    before = LEDGER.bytes_copied
    assert torch.equal(unwrap(out)["x"], torch.tensor([3, 1]))
    assert LEDGER.bytes_copied == before  # recorded here already
    assert unwrap({"plain": 1}) == {"plain": 1}


def test_records_made_in_a_worker_reach_the_main_ledger_with_the_crossing() -> None:
    loader = DataLoader(
        _ds(), batch_size=8, shuffle=True, num_workers=1, collate_fn=RecordingCollate(zero_copy_collate)
    )
    LEDGER.reset()
    batches = [unwrap(b) for b in loader]
    assert sum(len(b["x"]) for b in batches) == 64
    assert LEDGER.copied(COLLATE) == 64 * 8
    assert LEDGER.copied(CROSS) == 0  # gathered into shared memory: a handle crosses
    assert {r.reason for r in LEDGER.rows if r.stage == CROSS} == {
        "handle: pooled shared-memory buffer, mapped once by the main process"
    }


def test_a_partial_collate_is_wrapped_too() -> None:
    collate = RecordingCollate(functools.partial(zero_copy_collate, allocation=HostAllocation()))
    assert unwrap(collate(_ds().__getitems__([0, 1])))["x"].tolist() == [0, 1]
