"""``explain(loader)``: run a few batches and report every byte viewed or copied, and why."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

from zcopy_data.inspect import printable
from zcopy_data.ledger import CopyLedger, Record, capture
from zcopy_data.loader import ZeroCopyDataLoader
from zcopy_data.recording import LedgerBatch, RecordingCollate, record_pin, record_threads

__all__ = ["explain"]


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


def _generators(loader: DataLoader[Any]) -> list[torch.Generator]:
    """The generators a run of ``loader`` draws from: the loader's and its samplers'."""
    found: list[torch.Generator] = []
    for obj in (loader, loader.sampler, loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


@contextmanager
def _rng_untouched(loader: DataLoader[Any]) -> Iterator[None]:
    """Every RNG a probe run may draw from is as it was before, afterwards."""
    gens = _generators(loader)
    states = [g.get_state() for g in gens]
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    # the samplers' epochs too: a probe's batches mark an epoch as used, which moves the next one on
    inner = getattr(loader.batch_sampler, "sampler", None)
    samplers: dict[int, Any] = {id(s): s for s in (loader.sampler, loader.batch_sampler, inner)}
    epochs = [(s, s.epoch) for s in samplers.values() if isinstance(getattr(s, "epoch", None), int)]
    try:
        yield
    finally:
        for s, epoch in epochs:
            with contextlib.suppress(AttributeError, TypeError):
                s.epoch = epoch
        for g, st in zip(gens, states, strict=True):
            g.set_state(st)
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _printable(records: Iterable[Record]) -> list[Record]:
    """Records whose text prints on any terminal (the bytes of a non-UTF-8 file name escaped)."""
    return [(stage, printable(name), printable(why), viewed, copied) for stage, name, why, viewed, copied in records]


def explain(loader: DataLoader[Any], batches: int = 8) -> CopyLedger:
    """Run ``batches`` batches of a loader's configuration and account for every copy.

    The loader is rebuilt with the same dataset, sampler, collate_fn, workers and pinning, its
    sampler cut to ``batches`` batches, so the records of every batch produced (in worker
    processes too) reach the report, and the user's loader and its workers are left untouched;
    so are the global RNGs and the loader's and samplers' generators (a seeded run draws the
    same order with or without a call to ``explain``).

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
        "collate_fn": RecordingCollate(loader.collate_fn or default_collate),
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
    with _rng_untouched(loader):  # a seeded run's order is the same with or without explain()
        it = iter(probe)
        try:
            for item in itertools.islice(it, batches):
                assert isinstance(item, LedgerBatch)
                ledger.extend(_printable(item.records))
                with capture() as main_records:
                    if threads:
                        record_threads(item.batch)
                    record_pin(item.batch, loader)
                ledger.extend(_printable(main_records))
                ledger.batches += 1
        finally:
            del it
    return ledger
