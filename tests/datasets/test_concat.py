"""``concat``: zero-copy datasets end to end stay on the batched path (a view or one gather)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset, NumpyDataset, ZeroCopyDataset
from zcopy_data.datasets.concat import concat
from zcopy_data.errors import SchemaError
from zcopy_data.ledger import LEDGER

N = 300


@pytest.fixture
def parts(tmp_path: Path) -> tuple[list[ZeroCopyDataset], np.ndarray]:
    x = np.arange(N * 4, dtype=np.float32).reshape(N, 4)
    y = np.arange(N, dtype=np.int64)
    path = tmp_path / "a.arrow"
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x[:100].ravel()), 4), "y": pa.array(y[:100])})
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=30)
    np.save(tmp_path / "x.npy", x[100:200])
    members = [
        ArrowDataset(path),
        NumpyDataset({"x": tmp_path / "x.npy", "y": y[100:200].copy()}),
        NumpyDataset({"x": x[200:].copy(), "y": y[200:].copy()}),
    ]
    return members, x


def test_a_batch_across_members_is_one_gather_per_field(parts):
    members, x = parts
    ds = concat(*members)
    assert len(ds) == N
    idx = np.random.default_rng(0).permutation(N)[:64]
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(idx))
    assert torch.equal(batch["x"], torch.from_numpy(x[idx])) and torch.equal(batch["y"], torch.from_numpy(idx))
    rows = {r.field: r for r in LEDGER.rows}
    assert rows["x"].bytes_copied == 64 * 16 and rows["x"].events == 1
    assert rows["y"].bytes_copied == 64 * 8 and rows["y"].events == 1
    assert "concatenated" in rows["x"].reason


def test_a_batch_inside_one_member_is_its_view(parts):
    members, x = parts
    ds = concat(*members)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(range(130, 170)))
    assert np.array_equal(batch["x"].numpy(), x[130:170]) and LEDGER.bytes_copied == 0
    assert np.shares_memory(batch["x"].numpy(), members[1].columns()["x"])
    assert ds.batch_is_view((130, 170)) and not ds.batch_is_view((90, 110))


def test_torch_concat_dataset_is_unpacked_and_loads_batched(parts):
    members, x = parts
    ds = concat(ConcatDataset(members[:2]), members[2])
    assert len(ds.members) == 3
    loader = DataLoader(ds, batch_size=32, shuffle=True, collate_fn=zero_copy_collate)
    seen = []
    for b in loader:
        assert torch.equal(b["x"], torch.from_numpy(x[b["y"].numpy()]))
        seen += b["y"].tolist()
    assert sorted(seen) == list(range(N))


def test_members_without_row_views_are_placed_with_a_counted_copy(parts, tmp_path):
    members, x = parts
    for s in range(2):
        np.save(tmp_path / f"s{s}.npy", x[200 + 50 * s : 250 + 50 * s])
    np.save(tmp_path / "y.npy", np.arange(200, 300))
    sharded = NumpyDataset({"x": str(tmp_path / "s*.npy"), "y": tmp_path / "y.npy"})
    ds = concat(members[0], sharded)
    idx = np.array([5, 150, 101, 0, 199])
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(idx))
    want = np.concatenate([x[:100], x[200:]])[idx]
    assert torch.equal(batch["x"], torch.from_numpy(want))
    placed = [r for r in LEDGER.rows if "placed" in r.reason and r.field == "x"]
    assert placed and placed[0].bytes_copied == 5 * 16


def test_members_must_share_one_schema(parts):
    members, _ = parts
    with pytest.raises(SchemaError, match="member 1 has fields"):
        concat(members[0], NumpyDataset({"z": np.zeros(3)}))
