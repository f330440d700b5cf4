"""The strict path keeps ``torch.asarray(copy=False)``'s promise: it shares memory or it raises.

Property tests (every layout torch can alias is aliased, every other one refused; never a silent
copy, whatever the route) and the adversarial cases: NumPy scalars, raw bytes without a dtype,
read-only memory of every kind, Arrow arrays, ``requires_grad``. Each case checks the promise by
mutating the source or the tensor and looking at the other side.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import run_isolated
from zcopy_data import CopyRequiredError, NumpyDataset, ZeroCopyDataset, strict_asarray, zero_copy_collate

pytestmark = pytest.mark.reliability

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


class _DLPack:
    def __init__(self, arr: np.ndarray[Any, Any]) -> None:
        self.arr = arr

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.arr.__dlpack_device__()


class _Interface:
    def __init__(self, arr: np.ndarray[Any, Any]) -> None:
        self.arr = arr
        self.__array_interface__ = arr.__array_interface__


ROUTES = {
    "ndarray": lambda a: a,
    "memoryview": memoryview,
    "dlpack": _DLPack,
    "array-interface": _Interface,
}
NATIVE = [d for d in DTYPES if d not in (np.uint8, np.int8, np.bool_)]  # 1-byte buffers read as raw bytes


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(NATIVE),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    writable=st.booleans(),
    route=st.sampled_from(sorted(ROUTES)),
)
def test_strict_asarray_shares_memory_or_raises_never_copies(
    dtype: Any, shape: list[int], writable: bool, route: str
) -> None:
    """Whatever the route (0-d included), the result is the source's memory, or an error: never a silent copy."""
    src = np.zeros(shape, dtype)
    if not writable:
        src = np.frombuffer(src.tobytes(), dtype).reshape(shape)  # read-only, and no file behind it
    obj = ROUTES[route](src)
    if not writable and src.nbytes:
        with pytest.raises(CopyRequiredError, match="expected writable memory.*allow_read_only"):
            strict_asarray(obj, field="f")
        t = strict_asarray(obj, field="f", allow_read_only=True)
        assert t.data_ptr() == src.ctypes.data and tuple(t.shape) == src.shape
        return
    t = strict_asarray(obj, field="f")
    assert tuple(t.shape) == src.shape and t.dtype == torch.from_numpy(src).dtype
    if src.nbytes:
        assert t.data_ptr() == src.ctypes.data
        t.view(-1)[0] = 1  # a write through the tensor is seen in the source: the same memory
        assert bool(src.reshape(-1)[0])


RAW = [bytearray(8), memoryview(bytearray(8)), bytes(8)]


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.bool_, np.complex64])
def test_a_0d_array_shares_its_memory(dtype: Any) -> None:
    arr = np.zeros((), dtype)
    t = strict_asarray(arr, field="x")
    assert t.shape == () and t.data_ptr() == arr.ctypes.data
    arr[()] = 1
    assert bool(t.item())  # the write to the source is seen through the tensor
    t.zero_()
    assert not bool(arr)  # and the other way round
    view = np.zeros(6, dtype=dtype).reshape(2, 3)[1, 2, ...]  # a 0-d view into a larger array
    assert strict_asarray(view).data_ptr() == view.ctypes.data


@pytest.mark.parametrize("scalar", [np.float32(1.5), np.int64(3), np.bool_(True), np.arange(4)[2]])
def test_a_numpy_scalar_is_refused_not_copied(scalar: Any) -> None:
    pattern = r"field 'x' at index 2: expected an array.*NumPy scalar.*arr\[i, \.\.\.\]"
    with pytest.raises(CopyRequiredError, match=pattern):
        strict_asarray(scalar, field="x", index=2)
    copied = strict_asarray(scalar, copy=True)  # the explicit opt-in still works
    assert copied.item() == scalar.item()


