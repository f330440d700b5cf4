"""Translating between NumPy and torch dtypes, once per dtype."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

__all__ = ["dtype_name", "numpy_dtype", "to_torch_dtype"]

_TORCH_TO_NUMPY: dict[torch.dtype, np.dtype[Any]] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
_NUMPY_TO_TORCH = {v: k for k, v in _TORCH_TO_NUMPY.items()}


@functools.lru_cache(maxsize=256)
def _from_numpy(dt: np.dtype[Any]) -> torch.dtype:
    native = dt.newbyteorder("=") if dt.byteorder not in "=|" else dt
    try:
        return _NUMPY_TO_TORCH[native]
    except KeyError:
        raise TypeError(
            f"NumPy dtype {dt.str!r} has no torch equivalent; "
            f"supported: {', '.join(sorted(str(d) for d in _NUMPY_TO_TORCH))}"
        ) from None


def to_torch_dtype(dtype: Any) -> torch.dtype:
    """Normalise a torch dtype, NumPy dtype, NumPy scalar type or name to a ``torch.dtype``.

    >>> to_torch_dtype("uint8")
    torch.uint8
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and hasattr(torch, dtype) and isinstance(getattr(torch, dtype), torch.dtype):
        return getattr(torch, dtype)  # type: ignore[no-any-return]
    if dtype is float:
        return torch.float64
    if dtype is int:
        return torch.int64
    if dtype is bool:
        return torch.bool
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"not a dtype: {dtype!r}; pass a torch dtype such as torch.uint8") from None
    return _from_numpy(dt)


def numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The NumPy dtype with the same bytes as ``dtype`` (raises for bfloat16 and friends)."""
    try:
        return _TORCH_TO_NUMPY[dtype]
    except KeyError:
        raise TypeError(f"{dtype} has no NumPy equivalent") from None


def dtype_name(dtype: Any) -> str:
    """A short readable name: ``uint8``, ``float64``, ``>f4 (big-endian)``."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, np.dtype):
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
            return f"{dtype.str} (big-endian)"
        return "object" if dtype.kind == "O" else dtype.name
    return str(dtype)
