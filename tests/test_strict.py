from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from zcopy_data import CopyRequiredError, strict_asarray


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
)
@pytest.mark.parametrize("shape", [(0,), (5,), (2, 3), (2, 3, 4)])
def test_numpy_arrays_become_tensors_over_the_same_memory(dtype, shape):
    arr = np.zeros(shape, dtype=dtype)
    t = strict_asarray(arr)
    assert t.dtype == torch.from_numpy(arr).dtype
    assert tuple(t.shape) == shape
    if arr.size:
        assert t.data_ptr() == arr.ctypes.data
        arr.flat[0] = 1  # the mutation is seen through the tensor: no copy was made
        assert bool(t.flatten()[0])


def test_tensor_passes_through_unchanged():
    t = torch.arange(6)
    assert strict_asarray(t, dtype=torch.int64) is t


def test_strided_view_stays_a_view():
    arr = np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]
    t = strict_asarray(arr)
    assert t.data_ptr() == arr.ctypes.data
    assert t.stride() == (5, 2)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_only_memmap_is_remapped_copy_on_write(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.float32))
    before = _sha(path)
    mm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable" warning may reach the user
        t = strict_asarray(mm[100:200])
    assert torch.equal(t, torch.arange(100, 200, dtype=torch.float32))
    t.mul_(-1)  # would be SIGSEGV over a read-only mapping
    assert t[0].item() == -100.0
    assert _sha(path) == before  # the file never sees the write
    again = strict_asarray(np.load(path, mmap_mode="r")[100:101])
    assert again.item() == -100.0  # documented: visible to later reads in this process


def test_read_only_buffer_is_refused_unless_only_read():
    data = bytes(range(8))
    with pytest.raises(CopyRequiredError, match="expected writable memory, found a read-only array"):
        strict_asarray(np.frombuffer(data, dtype=np.uint8), field="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = strict_asarray(np.frombuffer(data, dtype=np.uint8), allow_read_only=True)
    assert t.tolist() == list(range(8))


def test_buffer_protocol_and_array_interface_are_zero_copy():
    buf = bytearray(range(16))
    t = strict_asarray(buf, dtype=torch.uint8)
    buf[0] = 99
    assert t[0].item() == 99

    class Exposes:
        def __init__(self, arr):
            self.arr = arr
            self.__array_interface__ = arr.__array_interface__

    base = np.arange(4, dtype=np.int64)
    t2 = strict_asarray(Exposes(base))
    assert t2.data_ptr() == base.ctypes.data


def test_dlpack_objects_are_aliased():
    class Capsule:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    src = torch.arange(5, dtype=torch.float32)
    out = strict_asarray(Capsule(src))
    assert out.data_ptr() == src.data_ptr()


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ([1, 2, 3], "Python list"),
        ((1, 2), "Python tuple"),
        (3.5, "Python float"),
        (np.array(["a", "b"]), "numeric"),
        (np.array([object(), 1], dtype=object), "dtype object"),
        (np.arange(4, dtype=">f4"), "big-endian"),
        (np.arange(4)[::-1], "negative"),
    ],
)
def test_would_copy_raises_clear_error(obj, needle):
    with pytest.raises(CopyRequiredError) as err:
        strict_asarray(obj, field="image", index=7)
    msg = str(err.value)
    assert "field 'image' at index 7" in msg
    assert needle in msg
    assert err.value.field == "image" and err.value.index == 7


def test_dtype_cast_is_refused_not_done():
    arr = np.zeros(3, dtype=np.float64)
    with pytest.raises(CopyRequiredError, match=r"expected float32, found float64.*Field\(torch.float64\)"):
        strict_asarray(arr, dtype=torch.float32, field="x")
    with pytest.raises(CopyRequiredError, match="expected int32, found int64"):
        strict_asarray(torch.zeros(2, dtype=torch.int64), dtype="int32")


def test_device_move_is_refused():
    with pytest.raises(CopyRequiredError, match="a tensor on meta"):
        strict_asarray(torch.zeros(2), device="meta")
    with pytest.raises(CopyRequiredError, match="host memory"):
        strict_asarray(np.zeros(2), device="meta")


def test_copy_opt_in_casts_and_copies():
    arr = np.arange(3, dtype=">i4")
    t = strict_asarray(arr, dtype=torch.int64, copy=True)
    assert t.tolist() == [0, 1, 2] and t.dtype == torch.int64


def test_error_survives_rebuild_from_message():
    # DataLoader workers re-raise as type(err)(message): the type must survive.
    err = CopyRequiredError("field 'x': boom")
    rebuilt = type(err)(str(err))
    assert isinstance(rebuilt, CopyRequiredError) and isinstance(rebuilt, ValueError)