@pytest.mark.parametrize("raw", RAW, ids=["bytearray", "memoryview", "bytes"])
def test_a_raw_buffer_needs_an_explicit_dtype(raw: Any) -> None:
    pattern = (
        r"field 'x': expected an explicit dtype for a (bytearray|memoryview|bytes object) of 8 bytes"
        r".*float32.*dtype=torch\.uint8"
    )
    with pytest.raises(TypeError, match=pattern):
        strict_asarray(raw, field="x")
    with pytest.raises(TypeError, match="explicit dtype"):
        strict_asarray(raw, copy=True)


def test_read_only_memory_is_refused_with_the_fix() -> None:
    ro = np.frombuffer(bytes(range(16)), dtype=np.uint8)
    pattern = (
        r"field 'x': expected writable memory, found a read-only array "
        r".*bytearray\(data\).*copy=True.*allow_read_only"
    )
    with pytest.raises(CopyRequiredError, match=pattern):
        strict_asarray(ro, field="x")
    with pytest.raises(CopyRequiredError, match=r"found a bytes object of 16 bytes, read-only"):
        strict_asarray(bytes(16), dtype=torch.uint8)
    flagged = np.arange(4)
    flagged.flags.writeable = False
    with pytest.raises(CopyRequiredError, match="read-only"):
        strict_asarray(flagged)
    copied = strict_asarray(ro, copy=True)
    copied.fill_(7)  # a private copy: the source is untouched
    assert ro[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning either
        only_read = strict_asarray(ro, allow_read_only=True)
        assert strict_asarray(ro[:0]).numel() == 0  # nothing to write to: accepted
    assert only_read.data_ptr() == ro.ctypes.data


def test_numpy_honours_the_dlpack_read_only_flag() -> None:
    """The read-only check of DLPack exports rests on this documented NumPy behaviour: fail loudly if it changes."""
    ro = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), dtype=np.float32)
    imported = np.from_dlpack(_DLPack(ro), copy=False)
    assert not imported.flags.writeable and imported.ctypes.data == ro.ctypes.data
    assert np.from_dlpack(_DLPack(np.zeros(2)), copy=False).flags.writeable


def test_a_dlpack_export_flagged_read_only_is_refused() -> None:
    writable = np.arange(4, dtype=np.float32)
    t = strict_asarray(_DLPack(writable))
    t[0] = 5
    assert writable[0] == 5  # the same memory
    ro = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), dtype=np.float32)
    with pytest.raises(CopyRequiredError, match="expected writable memory, found a _DLPack exported read-only"):
        strict_asarray(_DLPack(ro))
    assert strict_asarray(_DLPack(ro), allow_read_only=True).data_ptr() == ro.ctypes.data
    with pytest.raises(CopyRequiredError, match=r"expected int64, found float32.*Field\(torch\.float32\)"):
        strict_asarray(_DLPack(writable), dtype=torch.int64)


def test_a_read_only_cuda_array_interface_is_refused_before_torch_reads_it() -> None:
    class Device:
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (0, True), "version": 3}  # noqa: RUF012

    with pytest.raises(CopyRequiredError, match="field 'g': expected writable memory.*__cuda_array_interface__"):
        strict_asarray(Device(), field="g")


def test_a_pyarrow_array_with_nulls_is_refused_without_a_warning() -> None:
    arr = pa.array([1.0, None, 3.0], pa.float32())
    for copy in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pattern = r"field 'x': expected an Arrow array without nulls, found 1 null in 3.*fill_null"
            with pytest.raises(CopyRequiredError, match=pattern):
                strict_asarray(arr, field="x", copy=copy)
        assert [str(w.message) for w in caught] == []


