"""Where a batch's output buffer comes from, decided by where the batch is going.

* inside a ``DataLoader`` worker: shared memory, so the batch crosses to the main process as a
  handle instead of being copied again when it is pickled;
* in the main process: pinned memory when an accelerator is available, so the batch's device
  copy is a direct DMA and a ``DataLoader``'s own ``pin_memory=True`` finds it already pinned
  (inside a zcopy_data device stage an exact-size buffer guarded by its copy events, elsewhere
  PyTorch's pinned allocator, which guards against any consumer's non-blocking copy; see
  :mod:`zcopy_data.transfer.pinned`); without one, ordinary host memory from a small pool of
  reused buffers (a fresh multi-MiB buffer per batch is returned to the OS by glibc and faulted
  in again, which can make the gather several times slower);
* for device tensors: the device they came from.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch.utils.data import get_worker_info

from zcopy_data._storage import use_count
from zcopy_data.collate.shared import allocate_shared

__all__ = ["Allocate", "allocate", "allocate_host", "allocator", "keep_at_least", "nbytes"]


def nbytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements (not of its whole storage)."""
    return t.numel() * t.element_size()


MAX_PER_SHAPE = 4
"""Reusable host buffers kept per (shape, dtype); a user holding more batches gets fresh ones.
Raised by :func:`keep_at_least` for loaders that keep more batches in flight."""
MAX_SHAPES = 16
"""Distinct (shape, dtype) keys kept; the least recently used key is dropped past this."""

_lock = threading.Lock()
_pool: OrderedDict[tuple[tuple[int, ...], torch.dtype], list[tuple[torch.Tensor, int]]] = OrderedDict()


def keep_at_least(n: int) -> None:
    """Keep up to ``n`` reusable buffers per (shape, dtype): batches in flight plus those held."""
    global MAX_PER_SHAPE
    with _lock:
        MAX_PER_SHAPE = max(MAX_PER_SHAPE, int(n))


def reused_host_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A plain host buffer, reused only once nothing but the pool references its storage.

    Each batch gets a new view of the pooled buffer, so the batch itself, any view of it, or a
    NumPy array over it keeps the buffer busy (invariant 4: a held batch is never overwritten).
    """
    key = (tuple(shape), dtype)
    with _lock:
        bufs = _pool.get(key)
        if bufs is None:
            bufs = _pool[key] = []
            if len(_pool) > MAX_SHAPES:
                _pool.popitem(last=False)
        else:
            _pool.move_to_end(key)
        for buf, baseline in bufs:
            if use_count(buf) == baseline:
                return buf.view(buf.shape)
        buf = torch.empty(key[0], dtype=dtype)
        if len(bufs) >= MAX_PER_SHAPE:
            return buf
        bufs.append((buf, use_count(buf)))
        return buf.view(buf.shape)


def allocate_host(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A host buffer for a batch assembled in the main process (pinned when an accelerator exists)."""
    from zcopy_data.transfer.pinned import pinned_buffer  # lazy: transfer imports the collate package

    buf = pinned_buffer(shape, dtype)
    return reused_host_buffer(shape, dtype) if buf is None else buf


def allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """An uninitialised output buffer of ``shape`` and ``dtype`` for one batch."""
    if device is not None and device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return allocator()(shape, dtype)


Allocate = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def allocator() -> Allocate:
    """:func:`allocate` for host buffers, with where the batch is going decided once (per batch)."""
    if get_worker_info() is not None:
        return allocate_shared
    from zcopy_data.transfer.pinned import pins_gathers  # lazy: transfer imports the collate package

    return allocate_host if pins_gathers() else reused_host_buffer
