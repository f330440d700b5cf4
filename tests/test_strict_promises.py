"""``strict_asarray`` with ``torch.asarray``'s keywords: what it accepts, and shares.

Raw bytes with a dtype, typed buffers, DLPack exports NumPy cannot import. The refusals and the
property tests are in ``tests/test_strict_properties.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from zcopy_data import CopyRequiredError, strict_asarray


def test_a_raw_buffer_with_a_dtype_is_read_as_that_dtype_in_place() -> None:
    buf = bytearray(np.arange(4, dtype=np.int16).tobytes())
    t = strict_asarray(buf, dtype=torch.int16)
    assert t.tolist() == [0, 1, 2, 3]
    buf[0] = 9
    assert t[0].item() == 9  # shares the bytearray's memory
    pattern = r"whole number of int32 values \(4 bytes each\), found a bytearray of 6"
    with pytest.raises(CopyRequiredError, match=pattern):
        strict_asarray(bytearray(6), dtype=torch.int32)
    assert strict_asarray(bytearray(6), dtype=torch.int16, copy=True).tolist() == [0, 0, 0]
    assert strict_asarray(bytearray(), dtype=torch.float32).numel() == 0


def test_a_typed_buffer_keeps_its_element_type_and_shape() -> None:
    src = np.arange(6, dtype=np.int32).reshape(2, 3)
    t = strict_asarray(memoryview(src))
    assert t.dtype == torch.int32 and t.shape == (2, 3) and t.data_ptr() == src.ctypes.data
    with pytest.raises(CopyRequiredError, match="expected float32, found int32"):
        strict_asarray(memoryview(src), dtype=torch.float32)  # a reinterpretation is not offered as a cast


class _Exporter:
    """A foreign array that only speaks DLPack."""

    def __init__(self, arr: np.ndarray[Any, Any] | torch.Tensor) -> None:
        self.arr = arr

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.arr.__dlpack_device__()


class _OldExporter(_Exporter):
    """A producer of unversioned capsules: it takes only ``stream`` (DLPack < 1.0)."""

    def __dlpack__(self, stream: Any = None) -> Any:  # type: ignore[override]
        return self.arr.__dlpack__()


def test_dlpack_exports_numpy_cannot_import_are_still_aliased() -> None:
    bf16 = torch.zeros(3, dtype=torch.bfloat16)  # a dtype NumPy lacks
    assert strict_asarray(_Exporter(bf16)).data_ptr() == bf16.data_ptr()
    old = np.arange(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unversioned capsule" DeprecationWarning leaks
        t = strict_asarray(_OldExporter(old))
    assert t.data_ptr() == old.ctypes.data


def test_the_keywords_of_torch_asarray_are_accepted() -> None:
    arr = np.zeros(4, np.float32)
    t = strict_asarray(arr, dtype=torch.float32, device="cpu", copy=False, requires_grad=False)
    assert t.data_ptr() == arr.ctypes.data
    with pytest.raises(TypeError, match="copy=None.*hidden copy"):
        strict_asarray(arr, copy=None)  # type: ignore[arg-type]
