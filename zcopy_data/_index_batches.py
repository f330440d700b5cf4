"""Batches of indices as int64 arrays, equal to what a known batch sampler yields as lists.

``BatchSampler(RandomSampler(...))`` builds 256 Python ints per batch (~18 us), which
:meth:`~zcopy_data.datasets.base.BatchRequest.resolve` then turns back into an array. For the
samplers whose order is known -- PyTorch's sequential, random (no replacement) and distributed
samplers inside a ``BatchSampler``, and :class:`~zcopy_data.samplers.BlockShuffleSampler` -- the
same batches are sliced from one index array instead: same order, the same draws from the same
generators, so an epoch (and the next one) is identical to the sampler's own. Any other sampler
is iterated as it is.

Known samplers can also start an epoch at batch ``skip`` by arithmetic (a resumed epoch): no
index of a skipped batch is built, so resuming costs one epoch's order at most, never a replay.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler

from zcopy_data.samplers import BlockShuffleSampler, LazyShuffleSampler

__all__ = ["index_batches", "known_order"]

Indices = np.ndarray[Any, np.dtype[np.int64]]


def known_order(batch_sampler: Any) -> str | None:
    """``"sequential"``, ``"random"``, ``"distributed"``, ``"block"`` or ``"lazy"`` when the batches
    are computed here."""
    if type(batch_sampler) is BlockShuffleSampler:
        return "block"
    if type(batch_sampler) is LazyShuffleSampler:
        return "lazy"
    if type(batch_sampler) is BatchSampler:
        sampler: Any = batch_sampler.sampler
        if type(sampler) is SequentialSampler:
            return "sequential"
        if (
            type(sampler) is RandomSampler
            and not sampler.replacement
            and getattr(sampler, "_num_samples", 0) is None
            and len(sampler.data_source) > 0
        ):
            return "random"
        if type(sampler) is DistributedSampler:
            return "distributed"
    return None


def index_batches(batch_sampler: Iterable[Any], skip: int = 0) -> Iterator[Any]:
    """``iter(batch_sampler)`` from batch ``skip`` on, as int64 arrays when the sampler's order is known.

    Random draws (a seed from the global generator, a permutation) are made here, when this is
    called, as ``BatchSampler`` makes them at the first batch. Other samplers are iterated, and
    their first ``skip`` batches dropped unread.
    """
    kind = known_order(batch_sampler)
    if kind == "block":
        return _blocks(batch_sampler, skip)  # type: ignore[arg-type]
    if kind == "lazy":
        return batch_sampler.batches(skip)  # type: ignore[attr-defined,no-any-return]
    if kind is not None:
        bs: BatchSampler = batch_sampler  # type: ignore[assignment]
        size, drop_last = bs.batch_size, bs.drop_last
        if kind == "sequential":
            return _ranges(len(bs.sampler), size, drop_last, skip)  # type: ignore[arg-type]
        if kind == "random":
            return _shuffled(bs.sampler, size, drop_last, skip)  # type: ignore[arg-type]
        return _slices(distributed_order(bs.sampler), size, drop_last, skip)  # type: ignore[arg-type]
    it = iter(batch_sampler)
    if skip:
        next(itertools.islice(it, skip - 1, skip), None)  # drop ``skip`` batches of indices, read nothing
    return it


def _ranges(n: int, size: int, drop_last: bool, skip: int = 0) -> Iterator[Indices]:
    # built per batch: an epoch's start (or a resumed one's) costs one batch, whatever ``n``
    stop = n - n % size if drop_last else n
    for start in range(skip * size, stop, size):
        yield np.arange(start, min(start + size, stop), dtype=np.int64)


def _slices(order: Indices, size: int, drop_last: bool, skip: int = 0) -> Iterator[Indices]:
    stop = len(order) - len(order) % size if drop_last else len(order)
    for start in range(skip * size, stop, size):
        yield order[start : start + size]


def _shuffled(sampler: RandomSampler, size: int, drop_last: bool, skip: int) -> Iterator[Indices]:
    # RandomSampler.__iter__: a seed from the global generator when it has none, one permutation,
    # then (when the epoch is used up) a second permutation of which it keeps nothing.
    n = len(sampler.data_source)
    generator = sampler.generator
    if generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator).numpy()
    return _shuffled_batches(order, generator, n, size, drop_last, skip)


def _shuffled_batches(
    order: Indices, generator: torch.Generator, n: int, size: int, drop_last: bool, skip: int
) -> Iterator[Indices]:
    full = n // size
    for k in range(skip, full):
        yield order[k * size : (k + 1) * size]
    torch.randperm(n, generator=generator)  # BatchSampler meets the end while building the next batch
    if n % size and not drop_last and skip <= full:
        yield order[full * size :]


def distributed_order(sampler: DistributedSampler[Any]) -> Indices:
    """This rank's indices of the epoch, as ``DistributedSampler.__iter__`` builds them, as an array."""
    n = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.shuffle:
        g = torch.Generator()
        g.manual_seed(sampler.seed + sampler.epoch)
        order = torch.randperm(n, generator=g).numpy()
    else:
        order = np.arange(n, dtype=np.int64)
    total = sampler.total_size
    if not sampler.drop_last:
        pad = total - n
        if pad > 0:
            order = np.concatenate([order, np.resize(order, pad)])  # np.resize repeats the order
    else:
        order = order[:total]
    return np.ascontiguousarray(order[sampler.rank : total : sampler.num_replicas])


def _blocks(sampler: BlockShuffleSampler, skip: int = 0) -> Iterator[Indices]:
    for ((start, stop),) in sampler.rank_runs()[skip:]:  # every batch one run
        yield np.arange(start, stop, dtype=np.int64)
