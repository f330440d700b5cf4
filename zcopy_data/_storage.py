"""Storage facts every layer asks: how many references a storage has, and a tensor's bytes."""

from __future__ import annotations

import torch

__all__ = ["nbytes", "use_count"]


def use_count(obj: torch.Tensor | torch.UntypedStorage) -> int:
    """References to the storage: one per tensor or view over it (a NumPy array over a tensor
    holds that tensor), plus the caller's own. Compare against a baseline taken when the buffer
    was created: equal means nobody else holds it, so it may be written again."""
    storage = obj.untyped_storage() if isinstance(obj, torch.Tensor) else obj
    return int(torch._C._storage_Use_Count(storage._cdata))


def nbytes(t: torch.Tensor) -> int:
    """Bytes of the tensor's elements (not of its whole storage)."""
    return t.numel() * t.element_size()
