from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import (
    CopyRequiredError,
    DtypeDriftError,
    Field,
    NumpyDataset,
    SampleIndexError,
    Schema,
    SchemaError,
    explain,
    zero_copy_collate,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ds(npy_files, **kw):
    return NumpyDataset({k: str(v) for k, v in npy_files.items()}, **kw)


def test_schema_frozen_from_files(npy_files):
    ds = _ds(npy_files)
    assert len(ds) == 100
    assert ds.schema == Schema({"image": Field(torch.uint8, (3, 4, 4)), "label": Field(torch.int64)})


def test_declared_schema_must_match(npy_files):
    _ds(npy_files, schema={"image": Field(torch.uint8, (3, 4, 4)), "label": Field(torch.int64)})
    with pytest.raises(DtypeDriftError, match="columns gives uint8.*declared schema expects float32"):
        _ds(npy_files, schema={"image": Field(torch.float32, (3, 4, 4)), "label": Field(torch.int64)})
    with pytest.raises(SchemaError, match="declared fields"):
        _ds(npy_files, schema={"image": Field(torch.uint8, (3, 4, 4))})


def test_in_place_ops_never_reach_the_file(npy_files):
    before = _sha(npy_files["image"])
    ds = _ds(npy_files)
    seq = next(iter(DataLoader(ds, batch_size=10, collate_fn=zero_copy_collate)))
    seq["image"].zero_()
    shuf = next(iter(DataLoader(ds, batch_size=10, shuffle=True, collate_fn=zero_copy_collate)))
    shuf["image"].add_(1)
    assert _sha(npy_files["image"]) == before
    # documented: a write through a view is seen by later reads in this process ...
    assert int(ds[0]["image"].sum()) == 0
    # ... and never by a fresh process or a new mapping
    assert np.load(npy_files["image"])[0].sum() > 0


def test_copy_true_isolates_batches(npy_files):
    ds = _ds(npy_files, copy=True)
    batch = next(iter(DataLoader(ds, batch_size=10, collate_fn=zero_copy_collate)))
    assert not np.shares_memory(batch["image"].numpy(), ds.columns()["image"])
    batch["image"].zero_()
    assert ds[0]["image"].sum() > 0
    report = explain(DataLoader(ds, batch_size=10, collate_fn=zero_copy_collate), batches=2)
    assert report.bytes_copied == 2 * 10 * (48 + 8)
    assert {r.reason for r in report.rows if r.stage != "pin"} == {"gather: copy=True"}


def test_mismatched_lengths_named():
    with pytest.raises(SchemaError, match="field 'b': has 3 samples but field 'a' has 4"):
        NumpyDataset({"a": np.zeros(4), "b": np.zeros(3)})


@pytest.mark.parametrize(
    ("array", "error", "needle"),
    [
        (np.zeros(4, dtype=">f8"), CopyRequiredError, "big-endian"),
        (np.array([1, "x"], dtype=object), SchemaError, "object arrays"),
        (np.array(["a", "b"]), CopyRequiredError, "numeric"),
        (np.float32(1.0), SchemaError, "expected an np.ndarray"),
        (np.zeros(()), SchemaError, "sample axis"),
    ],
)
def test_bad_columns_rejected_at_construction(array, error, needle):
    with pytest.raises(error, match=needle) as err:
        NumpyDataset({"x": array})
    assert "'x'" in str(err.value)


def test_lists_are_refused():
    with pytest.raises(SchemaError, match=r"field 'x': expected an np.ndarray or a .npy path, found list"):
        NumpyDataset({"x": [1, 2, 3]})


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="field 'x'"):
        NumpyDataset({"x": tmp_path / "nope.npy"})
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file at all")
    with pytest.raises(SchemaError, match="field 'x'.*not a readable .npy"):
        NumpyDataset({"x": bad})
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SchemaError, match="field 'x'"):
        NumpyDataset({"x": pickled})


def test_read_only_arrays(tmp_path):
    ro = np.arange(10, dtype=np.int32)
    ro.flags.writeable = False
    with pytest.raises(CopyRequiredError, match="read-only.*copy=True"):
        NumpyDataset({"x": ro})
    ds = NumpyDataset({"x": ro}, copy=True)
    assert zero_copy_collate(ds.__getitems__([0, 1]))["x"].tolist() == [0, 1]
    path = tmp_path / "x.npy"
    np.save(path, np.arange(10, dtype=np.int32))
    mm = NumpyDataset({"x": np.load(path, mmap_mode="r")})  # a read-only memmap is remapped privately
    batch = zero_copy_collate(mm.__getitems__([2, 3]))
    batch["x"].neg_()
    assert np.load(path)[2] == 2


def test_out_of_range_indices_from_a_sampler(npy_files):
    ds = _ds(npy_files)
    loader = DataLoader(ds, batch_sampler=[[0, 1], [5, 100]], collate_fn=zero_copy_collate)
    it = iter(loader)
    next(it)
    with pytest.raises(SampleIndexError, match=r"index 100 \(position 1 in the batch\) is out of range .* 100 samples"):
        next(it)
    with pytest.raises(SampleIndexError):
        ds[-101]


def test_negative_indices_resolve_like_python(npy_files):
    ds = _ds(npy_files)
    batch = zero_copy_collate(ds.__getitems__([-1, -2]))
    assert batch["label"].tolist() == [99, 98]
    run = zero_copy_collate(ds.__getitems__([-3, -2, -1]))
    assert np.shares_memory(run["label"].numpy(), ds.columns()["label"])


def test_file_backed_columns_pickle_as_paths(npy_files):
    ds = _ds(npy_files)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # the 4.8 KB of pixels stay in the file
    again = pickle.loads(blob)
    assert torch.equal(
        zero_copy_collate(again.__getitems__([3, 1]))["image"], zero_copy_collate(ds.__getitems__([3, 1]))["image"]
    )


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_workers_deliver_the_source(npy_files, ctx, shuffle):
    ds = _ds(npy_files)
    loader = DataLoader(
        ds, batch_size=16, shuffle=shuffle, num_workers=2, collate_fn=zero_copy_collate, multiprocessing_context=ctx
    )
    images = np.load(npy_files["image"])
    seen = []
    for batch in loader:
        idx = batch["label"].numpy()
        assert np.array_equal(batch["image"].numpy(), images[idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(100))
