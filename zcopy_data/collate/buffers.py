"""Where a batch's output buffer comes from, decided by where the batch is going.

* inside a ``DataLoader`` worker: shared memory, so the batch crosses to the main process as a
  handle instead of being copied again when it is pickled;
* in the main process: pinned memory when an accelerator is available, so the batch's device
  copy is a direct DMA and a ``DataLoader``'s own ``pin_memory=True`` finds it already pinned
  (inside a zcopy_data device stage an exact-size buffer guarded by its copy events, elsewhere
  PyTorch's pinned allocator, which guards against any consumer's non-blocking copy; see
  :mod:`zcopy_data.transfer.pinned`); without one, ordinary host memory;
* for device tensors: the device they came from.
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from zcopy_data.collate.shared import allocate_shared

__all__ = ["allocate", "allocate_host", "nbytes"]


def nbytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements (not of its whole storage)."""
    return t.numel() * t.element_size()


def allocate_host(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A host buffer for a batch assembled in the main process (pinned when an accelerator exists)."""
    from zcopy_data.transfer.pinned import pinned_buffer  # lazy: transfer imports the collate package

    buf = pinned_buffer(shape, dtype)
    return torch.empty(shape, dtype=dtype) if buf is None else buf


def allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """An uninitialised output buffer of ``shape`` and ``dtype`` for one batch."""
    if device is not None and device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    if get_worker_info() is not None:
        return allocate_shared(shape, dtype)
    return allocate_host(shape, dtype)
