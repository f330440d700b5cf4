"""Shared-memory output buffers for batches assembled inside ``DataLoader`` workers."""

from __future__ import annotations

import math

import torch

__all__ = ["allocate_shared"]


def allocate_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor born in shared memory: sending it to the main process sends a handle only."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(max(1, math.prod(shape) * itemsize))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
