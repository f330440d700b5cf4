"""Batches of indices as int64 arrays, equal to what a known batch sampler yields as lists.

``BatchSampler(RandomSampler(...))`` builds 256 Python ints per batch (~18 us), which
:meth:`~zcopy_data.datasets.base.BatchRequest.resolve` then turns back into an array. For the
samplers whose order is known -- PyTorch's sequential and random (no replacement) batch samplers
and :class:`~zcopy_data.samplers.BlockShuffleSampler` -- the same batches are sliced from one
index array instead: same order, the same draws from the same generators at the same moments,
so an epoch (and the next one) is identical to the sampler's own. Any other sampler is iterated
as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from zcopy_data.samplers import BlockShuffleSampler

__all__ = ["index_batches"]

Indices = np.ndarray[Any, np.dtype[np.int64]]


def index_batches(batch_sampler: Iterable[Any]) -> Iterator[Any]:
    """``iter(batch_sampler)``, as int64 arrays when the sampler's order is known."""
    if type(batch_sampler) is BlockShuffleSampler:
        return _blocks(batch_sampler)
    if type(batch_sampler) is BatchSampler:
        sampler, size, drop_last = batch_sampler.sampler, batch_sampler.batch_size, batch_sampler.drop_last
        if type(sampler) is SequentialSampler:
            return _slices(np.arange(len(sampler), dtype=np.int64), size, drop_last)
        if (
            type(sampler) is RandomSampler
            and not sampler.replacement
            and getattr(sampler, "_num_samples", 0) is None
            and len(sampler.data_source) > 0
        ):
            return _shuffled(sampler, size, drop_last)
    return iter(batch_sampler)


def _slices(order: Indices, size: int, drop_last: bool) -> Iterator[Indices]:
    stop = len(order) - len(order) % size if drop_last else len(order)
    for start in range(0, stop, size):
        yield order[start : start + size]


def _shuffled(sampler: RandomSampler, size: int, drop_last: bool) -> Iterator[Indices]:
    # RandomSampler.__iter__: a seed from the global generator when it has none, one permutation,
    # then (when the epoch is used up) a second permutation of which it keeps nothing.
    n = len(sampler.data_source)
    generator = sampler.generator
    if generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator).numpy()
    full = n // size
    for k in range(full):
        yield order[k * size : (k + 1) * size]
    torch.randperm(n, generator=generator)  # BatchSampler meets the end while building the next batch
    if n % size and not drop_last:
        yield order[full * size :]


def _blocks(sampler: BlockShuffleSampler) -> Iterator[Indices]:
    plan = sampler.runs()
    for runs in plan[sampler.rank :: sampler.num_replicas]:
        if len(runs) == 1:
            yield np.arange(runs[0][0], runs[0][1], dtype=np.int64)
        else:
            yield np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])
