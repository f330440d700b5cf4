"""Device-resident datasets: the columns uploaded once, every batch a view or one device gather.

When a dataset fits in device memory (CIFAR, MNIST, most tabular sets: 60k samples of 12 KiB are
0.7 GB), the fastest host loader is none at all. :func:`to_device_resident` copies the columns of a
columnar dataset to the device once, in chunks through a pinned staging buffer, after checking that
they fit; from then on a contiguous batch is a view of the device columns and any other batch is
one ``index_select`` on the device, so the host does index arithmetic only. Samplers, resume states
and the ledger work as for any dataset: the upload is counted once, each batch as a device view or
gather. With ``device="cpu"`` the same happens in host memory: the same batches on every build.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import DeviceMemoryError, SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, TRANSFER, record
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Schema
from zcopy_data.transfer._streams import resolve_device

__all__ = ["DeviceResidentDataset", "to_device_resident"]

_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
_CHUNK = 64 * 2**20


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def _upload(name: str, src: torch.Tensor, device: torch.device, progress: Any) -> torch.Tensor:
    """``src`` copied to ``device`` in row chunks (through one pinned buffer for an accelerator)."""
    dst = torch.empty(src.shape, dtype=src.dtype, device=device)
    rows = int(src.shape[0])
    row_bytes = max(1, nbytes(src) // max(1, rows))
    step = max(1, _CHUNK // row_bytes)
    staging = None
    if device.type != "cpu":
        staging = torch.empty((min(step, rows), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        if staging is None:
            dst[start:stop].copy_(src[start:stop])
        else:
            part = staging[: stop - start]
            part.copy_(src[start:stop])
            dst[start:stop].copy_(part, non_blocking=True)
            torch.accelerator.synchronize(device)  # the staging buffer is written again next
        if progress is not None:
            progress.update((stop - start) * row_bytes)
    record(TRANSFER, name, f"upload: resident on {device}, once", copied=nbytes(dst))
    return dst


class DeviceResidentDataset(ZeroCopyDataset):
    """A columnar dataset's columns held on ``device``; batches are device views or gathers."""

    def __init__(self, columns: dict[str, torch.Tensor], schema: Schema, device: torch.device) -> None:
        self._columns = columns
        self.device = device
        self.schema = schema
        self._n = int(next(iter(columns.values())).shape[0])

    def __len__(self) -> int:
        return self._n

    @property
    def threads_suffice(self) -> bool:
        return True

    def batch_is_view(self, run: Run | None) -> bool:
        return run is not None

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, torch.Tensor]:  # noqa: ARG002
        out: dict[str, torch.Tensor] = {}
        if run is not None:
            start, stop = run
            for name, col in self._columns.items():
                t = col[start:stop]
                record(COLLATE, name, f"view: resident rows on {self.device}", viewed=nbytes(t))
                out[name] = t
            return out
        rows = torch.from_numpy(indices).to(self.device, non_blocking=True)
        for name, col in self._columns.items():
            bits = _SAME_BITS.get(col.dtype)
            t = torch.index_select(col if bits is None else col.view(bits), 0, rows)
            t = t if bits is None else t.view(col.dtype)
            record(COLLATE, name, f"gather: on {self.device}", copied=nbytes(t))
            out[name] = t
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = as_index(index)
        if not -self._n <= i < self._n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {self._n} samples", index=i)
        return {name: col[i] for name, col in self._columns.items()}

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a device-resident dataset lives in this process's device memory and cannot be sent to a worker "
            "process; use num_workers=0 (the host only does index arithmetic) or ZeroCopyDataLoader's threads"
        )

    def __repr__(self) -> str:
        total = sum(nbytes(c) for c in self._columns.values())
        return f"DeviceResidentDataset({self._n} samples, {total / 2**20:.1f} MiB on {self.device}, {self.schema})"


def to_device_resident(
    dataset: ZeroCopyDataset, device: torch.device | str | int, *, progress: bool = False
) -> DeviceResidentDataset:
    """Upload ``dataset``'s columns to ``device`` once and serve its batches from there.

    Raises :class:`DeviceMemoryError` naming the bytes needed and free when they do not fit.
    ``progress`` shows a tqdm bar of the upload (when tqdm is installed).

    >>> import numpy as np
    >>> from zcopy_data import NumpyDataset
    >>> ds = to_device_resident(NumpyDataset({"x": np.arange(6, dtype=np.float32)}), "cpu")
    >>> ds.build_batch(np.array([4, 1]), None, None)["x"]
    tensor([4., 1.])
    """
    if not isinstance(dataset, ZeroCopyDataset) or not dataset.is_columnar or dataset.gathers_batches:
        raise SchemaError(
            f"to_device_resident needs a columnar ZeroCopyDataset (a NumpyDataset, or your subclass with "
            f"columns()), found {type(dataset).__name__}; write other sources into .npy columns first"
        )
    dev = resolve_device(device)
    dataset.check_sources()
    sources = dataset.column_tensors()
    need = sum(nbytes(t) for t in sources.values())
    free = _free_bytes(dev)
    if free is not None and need > free:
        raise DeviceMemoryError(
            f"the columns need {need / 2**20:.1f} MiB on {dev}, {free / 2**20:.1f} MiB are free; keep the dataset "
            "on the host (a DevicePrefetcher streams it) or choose fewer fields"
        )
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=need, unit="B", unit_scale=True, desc=f"upload to {dev}")
        except ImportError:
            bar = None
    try:
        columns = {name: _upload(name, t, dev, bar) for name, t in sources.items()}
    finally:
        if bar is not None:
            bar.close()
    return DeviceResidentDataset(columns, dataset.schema, dev)
