"""The strict path: the one place where host data becomes a tensor, without a hidden copy.

``strict_asarray`` takes ``torch.asarray``'s keywords (``dtype``, ``device``, ``copy``,
``requires_grad``) with one difference: ``copy=False`` (the default) means *never copy*. Every
case where torch would copy -- a Python list, a dtype cast, non-native byte order, negative
strides, a device move, a NumPy scalar -- and every case where torch would silently read the
wrong thing -- a raw byte buffer without a dtype, nulls in an Arrow array -- raises a
:class:`~zcopy_data.CopyRequiredError` (or a ``TypeError`` for a missing or unusable argument)
that says what was expected, what was found and how to fix it. ``copy=True`` opts in to a copy.

Write semantics of the tensors it returns:

* over a writable array, buffer or tensor (0-d arrays included): the tensor *is* that memory;
  writes are seen by both;
* over a read-only ``np.memmap`` (``mmap_mode='r'``): the same file bytes are mapped again
  copy-on-write (no copy, no warning); a write changes a private page of this process, is seen by
  later reads of that file through zcopy_data in this process, and never reaches the file;
* over other read-only memory (``np.frombuffer(bytes)``, ``bytes``, a read-only buffer, an Arrow
  array, any DLPack export flagged read-only): refused, because PyTorch has no read-only tensors
  and a write would change memory its owner treats as immutable. ``allow_read_only=True`` accepts
  it for a caller that only reads the tensor (a gather source, a collate that copies it).

DLPack's read-only flag is read through ``np.from_dlpack``, which honours it (``torch.from_dlpack``
ignores it). A CPU export NumPy cannot import -- a dtype it lacks, such as bfloat16 -- is aliased
by torch without that check; an unversioned (pre-1.0) export cannot be read-only by the DLPack spec.
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

_RAW_FORMATS = ("B", "b", "c")  # buffer formats that say "bytes", not an element type
_DLPACK_CPU = 1  # kDLCPU, the device type __dlpack_device__ reports for host memory
_READ_ONLY_ARRAY = (
    "a read-only array that no file backs (np.frombuffer over bytes, or flags.writeable=False)",
    "Build it over writable memory (np.frombuffer(bytearray(data)), or np.load(path, mmap_mode='r') for "
    "a file, which is mapped again copy-on-write).",
)


def as_device(device: torch.device | str | int | None) -> torch.device | None:
    """Normalise a device argument (``None`` stays ``None``)."""
    if device is None or isinstance(device, torch.device):
        return device
    return torch.device(device)


def _where(field: str | None, index: int | None, sentence: str) -> str:
    """``field 'x' at index 7: sentence``, or the sentence alone when nothing is named."""
    if field is None and index is None:
        return sentence
    return f"{describe(field, index)}: {sentence}"


def _fail(field: str | None, index: int | None, expected: str, found: str, fix: str) -> CopyRequiredError:
    return CopyRequiredError(
        _where(field, index, f"expected {expected}, found {found}; a zero-copy tensor is impossible. {fix}"),
        field=field,
        index=index,
    )


def _read_only(field: str | None, index: int | None, what: str, fix: str) -> CopyRequiredError:
    return _fail(
        field,
        index,
        "writable memory",
        what,
        "PyTorch has no read-only tensors, so a write to this one would change memory its owner treats as "
        f"immutable. {fix} Pass copy=True for a private copy, or allow_read_only=True if the tensor is "
        "only ever read.",
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
    return arr


def _numpy_tensor(
    arr: np.ndarray[Any, Any],
    want: torch.dtype | None,
    dev: torch.device | None,
    field: str | None,
    index: int | None,
    allow_read_only: bool,
    read_only: tuple[str, str] = _READ_ONLY_ARRAY,
) -> torch.Tensor:
    """An ndarray (0-d included) as a tensor over its own memory; ``read_only`` words a refusal."""
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
        return torch.from_numpy(arr)  # shares 0-d arrays too, where torch.asarray copies them
    private = remap_private(arr)
    if private is not None:
        return torch.from_numpy(private)
    if not allow_read_only and arr.nbytes:  # an empty array has nothing to write to
        raise _read_only(field, index, *read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the caller only reads it
        return torch.from_numpy(arr)


def _arrow_nulls(obj: Any, field: str | None, index: int | None) -> None:
    """Refuse a pyarrow array or chunked array holding nulls (a tensor has no nulls)."""
    if not type(obj).__module__.startswith("pyarrow"):
        return
    nulls = getattr(obj, "null_count", 0)
    if isinstance(nulls, int) and nulls > 0:
        raise _fail(
            field,
            index,
            "an Arrow array without nulls",
            f"{nulls} null{'s' if nulls != 1 else ''} in {len(obj)} values",
            "A tensor has no nulls: fill them once (pyarrow.compute.fill_null) or drop those rows.",
        )


def _dlpack_tensor(
    obj: Any,
    want: torch.dtype | None,
    dev: torch.device | None,
    field: str | None,
    index: int | None,
    allow_read_only: bool,
) -> torch.Tensor:
    """A DLPack export as a tensor over the exporter's memory.

    ``torch.from_dlpack`` ignores DLPack 1.0's read-only flag; ``np.from_dlpack`` honours it (a
    read-only export becomes an array with ``flags.writeable == False``), so a CPU export is
    imported through NumPy and checked like any array. An export NumPy cannot import (a dtype it
    lacks, such as bfloat16, or a producer of unversioned capsules, which by the DLPack spec never
    exports read-only memory) is aliased by torch directly.
    """
    try:
        on_cpu = int(obj.__dlpack_device__()[0]) == _DLPACK_CPU
    except (AttributeError, TypeError, ValueError, IndexError):
        on_cpu = False
    if on_cpu:
        try:
            arr = np.from_dlpack(obj, copy=False)  # never copies: BufferError instead
        except (TypeError, RuntimeError, BufferError, ValueError):
            arr = None
        if arr is not None:
            what = f"a {type(obj).__name__} exported read-only through DLPack"
            fix = (
                "Its producer marks the memory read-only (Arrow arrays always are; serve Arrow data with "
                "ArrowDataset, which maps the file copy-on-write)."
            )
            return _numpy_tensor(arr, want, dev, field, index, allow_read_only, read_only=(what, fix))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an unversioned capsule is still zero-copy
        return torch.utils.dlpack.from_dlpack(obj)


def _cuda_interface_tensor(obj: Any, field: str | None, index: int | None, allow_read_only: bool) -> torch.Tensor:
    """An object exposing only the CUDA array interface, whose ``data`` tuple says if it is read-only."""
    try:
        read_only = bool(obj.__cuda_array_interface__["data"][1])
    except (TypeError, KeyError, IndexError) as err:
        raise _opaque(obj, field, index, f"a malformed __cuda_array_interface__: {err!r}") from None
    if read_only and not allow_read_only:
        raise _read_only(
            field,
            index,
            f"a {type(obj).__name__} whose __cuda_array_interface__ is read-only",
            "Export writable device memory.",
        )
    try:
        return torch.asarray(obj, copy=False)  # the interface describes memory torch aliases as it is
    except (ValueError, TypeError, RuntimeError) as err:
        raise _opaque(obj, field, index, str(err)) from None


def _opaque(obj: Any, field: str | None, index: int | None, why: str) -> CopyRequiredError:
    return _fail(
        field,
        index,
        "an object torch can alias",
        f"{type(obj).__name__} ({why})",
        "Pass a NumPy array, a tensor, or an object exposing DLPack or the buffer protocol.",
    )


def _raw_what(obj: Any, view: memoryview) -> str:
    """``a bytearray of 8 bytes``: a raw buffer, in words."""
    kind = "bytes object" if isinstance(obj, bytes) else type(obj).__name__
    return f"a {kind} of {view.nbytes} bytes"


def _raw_dtype(view: memoryview, what: str, want: torch.dtype | None, field: str | None, index: int | None) -> int:
    """Check that raw bytes come with a dtype they hold whole elements of; the element size."""
    if want is None:
        raise TypeError(
            _where(
                field,
                index,
                f"expected an explicit dtype for {what}, found dtype=None; raw bytes have no element type "
                "(torch would read them as float32). Fix: pass dtype=torch.uint8, or the type the bytes hold.",
            )
        )
    size = torch.empty(0, dtype=want).element_size()
    if view.nbytes % size:
        raise _fail(
            field,
            index,
            f"a whole number of {dtype_name(want)} values ({size} bytes each)",
            what,
            "Pass the dtype the bytes hold, or a buffer cut to whole elements.",
        )
    return size


def _buffer_tensor(
    obj: Any, view: memoryview, want: torch.dtype | None, field: str | None, index: int | None, allow_read_only: bool
) -> torch.Tensor:
    """An object exposing the buffer protocol; raw bytes need ``dtype``, typed buffers keep their type."""
    if view.format not in _RAW_FORMATS:
        try:
            arr = np.asarray(view)  # the buffer's own element type and shape, no copy
        except (TypeError, ValueError) as err:
            raise _opaque(obj, field, index, f"buffer format {view.format!r}: {err}") from None
        return _numpy_tensor(arr, want, None, field, index, allow_read_only)
    what = _raw_what(obj, view)
    _raw_dtype(view, what, want, field, index)
    assert want is not None
    if not view.contiguous:
        raise _fail(field, index, "a contiguous buffer", f"{what} with strides {view.strides}", "Pass copy=True.")
    if view.readonly:
        if not allow_read_only:
            raise _read_only(field, index, f"{what}, read-only", "Pass a writable buffer (bytearray(data)).")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(obj, dtype=want) if view.nbytes else torch.empty(0, dtype=want)
    return torch.frombuffer(obj, dtype=want) if view.nbytes else torch.empty(0, dtype=want)


def _with_grad(t: torch.Tensor, requires_grad: bool, field: str | None, index: int | None) -> torch.Tensor:
    if requires_grad and not t.requires_grad:
        if not (t.dtype.is_floating_point or t.dtype.is_complex):
            raise TypeError(
                _where(
                    field,
                    index,
                    f"requires_grad=True expected a floating-point or complex dtype, found {dtype_name(t.dtype)}. "
                    "Fix: store the field as a float dtype, or ask for gradients after a cast on the device.",
                )
            )
        t.requires_grad_(True)
    return t


def _copy(obj: Any, want: torch.dtype | None, dev: torch.device | None, field: str | None, index: int | None) -> Any:
    """``obj`` copied once into a fresh tensor of ``want`` on ``dev`` (``copy=True``).

    ``torch.asarray(copy=True)`` aliases a DLPack export instead of copying it, reads raw bytes as
    float32 and copies a NumPy array twice on the way; each of those is handled here.
    """
    if isinstance(obj, torch.Tensor):
        return torch.asarray(obj, dtype=want, device=dev, copy=True, requires_grad=obj.requires_grad)
    if not isinstance(obj, (np.ndarray, np.generic)) and hasattr(obj, "__array_interface__"):
        obj = np.asarray(obj)
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "OUSV":
        fresh = np.array(obj, dtype=obj.dtype.newbyteorder("="))  # the one copy: native order, positive strides
        return torch.from_numpy(fresh).to(dtype=want, device=dev)
    _arrow_nulls(obj, field, index)
    if hasattr(obj, "__dlpack__") and not isinstance(obj, (np.ndarray, np.generic)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # an unversioned capsule
            src = torch.utils.dlpack.from_dlpack(obj)  # an alias, copied just below
        return torch.asarray(src, dtype=want, device=dev, copy=True, requires_grad=False)
    if not isinstance(obj, (list, tuple, int, float, complex, bool, str, np.ndarray, np.generic)) and obj is not None:
        try:
            view = memoryview(obj)
        except TypeError:
            view = None
        if view is not None and view.format not in _RAW_FORMATS:
            return _copy(np.asarray(view), want, dev, field, index)
        if view is not None:
            _raw_dtype(view, _raw_what(obj, view), want, field, index)
            assert want is not None
            raw = torch.frombuffer(bytearray(view), dtype=want) if view.nbytes else torch.empty(0, dtype=want)
            return raw.to(device=dev)  # the one copy was bytearray(view)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a copy of read-only memory is writable
        return torch.asarray(obj, dtype=want, device=dev, copy=True, requires_grad=False)


def strict_asarray(
    obj: Any,
    *,
    dtype: Any = None,
    device: torch.device | str | int | None = None,
    copy: bool = False,
    requires_grad: bool = False,
    field: str | None = None,
    index: int | None = None,
    allow_read_only: bool = False,
) -> torch.Tensor:
    """Return ``obj`` as a tensor sharing its memory, or raise :class:`CopyRequiredError`.

    Args:
        obj: a tensor, a NumPy array (0-d and memory maps included), or an object exposing DLPack,
            the array interface, the CUDA array interface or the buffer protocol. NumPy scalars
            are refused (they own a copy of the value): index with ``arr[i, ...]`` for a 0-d view.
        dtype: the dtype the caller expects; a different one is an error, never a cast. Required
            for raw byte buffers (``bytearray``, ``bytes``, a byte ``memoryview``), whose bytes are
            then read as this type.
        device: the device the caller expects; data elsewhere is an error, never a move.
        copy: ``False`` (default): never copy. ``True``: copy (and cast / move) instead of an
            error. ``None`` (torch's "copy when needed") is refused: it is the hidden copy.
        requires_grad: ``True``: autograd records operations on the result (floating or complex
            dtypes only); on a tensor input the flag is set on that tensor itself, as
            ``torch.asarray`` does. ``False`` leaves a tensor input's own flag as it is.
        field: field name used in error messages.
        index: dataset index used in error messages.
        allow_read_only: accept read-only memory that cannot be remapped copy-on-write, for a
            caller that never writes to the tensor nor hands it out.

    >>> import numpy as np
    >>> a = np.arange(4, dtype=np.uint8)
    >>> t = strict_asarray(a)
    >>> t.data_ptr() == a.ctypes.data
    True
    """
    if copy is None or not isinstance(copy, (bool, np.bool_)):
        raise TypeError(
            f"copy={copy!r}: pass copy=False (never copy, the default) or copy=True (always copy); "
            "copy=None, torch's 'copy when needed', is the hidden copy strict_asarray refuses"
        )
    want = None if dtype is None else to_torch_dtype(dtype)
    dev = as_device(device)
    if copy:
        return _with_grad(_copy(obj, want, dev, field, index), requires_grad, field, index)

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
        return _with_grad(obj, requires_grad, field, index)

    if isinstance(obj, (list, tuple, int, float, complex, bool, str)) or obj is None:
        raise _fail(
            field,
            index,
            "an array, tensor or buffer",
            f"a Python {type(obj).__name__}",
            "Return a NumPy array or tensor from the dataset (np.asarray(...) once, at build time).",
        )
    if isinstance(obj, np.generic):
        raise _fail(
            field,
            index,
            "an array, tensor or buffer",
            f"a NumPy scalar ({type(obj).__name__}), which holds its own immutable copy of the value",
            "Index with arr[i, ...] (a 0-d view) instead of arr[i], or pass copy=True.",
        )

    if not isinstance(obj, np.ndarray) and hasattr(obj, "__array_interface__"):
        obj = np.asarray(obj)  # the array interface never copies
    if isinstance(obj, np.ndarray):
        out = _numpy_tensor(obj, want, dev, field, index, allow_read_only)
        return _with_grad(out, requires_grad, field, index)

    _arrow_nulls(obj, field, index)
    if hasattr(obj, "__dlpack__"):
        try:
            out = _dlpack_tensor(obj, want, dev, field, index, allow_read_only)  # zero-copy by contract
        except CopyRequiredError:
            raise
        except (ValueError, TypeError, RuntimeError, BufferError) as err:
            raise _opaque(obj, field, index, str(err)) from None
    elif hasattr(obj, "__cuda_array_interface__"):
        out = _cuda_interface_tensor(obj, field, index, allow_read_only)
    else:
        try:
            view = memoryview(obj)
        except TypeError:
            raise _opaque(obj, field, index, "no DLPack, array interface or buffer protocol") from None
        out = _buffer_tensor(obj, view, want, field, index, allow_read_only)
    if want is not None and out.dtype != want:
        raise _fail(field, index, dtype_name(want), dtype_name(out.dtype), "Produce the declared dtype.")
    if dev is not None and out.device != dev and not (dev.index is None and out.device.type == dev.type):
        raise _fail(field, index, f"data on {dev}", f"data on {out.device}", "Move it with a device stage.")
    return _with_grad(out, requires_grad, field, index)
