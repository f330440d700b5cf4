"""Allocation policies: where a batch's output buffer comes from, decided by where it is going.

A policy is an object the loader or the device stage builds and hands down to the collate (and
through it to the dataset's :meth:`~zcopy_data.ZeroCopyDataset.build_batch`), in every thread
and process that assembles batches for it. Nothing process-wide or thread-local steers it.

* :class:`SharedAllocation` -- inside a ``DataLoader`` worker: pooled shared memory, so the batch
  crosses to the main process as a handle instead of being copied again when it is pickled;
* :class:`PinnedAllocation` -- main process, accelerator present: PyTorch's pinned allocator, so
  the device copy is a direct DMA and ``pin_memory=True`` finds the batch already pinned; it
  guards its blocks against any consumer's non-blocking copy;
* :class:`ExactPinnedAllocation` -- under a device stage that copies every batch itself
  (:class:`~zcopy_data.DevicePrefetcher` over a :class:`~zcopy_data.ZeroCopyDataLoader`):
  exact-size pinned buffers reused once no tensor references them (the copy holds its own);
* :class:`GatherThreadAllocation` -- any of these, for a loader's gather threads: the same
  buffers, each batch copied by its own thread alone (see :mod:`zcopy_data.memory.gather`);
* :class:`HostAllocation` -- otherwise: ordinary host memory from a few reused buffers per shape
  (a fresh multi-MiB buffer per batch is returned to the OS by glibc and faulted in again, which
  can make a gather several times slower). A loader builds its own, sized for its look-ahead.

:func:`default_allocation` picks one from the context when nothing was handed down (a plain
``DataLoader(ds, collate_fn=zero_copy_collate)``).
"""

from __future__ import annotations

from typing import Protocol

import torch

from zcopy_data._accelerator import accelerator, in_worker
from zcopy_data.memory import crossing
from zcopy_data.memory.pinned import ExactPinnedPool, torch_pinned
from zcopy_data.memory.reuse import ReusePool
from zcopy_data.memory.shared import allocate_shared

__all__ = [
    "Allocation",
    "ExactPinnedAllocation",
    "GatherThreadAllocation",
    "HostAllocation",
    "PinnedAllocation",
    "SharedAllocation",
    "default_allocation",
]


class Allocation(Protocol):
    """Makes an uninitialised host buffer of ``shape`` and ``dtype`` for one batch field."""

    kind: str

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class HostAllocation:
    """Plain host buffers, ``per_shape`` reused per ``(shape, dtype)`` once nothing holds them.

    ``per_shape`` counts every batch alive at once: in flight, in use, and the one before it
    (a ``for`` loop holds the previous batch while the next is built). Past it, fresh buffers.
    """

    kind = "host"

    def __init__(self, per_shape: int = 4) -> None:
        self.pool = ReusePool(_empty, per_key=per_shape)

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buf = self.pool.take(shape, dtype)
        assert buf is not None  # overflow=True: never None
        return buf

    def __repr__(self) -> str:
        return f"HostAllocation(per_shape={self.pool.per_key})"


class SharedAllocation:
    """This worker process's pool of shared-memory buffers (see :mod:`zcopy_data.memory.shared`)."""

    kind = "shared"

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        crossing.install()
        return allocate_shared(shape, dtype)

    def __repr__(self) -> str:
        return "SharedAllocation()"


class PinnedAllocation:
    """PyTorch's pinned allocator: safe under copies that zcopy_data never sees."""

    kind = "pinned"

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch_pinned(shape, dtype)

    def __repr__(self) -> str:
        return "PinnedAllocation()"


class ExactPinnedAllocation:
    """Exact-size pinned buffers, for batches whose every device copy a zcopy_data stage issues.

    Falls back to PyTorch's pinned allocator when all ``per_shape`` buffers of a shape are held.
    """

    kind = "exact-pinned"

    def __init__(self, per_shape: int = 8) -> None:
        self.pool = ExactPinnedPool(per_key=per_shape)

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buf = self.pool.take(shape, dtype)
        return torch_pinned(shape, dtype) if buf is None else buf

    def __repr__(self) -> str:
        return f"ExactPinnedAllocation(per_shape={self.pool.per_key})"


class GatherThreadAllocation:
    """``inner``'s buffers, each gather into them done by the thread that asked (``gather_threads = 1``).

    What a loader hands its gather threads: with several batches in flight, one thread per
    batch already uses the cores it was given, and torch's intra-op threads on top of each
    would oversubscribe them (two gathers on two threads each, on two cores, measured slower
    than one). See :func:`zcopy_data.memory.gather.take_on_this_thread`.
    """

    gather_threads = 1

    def __init__(self, inner: Allocation) -> None:
        self.inner = inner
        self.kind = inner.kind

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.inner(shape, dtype)

    def __repr__(self) -> str:
        return f"GatherThreadAllocation({self.inner!r})"


SHARED = SharedAllocation()
PINNED = PinnedAllocation()
HOST = HostAllocation()
"""The host pool of batches assembled with no loader to own one (a plain ``DataLoader``)."""


def default_allocation() -> Allocation:
    """The policy for a batch assembled where nothing was handed down: decided by the context."""
    if in_worker():
        crossing.install()  # views of file mappings cross as descriptors, pooled buffers as handles
        return SHARED
    if accelerator() is not None:
        return PINNED
    return HOST


def main_process_allocation(per_shape: int) -> Allocation:
    """A loader's own policy for batches it assembles in this process (pinned with an accelerator)."""
    return PINNED if accelerator() is not None else HostAllocation(per_shape)
