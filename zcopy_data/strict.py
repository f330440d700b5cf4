"""The strict path: the one place where host data becomes a tensor, without a hidden copy.

``strict_asarray`` calls ``torch.asarray(obj, copy=False)`` and turns every case where torch
would have to copy (a Python list, a dtype cast, non-native byte order, negative strides, a
device move) into a :class:`~zcopy_data.CopyRequiredError` that says what was expected, what
was found and how to fix it.

Write semantics of the tensors it returns:

* over a writable array or tensor: the tensor *is* that memory; writes are seen by both;
* over a read-only ``np.memmap`` (``mmap_mode='r'``): the same file bytes are mapped again
  copy-on-write (no copy, no warning); a write changes a private page of this process, is seen by
  later reads of that file through zcopy_data in this process, and never reaches the file;
* over other read-only memory (``bytes``, a read-only buffer): PyTorch has no read-only tensors;
  the tensor is returned without a warning, and writing to it is the caller's error. zcopy_data's
  own datasets never hand out such tensors.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.utils.dlpack

from zcopy_data._dtypes import dtype_name, to_torch_dtype
from zcopy_data._mapping import remap_private
from zcopy_data.errors import CopyRequiredError, describe

__all__ = ["as_device", "strict_asarray"]


def as_device(device: torch.device | str | int | None) -> torch.device | None:
    """Normalise a device argument (``None`` stays ``None``)."""
    if device is None or isinstance(device, torch.device):
        return device
    return torch.device(device)


def _fail(field: str | None, index: int | None, expected: str, found: str, fix: str) -> CopyRequiredError:
    where = describe(field, index)
    return CopyRequiredError(
        f"{where}: expected {expected}, found {found}; a zero-copy tensor is impossible. {fix}",
        field=field,
        index=index,
    )


def _check_numpy(
    arr: np.ndarray[Any, Any], want: torch.dtype | None, field: str | None, index: int | None
) -> np.ndarray[Any, Any]:
    dt = arr.dtype
    if dt.kind in "OUSVMm":
        raise _fail(
            field,
            index,
            "a numeric array",
            f"dtype {dtype_name(dt)}",
            "Store the field as a numeric dtype (strings and objects cannot become tensors).",
        )
    if not dt.isnative:
        raise _fail(
            field,
            index,
            "native byte order",
            f"dtype {dtype_name(dt)}",
            f"Rewrite the data once with arr.astype({dt.newbyteorder('=').str!r}), "
            "or pass copy=True to convert on every read.",
        )
    try:
        found = to_torch_dtype(dt)
    except TypeError:
        raise _fail(
            field,
            index,
            "a dtype torch supports",
            f"dtype {dtype_name(dt)}",
            "Store the field as one of bool, (u)int8-64, float16/32/64 or complex64/128.",
        ) from None
    if want is not None and found != want:
        raise _fail(
            field,
            index,
            dtype_name(want),
            dtype_name(found),
            f"Store the field as {dtype_name(want)}, declare Field(torch.{dtype_name(found)}), "
            "or cast on the device (the one stage allowed to change a dtype).",
        )
    if any(s < 0 for s in arr.strides):
        raise _fail(
            field,
            index,
            "non-negative strides",
            f"strides {arr.strides}",
            "Pass np.ascontiguousarray(arr) (one explicit copy) or copy=True.",
        )
    if not arr.flags.writeable:
        private = remap_private(arr)
        if private is not None:
            return private
    return arr


def strict_asarray(
    obj: Any,
    *,
    dtype: Any = None,
    device: torch.device | str | int | None = None,
    field: str | None = None,
    index: int | None = None,
    copy: bool = False,
) -> torch.Tensor:
    """Return ``obj`` as a tensor sharing its memory, or raise :class:`CopyRequiredError`.

    Args:
        obj: a tensor, a NumPy array (memory maps included), or an object exposing DLPack, the
            array interface or the buffer protocol.
        dtype: the dtype the caller expects; a different one is an error, never a cast.
        device: the device the caller expects; data elsewhere is an error, never a move.
        field: field name used in error messages.
        index: dataset index used in error messages.
        copy: opt in to a copy (and a cast/move) instead of an error.

    >>> import numpy as np
    >>> a = np.arange(4, dtype=np.uint8)
    >>> t = strict_asarray(a)
    >>> t.data_ptr() == a.ctypes.data
    True
    """
    want = None if dtype is None else to_torch_dtype(dtype)
    dev = as_device(device)
    if copy:
        if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "OUSV":
            obj = np.array(obj, dtype=obj.dtype.newbyteorder("="))  # native order, positive strides
        return torch.asarray(obj, dtype=want, device=dev, copy=True)

    if isinstance(obj, torch.Tensor):
        if want is not None and obj.dtype != want:
            raise _fail(
                field,
                index,
                dtype_name(want),
                dtype_name(obj.dtype),
                "Produce the declared dtype, or cast on the device.",
            )
        if dev is not None and obj.device != dev and not (dev.index is None and obj.device.type == dev.type):
            raise _fail(
                field,
                index,
                f"a tensor on {dev}",
                f"one on {obj.device}",
                "Move it with a device stage (zcopy_data.transfer) or pass copy=True.",
            )
        return obj

    if isinstance(obj, (list, tuple, int, float, complex, bool, str)) or obj is None:
        raise _fail(
            field,
            index,
            "an array, tensor or buffer",
            f"a Python {type(obj).__name__}",
            "Return a NumPy array or tensor from the dataset (np.asarray(...) once, at build time).",
        )

    if not isinstance(obj, np.ndarray) and hasattr(obj, "__array_interface__"):
        obj = np.asarray(obj)  # the array interface never copies
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
        arr = _check_numpy(arr, want, field, index)
        if dev is not None and dev.type != "cpu":
            raise _fail(
                field,
                index,
                f"data on {dev}",
                "host memory",
                "Move it with a device stage (zcopy_data.transfer) or pass copy=True.",
            )
        if arr.flags.writeable:
            return torch.asarray(arr, copy=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.asarray(arr, copy=False)

    try:
        if hasattr(obj, "__dlpack__"):
            out = torch.utils.dlpack.from_dlpack(obj)  # DLPack is zero-copy by contract
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = torch.asarray(obj, dtype=want, device=dev, copy=False)
    except (ValueError, TypeError, RuntimeError) as err:
        raise _fail(
            field,
            index,
            "an object torch can alias",
            f"{type(obj).__name__} ({err})",
            "Pass a NumPy array, a tensor, or an object exposing DLPack or the buffer protocol.",
        ) from None
    if want is not None and out.dtype != want:
        raise _fail(field, index, dtype_name(want), dtype_name(out.dtype), "Produce the declared dtype.")
    if dev is not None and out.device != dev and not (dev.index is None and out.device.type == dev.type):
        raise _fail(field, index, f"data on {dev}", f"data on {out.device}", "Move it with a device stage.")
    return out
