"""Device-resident datasets on the CPU device: the same batches as the host dataset, the upload
counted once, every batch a view or one gather of the resident columns, through real loaders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from zcopy_data import (
    BlockShuffleSampler,
    DeviceMemoryError,
    LazyShuffleSampler,
    NumpyDataset,
    SchemaError,
    ZeroCopyDataLoader,
    to_device_resident,
    zero_copy_collate,
)
from zcopy_data.ledger import capture


@pytest.fixture
def host(tmp_path: Path) -> NumpyDataset:
    x = np.random.default_rng(0).integers(0, 255, (500, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    y, w = np.arange(500, dtype=np.int64), np.arange(500, dtype=np.uint16)
    return NumpyDataset({"x": tmp_path / "x.npy", "y": y, "w": w})


def test_the_upload_is_counted_once_and_batches_are_views_or_gathers(host: NumpyDataset) -> None:
    with capture() as records:
        resident = to_device_resident(host, "cpu")
    uploads = [r for r in records if r[2].startswith("upload")]
    assert {r[1] for r in uploads} == {"x", "y", "w"} and sum(r[4] for r in uploads) == 500 * (48 + 8 + 2)
    assert resident.schema == host.schema and len(resident) == 500
    with capture() as records:
        view = zero_copy_collate(resident.__getitems__(list(range(100, 132))))
    assert sum(r[4] for r in records) == 0  # a view of the resident columns
    col = resident._columns["x"]
    assert col.data_ptr() <= view["x"].data_ptr() < col.data_ptr() + col.numel()
    idx = [7, 499, 3, 250]
    with capture() as records:
        gathered = zero_copy_collate(resident.__getitems__(idx))
    assert sum(r[4] for r in records) == 4 * (48 + 8 + 2)
    expect = zero_copy_collate(host.__getitems__(idx))
    assert all(torch.equal(gathered[k], expect[k]) for k in ("x", "y", "w"))
    assert gathered["w"].dtype == torch.uint16


@pytest.mark.parametrize("kind", ["shuffle", "lazy", "block"])
def test_every_sampler_gives_the_host_datasets_batches(host: NumpyDataset, kind: str) -> None:
    resident = to_device_resident(host, "cpu")

    def loader(ds):
        if kind == "shuffle":
            return ZeroCopyDataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(2))
        sampler = LazyShuffleSampler(ds, 64, seed=1) if kind == "lazy" else BlockShuffleSampler(ds, 64, seed=1)
        return ZeroCopyDataLoader(ds, batch_sampler=sampler)

    got, want = list(loader(resident)), list(loader(host))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("x", "y", "w"))
    assert sorted(torch.cat([b["y"] for b in got]).tolist()) == list(range(500))


def test_a_resumed_resident_loader_continues_where_it_stopped(host: NumpyDataset) -> None:
    resident = to_device_resident(host, "cpu")

    def loader() -> ZeroCopyDataLoader:
        return ZeroCopyDataLoader(resident, batch_sampler=LazyShuffleSampler(resident, 50, seed=5))

    first = loader()
    it = iter(first)
    before = [next(it)["y"] for _ in range(3)]
    again = loader()
    again.load_state_dict(first.state_dict())
    assert torch.equal(torch.cat(before + [b["y"] for b in again]), torch.cat([b["y"] for b in loader()]))


def test_it_refuses_what_it_cannot_hold(host: NumpyDataset) -> None:
    with pytest.raises(SchemaError, match="needs a columnar ZeroCopyDataset"):
        to_device_resident(torch.utils.data.TensorDataset(torch.zeros(3)), "cpu")  # type: ignore[arg-type]
    # 2**44 bytes seen through a zero stride: more than any machine's free memory, none allocated
    huge = NumpyDataset({"x": np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2**40, 16), (0, 0))})
    with pytest.raises(DeviceMemoryError, match=r"need 16777216.0 MiB on cpu, .* MiB are free; keep the dataset"):
        to_device_resident(huge, "cpu")
    resident = to_device_resident(host, "cpu")
    refused = "cannot be sent to a worker process; use num_workers=0"
    with warnings.catch_warnings(), pytest.raises(TypeError, match=refused):
        warnings.simplefilter("ignore", UserWarning)  # torch's own note on the pickling error comes first
        list(torch.utils.data.DataLoader(resident, batch_size=10, num_workers=1, multiprocessing_context="spawn"))
    assert issubclass(DeviceMemoryError, MemoryError)


@pytest.mark.cuda
def test_a_cuda_resident_dataset_gives_the_host_batches_on_the_device(host: NumpyDataset) -> None:
    resident = to_device_resident(host, "cuda")
    idx = [9, 2, 400, 33]
    got = zero_copy_collate(resident.__getitems__(idx))
    want = zero_copy_collate(host.__getitems__(idx))
    for k in ("x", "y", "w"):
        assert got[k].is_cuda and torch.equal(got[k].cpu(), want[k])
    view = zero_copy_collate(resident.__getitems__(list(range(64))))
    assert view["x"].is_cuda and view["x"].data_ptr() == resident._columns["x"].data_ptr()
