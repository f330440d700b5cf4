"""Files skipped inside a ``DataLoader`` worker process, reported in the main process.

A worker holds its own copy of the dataset: what it appends to ``.skipped`` or warns about stays
in that process (its warnings reach only its stderr). So a worker that leaves files out of a batch
sends the reports with the batch: the batch is a :class:`ReportedBatch`, a ``dict`` whose pickled
form rebuilds, in the receiving process, into a plain ``dict`` after reporting each file there --
appended to the original dataset's ``.skipped``, one :class:`SkippedFileWarning` each, and a ledger
row. That happens while ``DataLoader`` receives the batch, so a plain ``torch.utils.data.DataLoader``
gets it as well as ``ZeroCopyDataLoader`` and ``explain``; the user only ever sees the plain dict.
"""

from __future__ import annotations

import os
import uuid
import warnings
import weakref
from typing import Any, NamedTuple, Protocol

from torch.utils.data import get_worker_info

from zcopy_data.errors import SkippedFileWarning
from zcopy_data.ledger import CROSS, record

__all__ = ["ReportedBatch", "Skip", "SkipReporter", "in_worker_process", "register", "warn"]


class Skip(NamedTuple):
    """One file left out: its sample (dataset index), its path and why."""

    sample: int
    path: str
    why: str


class SkipReporter(Protocol):
    """A dataset that keeps the files it skipped."""

    skipped: list[tuple[str, str]]


_datasets: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register(dataset: SkipReporter) -> str:
    """A token that finds ``dataset`` again in this process when a worker's batch comes back."""
    token = uuid.uuid4().hex
    _datasets[token] = dataset
    return token


def in_worker_process(home_pid: int) -> bool:
    """Whether this is a ``DataLoader`` worker process (not the process that built the dataset)."""
    return os.getpid() != home_pid and get_worker_info() is not None


def warn(skip: Skip, stacklevel: int = 2) -> None:
    """The one warning per skipped file."""
    warnings.warn(
        SkippedFileWarning(f"sample {skip.sample} left out of its batch: {skip.why}"), stacklevel=stacklevel + 1
    )


class ReportedBatch(dict[str, Any]):
    """A batch built in a worker process, with the files it left out; crosses as a plain ``dict``."""

    def __init__(self, batch: dict[str, Any], token: str, skips: list[Skip]) -> None:
        super().__init__(batch)
        self.token = token
        self.skips = skips

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (dict(self), self.token, tuple(self.skips), os.getpid())


def _rebuild(batch: dict[str, Any], token: str, skips: tuple[Skip, ...], pid: int) -> dict[str, Any]:
    """In the receiving process: report every skipped file, then hand over the plain batch."""
    dataset = _datasets.get(token)
    for skip in skips:
        if dataset is not None:
            dataset.skipped.append((skip.path, skip.why))
        record(CROSS, "image", f"skipped file {skip.path}: reported from worker process {pid}")
        warn(Skip(*skip), stacklevel=1)
    return batch
