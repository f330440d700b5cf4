from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import LEDGER, NumpyDataset, explain, zero_copy_collate

BATCH = 16
SAMPLE_BYTES = 3 * 4 * 4 + 8  # uint8 (3, 4, 4) image + int64 label


def _loader(npy_files, **kw):
    ds = NumpyDataset({k: str(v) for k, v in npy_files.items()})
    return DataLoader(ds, batch_size=BATCH, collate_fn=zero_copy_collate, **kw)


def test_sequential_copies_nothing(npy_files):
    report = explain(_loader(npy_files), batches=4)
    assert report.batches == 4
    assert report.bytes_copied == 0
    assert report.bytes_viewed == 4 * BATCH * SAMPLE_BYTES
    text = str(report)
    assert "view: indices contiguous" in text and "total over 4 batches" in text


def test_shuffled_copies_exactly_the_batches(npy_files):
    report = explain(_loader(npy_files, shuffle=True), batches=3)
    assert report.bytes_copied == 3 * BATCH * SAMPLE_BYTES
    assert {r.reason for r in report.rows if r.stage != "pin"} == {"gather: indices not contiguous"}
    assert "gather: indices not contiguous" in str(report)


@pytest.mark.parametrize("shuffle", [False, True])
def test_counts_stay_exact_with_workers(npy_files, shuffle):
    report = explain(_loader(npy_files, shuffle=shuffle, num_workers=2), batches=4)
    assert report.batches == 4
    collate = report.copied("collate")
    assert collate == (4 * BATCH * SAMPLE_BYTES if shuffle else 0)
    events = sum(r.events for r in report.rows if r.stage == "collate")
    assert events == 4 * 2  # two fields, one record per field per batch: nothing per sample


def test_last_partial_batch_and_short_loaders(npy_files):
    report = explain(_loader(npy_files), batches=50)
    assert report.batches == 7  # 100 samples / 16 = 6 full batches + 1 partial
    assert report.bytes_viewed == 100 * SAMPLE_BYTES


def test_user_loader_is_untouched(npy_files):
    loader = _loader(npy_files)
    explain(loader, batches=2)
    assert loader.collate_fn is zero_copy_collate
    assert len(list(loader)) == 7


def test_pinning_without_accelerator_is_reported(npy_files):
    if torch.accelerator.is_available():
        pytest.skip("checks the CPU-only behaviour")
    with pytest.warns(UserWarning, match="pin_memory"):
        report = explain(_loader(npy_files, pin_memory=True), batches=1)
    pin = [r for r in report.rows if r.stage == "pin"]
    assert pin and all(r.bytes_copied == 0 for r in pin)


def test_process_ledger_accumulates_and_resets(npy_files):
    LEDGER.reset()
    list(_loader(npy_files, shuffle=True))
    assert LEDGER.bytes_copied == 100 * SAMPLE_BYTES
    LEDGER.reset()
    assert LEDGER.bytes_copied == 0 and LEDGER.rows == []


def test_batches_must_be_positive(npy_files):
    with pytest.raises(ValueError, match="batches=0"):
        explain(_loader(npy_files), batches=0)


def test_default_collate_loader_can_be_explained_too():
    ds = NumpyDataset({"x": np.zeros((8, 2), np.float32)})
    report = explain(DataLoader(ds, batch_size=4), batches=2)
    assert report.batches == 2  # default_collate records nothing: no zero-copy claim to make
    assert report.rows == []
