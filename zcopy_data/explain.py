"""``explain(loader)``: run a few batches and report every byte viewed or copied, and why."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from zcopy_data.collate.buffers import nbytes
from zcopy_data.collate.crossing import crossing_of
from zcopy_data.ledger import CopyLedger, Record, capture, record
from zcopy_data.loader import ZeroCopyDataLoader

__all__ = ["explain"]

CROSS = "worker->main"


class _Recorded(NamedTuple):
    """A batch with the ledger records made while assembling it (crosses from workers)."""

    batch: Any
    records: tuple[Record, ...]


class _RecordingCollate:
    """Wraps a collate_fn: returns the batch with the records its assembly produced."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Any) -> _Recorded:
        with capture() as records:
            batch = self.collate_fn(samples)
            if get_worker_info() is not None:
                _record_crossing(batch)
        return _Recorded(batch, tuple(records))


class _Take:
    """The first ``n`` items of a (batch) sampler, keeping ``len`` and ``set_epoch``."""

    def __init__(self, sampler: Iterable[Any], n: int) -> None:
        self.sampler, self.n = sampler, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.n)

    def __len__(self) -> int:
        try:
            return min(self.n, len(self.sampler))  # type: ignore[arg-type]
        except TypeError:
            return self.n


def _tensors(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path or "<batch>", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]" if path else str(i))


def _record_crossing(batch: Any) -> None:
    """In a worker: how each tensor of the batch will cross to the main process, and its cost."""
    for name, t in _tensors(batch):
        if t.device.type != "cpu":
            continue
        how = crossing_of(t)
        if how == "handle":
            record(
                CROSS, name, "handle: pooled shared-memory buffer, mapped once by the main process", viewed=nbytes(t)
            )
        elif how == "descriptor":
            record(
                CROSS, name, "descriptor: view of a memory-mapped file, mapped by the main process", viewed=nbytes(t)
            )
        elif how == "shared":
            record(CROSS, name, "handle: buffer already in shared memory", viewed=nbytes(t))
        else:
            record(
                CROSS, name, "pickle: storage not in shared memory, copied into it", copied=t.untyped_storage().nbytes()
            )


def _record_threads(batch: Any) -> None:
    """Batches of a gather thread are already in this process: nothing crosses."""
    for name, t in _tensors(batch):
        record(CROSS, name, "none: assembled by a worker thread in this process", viewed=nbytes(t))


def _record_pin(batch: Any, loader: DataLoader[Any]) -> None:
    """Whether the pin stage was free (gathered into pinned memory), a copy, or skipped."""
    from zcopy_data.transfer.pinned import is_pinned_gather  # lazy: transfer imports the collate package

    for name, t in _tensors(batch):
        if t.device.type != "cpu":
            continue
        if is_pinned_gather(t):
            record("pin", name, "free: gathered straight into pinned memory", viewed=nbytes(t))
        elif not loader.pin_memory:
            continue
        elif t.is_pinned():
            record("pin", name, "DataLoader pin_memory=True: pin thread copied into pinned memory", copied=nbytes(t))
        else:
            record("pin", name, "skipped: no accelerator to pin for", viewed=nbytes(t))


def explain(loader: DataLoader[Any], batches: int = 8) -> CopyLedger:
    """Run ``batches`` batches of a loader's configuration and account for every copy.

    The loader is rebuilt with the same dataset, sampler, collate_fn, workers and pinning, its
    sampler cut to ``batches`` batches, so the records of every batch produced (in worker
    processes too) reach the report, and the user's loader and its workers are left untouched.

    >>> import numpy as np
    >>> from torch.utils.data import DataLoader
    >>> from zcopy_data import NumpyDataset, zero_copy_collate
    >>> ds = NumpyDataset({"x": np.zeros((64, 8), np.float32)})
    >>> explain(DataLoader(ds, batch_size=16, collate_fn=zero_copy_collate), batches=2).bytes_copied
    0
    """
    if batches < 1:
        raise ValueError(f"{batches=} should be >= 1")
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": _RecordingCollate(loader.collate_fn or default_collate),
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if isinstance(loader.dataset, IterableDataset):
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    elif loader.batch_sampler is not None:
        kwargs["batch_sampler"] = _Take(loader.batch_sampler, batches)
    else:
        kwargs.update(sampler=_Take(loader.sampler, batches), batch_size=None)
    threads = False
    if isinstance(loader, ZeroCopyDataLoader):
        threads = loader.uses_threads
        # the recording collate is not zero_copy_collate itself: keep the worker kind explicitly
        kwargs["worker_mode"] = "threads" if threads else ("processes" if loader.num_workers else "auto")
        probe: DataLoader[Any] = ZeroCopyDataLoader(loader.dataset, **kwargs)
    else:
        probe = DataLoader(loader.dataset, **kwargs)

    ledger = CopyLedger()
    it = iter(probe)
    try:
        for item in itertools.islice(it, batches):
            ledger.extend(item.records)
            with capture() as main_records:
                if threads:
                    _record_threads(item.batch)
                _record_pin(item.batch, loader)
            ledger.extend(main_records)
            ledger.batches += 1
    finally:
        del it
    return ledger