def test_a_pyarrow_array_is_read_only_memory() -> None:
    arr = pa.array(np.arange(5, dtype=np.int64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CopyRequiredError, match="exported read-only through DLPack.*ArrowDataset"):
            strict_asarray(arr)
        t = strict_asarray(arr, allow_read_only=True)
        copied = strict_asarray(arr, copy=True)
    assert [str(w.message) for w in caught] == []
    assert t.tolist() == [0, 1, 2, 3, 4] and t.data_ptr() == arr.buffers()[1].address
    copied.fill_(9)
    assert arr.to_pylist() == [0, 1, 2, 3, 4]


def test_requires_grad_shares_memory_and_refuses_integers() -> None:
    arr = np.ones(3, np.float32)
    t = strict_asarray(arr, requires_grad=True)
    assert t.requires_grad and t.is_leaf and t.data_ptr() == arr.ctypes.data
    (t * 2).sum().backward()
    assert t.grad is not None and t.grad.tolist() == [2.0, 2.0, 2.0]
    zero_d = strict_asarray(np.array(2.0), requires_grad=True)
    assert zero_d.requires_grad and zero_d.shape == ()
    pattern = "field 'y': requires_grad=True expected a floating-point or complex dtype, found int64"
    with pytest.raises(TypeError, match=pattern):
        strict_asarray(np.arange(3), requires_grad=True, field="y")
    src = torch.zeros(2)
    assert strict_asarray(src, requires_grad=True) is src and src.requires_grad  # as torch.asarray does
    assert strict_asarray(src) is src and src.requires_grad  # False leaves the tensor's own flag alone
    assert strict_asarray(np.arange(3.0), copy=True, requires_grad=True).requires_grad


@pytest.mark.parametrize(
    "obj",
    [[1, 2], np.zeros(3, ">f4"), np.zeros(3)[::-1], np.float64(1), np.frombuffer(b"abcd", np.uint8), object()],
    ids=["list", "big-endian", "negative-strides", "scalar", "read-only", "opaque"],
)
def test_messages_without_a_field_read_naturally(obj: Any) -> None:
    with pytest.raises(CopyRequiredError) as err:
        strict_asarray(obj)
    assert str(err.value).startswith("expected "), str(err.value)
    assert "value:" not in str(err.value)
    assert err.value.field is None and err.value.index is None


class _Columns(ZeroCopyDataset):
    def __init__(self, cols: dict[str, Any], copy: bool) -> None:
        self.cols = cols
        self.copy = copy

    def columns(self) -> dict[str, Any]:
        return self.cols


def test_a_read_only_column_is_served_only_as_copies() -> None:
    ro = np.frombuffer(np.arange(12, dtype=np.int32).tobytes(), dtype=np.int32).reshape(6, 2)
    copied = zero_copy_collate(_Columns({"x": ro}, copy=True).__getitems__([0, 1, 2]))["x"]
    copied.fill_(-1)  # a batch of its own: the read-only source is untouched
    assert ro[:3].tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(CopyRequiredError, match="field 'x': expected writable memory.*copy=True"):
        zero_copy_collate(_Columns({"x": ro}, copy=False).__getitems__([0, 1, 2]))
    flagged = np.arange(10, dtype=np.int32)
    flagged.flags.writeable = False
    ds = NumpyDataset({"x": flagged}, copy=True)
    assert zero_copy_collate(ds.__getitems__([4, 1]))["x"].tolist() == [4, 1]


WRITE_TO_READ_ONLY_MMAP = """
import mmap, sys
import numpy as np
from zcopy_data import CopyRequiredError, strict_asarray
with open(sys.argv[1], "rb") as f:
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
arr = np.frombuffer(mm, dtype=np.uint8)        # read-only pages, and not an np.memmap
try:
    t = strict_asarray(arr, field="x")
except CopyRequiredError as err:
    print("refused:", err)
else:
    t.add_(1)                                  # SIGSEGV: the pages are mapped read-only
    print("written")
"""


def test_a_read_only_mapping_that_is_not_a_memmap_is_refused_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(4096))
    proc = run_isolated(WRITE_TO_READ_ONLY_MMAP, str(path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: field 'x': expected writable memory"), proc.stdout
    assert path.read_bytes() == bytes(4096)
