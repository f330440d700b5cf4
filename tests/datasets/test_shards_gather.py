"""The sharded gather: one ``index_select`` per field from a plan of the open shards, one copy per byte."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.support import run_isolated
from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset, NumpyDataset
from zcopy_data.errors import FileChangedError
from zcopy_data.ledger import LEDGER

N = 400


@pytest.fixture
def shards(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Eight pyarrow shards of 50 rows with 3-byte rows: chunk addresses that are no multiple of a row."""
    x = np.random.default_rng(0).integers(0, 255, (N, 3), dtype=np.uint8)
    paths = []
    for s in range(8):
        part = x[s * 50 : (s + 1) * 50]
        table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), 3)})
        paths.append(tmp_path / f"s-{s}.arrow")
        with pa.ipc.new_file(str(paths[-1]), table.schema) as w:
            w.write_table(table, max_chunksize=20)
    return paths, x


def test_every_batch_of_a_shuffled_epoch_is_one_counted_copy(shards):
    paths, x = shards
    ds = ArrowDataset(paths, max_open=8)
    order = np.random.default_rng(1).permutation(N)
    LEDGER.reset()
    for lo in range(0, N, 64):
        idx = order[lo : lo + 64]
        assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["x"], torch.from_numpy(x[idx]))
    assert LEDGER.bytes_copied == x.nbytes and all(r.events == 7 for r in LEDGER.rows)


@pytest.mark.reliability
def test_batches_past_max_open_still_gather_right(shards):
    paths, x = shards
    ds = ArrowDataset(paths, max_open=2)  # each batch touches more shards than may be open at once
    for seed in range(4):
        idx = np.random.default_rng(seed).permutation(N)[:50]
        assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["x"], torch.from_numpy(x[idx]))


@pytest.mark.reliability
def test_a_changed_shard_is_found_at_the_next_batch(shards):
    paths, _ = shards
    ds = ArrowDataset(paths)
    every = np.arange(0, N, 25)
    zero_copy_collate(ds.__getitems__(every))  # opens all eight
    os.utime(paths[5], ns=(1, 1))
    with pytest.raises(FileChangedError, match="s-5.arrow"):
        zero_copy_collate(ds.__getitems__(every))  # the very next batch: no batch reads the new bytes


def test_numpy_shards_gather_from_one_plan(tmp_path):
    a = np.arange(N * 5, dtype=np.int16).reshape(N, 5)
    for s in range(4):
        np.save(tmp_path / f"a-{s}.npy", a[s * 100 : (s + 1) * 100])
    ds = NumpyDataset({"a": str(tmp_path / "a-*.npy")})
    idx = np.random.default_rng(2).permutation(N)[:90]
    LEDGER.reset()
    assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["a"], torch.from_numpy(a[idx]))
    assert LEDGER.bytes_copied == a[idx].nbytes


@pytest.mark.reliability
def test_gather_threads_read_polars_shards_whose_span_is_strided(tmp_path: Path) -> None:
    # polars places each file's buffers at its own 64-byte offsets: rows of 3072 bytes then sit a
    # multiple of 1024 bytes apart across files, so the one source over every shard is a strided
    # view whose span also covers the unmapped gaps between the files. A gather that copied the
    # whole span first (np.take on a non-contiguous array) read those gaps: a segmentation fault.
    code = f"""
import numpy as np, polars as pl, pyarrow as pa
from zcopy_data import ZeroCopyDataLoader
from zcopy_data.datasets import ArrowDataset
img = np.random.default_rng(0).integers(0, 255, (6000, 3072), dtype=np.uint8)
table = pa.table({{"image": pa.FixedSizeListArray.from_arrays(pa.array(img.ravel()), 3072),
                  "label": pa.array(np.arange(6000))}})
for s in range(20):
    pl.from_arrow(table.slice(s * 300, 300)).write_ipc({str(tmp_path)!r} + f"/p{{s:02d}}.arrow")
ds = ArrowDataset({str(tmp_path)!r} + "/*.arrow")
source = ds._shards.planner.plan_for(np.arange(ds._shards.table.shard_of.size)).sources["image"][0]
assert not source.is_contiguous(), "the span is expected to be strided here"
loader = ZeroCopyDataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
assert loader.uses_threads
seen = []
for b in loader:
    labels = b["label"].numpy()
    assert np.array_equal(b["image"].numpy().reshape(len(labels), -1), img[labels])
    seen += labels.tolist()
assert sorted(seen) == list(range(6000))
print("OK")
"""
    done = run_isolated(code, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "OK", (done.returncode, done.stderr[-2000:])
