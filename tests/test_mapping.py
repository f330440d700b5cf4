"""File views cross as descriptors: registered mappings, offsets, and the receiver's own mapping."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from zcopy_data import NumpyDataset, _mapping, strict_asarray
from zcopy_data._mapping import describe_file_view, rebuild_file_view, register_file_array
from zcopy_data.errors import FileChangedError


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cache of shared mappings and memmap registrations for each test.

    The range registry itself is left alone: a range of another test's mapping freed during this
    one must be forgotten in the registry that outlives the test, not in a stand-in.
    """
    monkeypatch.setattr(_mapping, "_by_array", weakref.WeakKeyDictionary())
    monkeypatch.setattr(_mapping, "_maps", weakref.WeakValueDictionary())


def _cross(t: torch.Tensor) -> torch.Tensor:
    d = describe_file_view(t)
    assert d is not None
    return rebuild_file_view(d)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int64, np.bool_])
def test_a_contiguous_view_crosses_as_path_and_offset(tmp_path: Path, dtype):
    data = (np.arange(200 * 6) % 7).astype(dtype).reshape(200, 2, 3)
    np.save(tmp_path / "x.npy", data)
    col = NumpyDataset({"x": str(tmp_path / "x.npy")}).columns()["x"]
    rng = register_file_array(col)
    assert rng is not None and rng.path == os.path.realpath(tmp_path / "x.npy")
    view = strict_asarray(col[10:30], field="x")
    d = describe_file_view(view)
    header = np.load(tmp_path / "x.npy", mmap_mode="r").offset
    assert d is not None
    assert d.offset == header + 10 * 6 * data.itemsize
    assert (d.shape, d.dtype) == ((20, 2, 3), view.dtype)
    out = _cross(view)
    assert torch.equal(out, torch.from_numpy(data[10:30]))
    assert out.data_ptr() != view.data_ptr()  # the receiver's own mapping of the file


def test_strided_view_keeps_its_strides(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.arange(300, dtype=np.float32).reshape(100, 3))
    col = NumpyDataset({"x": str(tmp_path / "x.npy")}).columns()["x"]
    register_file_array(col)
    view = torch.from_numpy(col[5:50:2, 1])
    out = _cross(view)
    assert out.stride() == view.stride() and torch.equal(out, view)


def test_the_receiver_reads_the_file_not_a_copy(tmp_path: Path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((64, 4), np.int64))
    col = NumpyDataset({"x": str(path)}).columns()["x"]
    register_file_array(col)
    out = _cross(torch.from_numpy(col[8:16]))
    base = np.frombuffer(_mapping._maps[(os.path.realpath(path), _mapping.identity_of(path))], dtype=np.uint8)
    assert base.ctypes.data <= out.data_ptr() < base.ctypes.data + base.nbytes
    writer = np.load(path, mmap_mode="r+")
    writer[9, 2] = 77  # another process writing the file: the private mapping's untouched pages follow it
    writer.flush()
    del writer
    assert out[1, 2].item() == 77


def test_in_memory_arrays_and_unregistered_tensors_have_no_descriptor():
    arr = np.arange(10)
    assert register_file_array(arr) is None
    assert describe_file_view(torch.from_numpy(arr)) is None
    assert describe_file_view(torch.arange(5)) is None


def test_a_read_only_memmap_remapped_privately_is_found(tmp_path: Path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(50, dtype=np.int32))
    col = NumpyDataset({"x": np.load(path, mmap_mode="r")}).columns()["x"]
    rng = register_file_array(col)
    assert rng is not None and rng.path == os.path.realpath(path)
    assert torch.equal(_cross(torch.from_numpy(col[3:9])), torch.arange(3, 9, dtype=torch.int32))


def test_a_file_replaced_under_the_loader_is_an_error(tmp_path: Path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(50, dtype=np.int64))
    col = NumpyDataset({"x": str(path)}).columns()["x"]
    register_file_array(col)
    d = describe_file_view(torch.from_numpy(col[0:5]))
    assert d is not None
    np.save(path, np.arange(60, dtype=np.int64))
    with pytest.raises(FileChangedError, match="after the dataset was built"):
        rebuild_file_view(d)


def _mapped_paths() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


@pytest.mark.parametrize("workers", [0, 2])
def test_mappings_no_dataset_or_batch_uses_are_released(tmp_path: Path, workers: int) -> None:
    """Streamed, deleted shards leave neither address space nor disk space behind."""
    import gc

    from torch.utils.data import DataLoader

    from zcopy_data import zero_copy_collate

    gc.collect()
    baseline = _mapping.mapping_count()
    paths = []
    for k in range(12 if workers == 0 else 3):
        path = tmp_path / f"shard{k}.npy"
        np.save(path, np.full((256, 1024), k, np.float32))  # 1 MiB
        paths.append(str(path))
        ds = NumpyDataset({"x": str(path)})
        loader = DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=zero_copy_collate)
        batches = list(loader)
        assert all(bool((b["x"] == k).all()) for b in batches)
        if workers:  # views crossed as descriptors: the main process mapped the shard itself
            assert path.name in _mapped_paths()
        del ds, loader, batches
        os.remove(path)
    gc.collect()
    assert _mapping.mapping_count() == baseline
    maps = _mapped_paths()
    assert not [p for p in paths if p in maps], "a deleted shard is still mapped"


def test_a_range_is_not_trusted_once_its_mapping_is_freed(tmp_path):
    """CPython unmaps an mmap before its finalizers run (the GIL released in between), and a worker
    forked in that window inherits the range: a range must die with its mapping, finalizer or not."""
    path = tmp_path / "a.npy"
    np.save(path, np.arange(1000, dtype=np.int64))
    arr = _mapping.file_array(path, 128, (1000,), np.dtype(np.int64), shared=False)
    start = arr.ctypes.data
    assert _mapping._range_holding(start) is not None
    assert _mapping.describe_file_view(torch.from_numpy(arr)) is not None
    key = next(k for k, r in _mapping._ranges.items() if r.start <= start < r.stop)
    rng, ref = _mapping._ranges[key], _mapping._owners[key]
    del arr
    gc.collect()
    assert key not in _mapping._ranges  # forgotten by its finalizer, normally
    # the state a worker forked in the window inherits: the mapping gone, its range still listed
    _mapping._ranges[key], _mapping._owners[key] = rng, ref
    assert ref() is None
    assert _mapping._range_holding(start) is None  # never used ...
    assert key not in _mapping._ranges and key not in _mapping._owners  # ... and dropped
