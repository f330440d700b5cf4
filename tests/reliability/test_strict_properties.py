"""Property tests for the strict path: every layout torch can alias is aliased, every other one refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zcopy_data import CopyRequiredError, strict_asarray

DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]  # fmt: skip


@st.composite
def views(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """A random strided view: slices with random (also negative) steps, transposes, byte order."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()) and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    base = np.arange(int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(shape)
    index = tuple(slice(draw(st.integers(0, d - 1)), None, draw(st.sampled_from([1, 2, -1, -2]))) for d in base.shape)
    view = base[index]
    if draw(st.booleans()):
        view = view.T
    return view


@settings(max_examples=100, deadline=None)
@given(arr=views())
def test_strict_asarray_aliases_or_refuses(arr: np.ndarray[Any, Any]) -> None:
    refusable = (not arr.dtype.isnative) or any(s < 0 for s in arr.strides)
    if refusable:
        with pytest.raises(
            CopyRequiredError, match=r"field 'f' at index 3: expected (native byte order|non-negative strides)"
        ):
            strict_asarray(arr, field="f", index=3)
        copied = strict_asarray(arr, copy=True)  # the explicit opt-in always works
        assert np.array_equal(copied.numpy(), arr.astype(arr.dtype.newbyteorder("=")), equal_nan=arr.dtype.kind in "fc")
        return
    t = strict_asarray(arr, field="f", index=3)
    assert t.data_ptr() == arr.ctypes.data
    assert tuple(t.shape) == arr.shape
    assert tuple(s * t.element_size() for s in t.stride()) == arr.strides
    assert np.shares_memory(t.numpy(), arr) or arr.size == 0
    assert t.numpy().tobytes() == arr.tobytes()  # bit for bit, NaN payloads included


@settings(max_examples=50, deadline=None)
@given(dtype=st.sampled_from(DTYPES), other=st.sampled_from(DTYPES))
def test_strict_asarray_never_casts(dtype: Any, other: Any) -> None:
    arr = np.zeros(3, dtype)
    want = torch.from_numpy(np.zeros(0, other)).dtype
    if np.dtype(dtype) == np.dtype(other):
        assert strict_asarray(arr, dtype=want).data_ptr() == arr.ctypes.data
    else:
        with pytest.raises(CopyRequiredError, match="a zero-copy tensor is impossible"):
            strict_asarray(arr, dtype=want)
