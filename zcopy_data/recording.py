"""Ledger records that ride with batches, and the records of what happens after the collate.

Records made inside a ``DataLoader`` worker process stay in that process's ledger. The one
:class:`RecordingCollate` wraps a ``collate_fn`` so that each batch carries the records its
assembly produced -- with, in a worker, how each tensor will cross to the main process -- and
:func:`unwrap` adds them to the receiving process's ledger. ``explain`` and the Lightning data
module both use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch.utils.data import DataLoader, get_worker_info

from zcopy_data._storage import nbytes
from zcopy_data._tree import leaves
from zcopy_data.ledger import CROSS, LEDGER, PIN, Record, capture, record
from zcopy_data.memory.crossing import crossing_of
from zcopy_data.memory.pinned import is_pinned_gather

__all__ = ["LedgerBatch", "RecordingCollate", "record_crossing", "record_pin", "record_threads", "unwrap"]


class LedgerBatch(NamedTuple):
    """A batch with the ledger records made while it was assembled (they cross from workers)."""

    batch: Any
    records: tuple[Record, ...]
    in_worker: bool


class RecordingCollate:
    """Wraps a collate_fn: returns the batch with the records its assembly produced.

    Keyword arguments (the ``allocation`` a loader hands down) reach the wrapped collate.
    """

    def __init__(self, collate_fn: Callable[..., Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Any, **kwargs: Any) -> LedgerBatch:
        in_worker = get_worker_info() is not None
        with capture() as records:
            batch = self.collate_fn(samples, **kwargs)
            if in_worker:
                record_crossing(batch)
        return LedgerBatch(batch, tuple(records), in_worker)


def unwrap(batch: Any) -> Any:
    """The batch itself; records made in a worker are added to this process's ``LEDGER``.

    Records made in this process are in ``LEDGER`` already and are not counted twice.
    """
    if not isinstance(batch, LedgerBatch):
        return batch
    if batch.in_worker:
        LEDGER.extend(batch.records)
    return batch.batch


_HOW = {
    "handle": "handle: pooled shared-memory buffer, mapped once by the main process",
    "descriptor": "descriptor: view of a memory-mapped file, mapped by the main process",
    "shared": "handle: buffer already in shared memory",
}


def record_crossing(batch: Any) -> None:
    """In a worker: how each tensor of the batch will cross to the main process, and its cost."""
    for name, t in leaves(batch):
        if t.device.type != "cpu":
            continue
        how = crossing_of(t)
        if how in _HOW:
            record(CROSS, name, _HOW[how], viewed=nbytes(t))
        else:
            copied = t.untyped_storage().nbytes()
            record(CROSS, name, "pickle: storage not in shared memory, copied into it", copied=copied)


def record_threads(batch: Any) -> None:
    """Batches of a gather thread are already in this process: nothing crosses."""
    for name, t in leaves(batch):
        record(CROSS, name, "none: assembled by a worker thread in this process", viewed=nbytes(t))


def record_pin(batch: Any, loader: DataLoader[Any]) -> None:
    """Whether the pin stage was free (gathered into pinned memory), a copy, or skipped."""
    for name, t in leaves(batch):
        if t.device.type != "cpu":
            continue
        if is_pinned_gather(t):
            record(PIN, name, "free: gathered straight into pinned memory", viewed=nbytes(t))
        elif not loader.pin_memory:
            continue
        elif t.is_pinned():
            record(PIN, name, "DataLoader pin_memory=True: pin thread copied into pinned memory", copied=nbytes(t))
        else:
            record(PIN, name, "skipped: no accelerator to pin for", viewed=nbytes(t))
