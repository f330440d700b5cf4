"""Fault injection on in-memory arrays and per-sample values: layouts and dtypes torch cannot alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from tests.support import consume, run_isolated
from zcopy_data import CopyRequiredError, NumpyDataset, SchemaError, ZeroCopyDataset, strict_asarray, zero_copy_collate

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("copy", [False, True])
def test_big_endian_column_is_refused_with_the_one_time_conversion(copy: bool) -> None:
    with pytest.raises(CopyRequiredError, match=r"field 'x': the array is >f4 \(big-endian\).*astype\('<f4'\)"):
        NumpyDataset({"x": np.arange(10, dtype=">f4")}, copy=copy)


def test_negative_stride_column_is_refused_naming_the_field() -> None:
    with pytest.raises(CopyRequiredError, match=r"field 'x': expected non-negative strides, found strides \(-8,\)"):
        NumpyDataset({"x": np.arange(10)[::-1]})


@pytest.mark.parametrize(
    "make",
    [lambda a: a[:, ::2], lambda a: a[::2], lambda a: a.T.copy().T, lambda a: a[:, 1:3]],
    ids=["strided-cols", "strided-rows", "fortran", "offset-slice"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_non_contiguous_columns_give_correct_batches_and_views(make: Any, workers: int) -> None:
    base = np.arange(48 * 4, dtype=np.int32).reshape(48, 4)
    col = make(base)
    assert not col.flags.c_contiguous or col.base is not None
    ds = NumpyDataset({"x": col})
    out = [b["x"] for b in DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=zero_copy_collate)]
    assert np.array_equal(np.concatenate([t.numpy() for t in out]), col)
    if workers == 0:
        assert np.shares_memory(out[1].numpy(), col)  # a contiguous run is still a view
    scattered = zero_copy_collate(ds.__getitems__([7, 2, 20]))["x"]
    assert np.array_equal(scattered.numpy(), col[[7, 2, 20]])
    assert not np.shares_memory(scattered.numpy(), col)


def test_object_column_is_refused() -> None:
    with pytest.raises(SchemaError, match="field 'x': object arrays cannot be zero-copy"):
        NumpyDataset({"x": np.array([1, None], dtype=object)})


def test_read_only_array_is_refused_unless_copy_isolates_it() -> None:
    src = np.frombuffer(bytes(range(40)), np.uint8).reshape(10, 4)
    with pytest.raises(CopyRequiredError, match="field 'x': the array is read-only"):
        NumpyDataset({"x": src})
    ds = NumpyDataset({"x": src}, copy=True)
    batch = zero_copy_collate(ds.__getitems__([0, 1, 2]))["x"]
    assert not np.shares_memory(batch.numpy(), src)
    batch.fill_(255)  # writable, and the source is untouched
    assert src[:3].tolist() == [list(range(i * 4, i * 4 + 4)) for i in range(3)]


WRITE_TO_READ_ONLY_MAP = """
import hashlib, sys
import numpy as np
from zcopy_data import NumpyDataset, zero_copy_collate
path = sys.argv[1]
np.save(path, np.arange(4000, dtype=np.float32).reshape(1000, 4))
before = hashlib.sha256(open(path, "rb").read()).hexdigest()
ro = np.load(path, mmap_mode="r")
ds = NumpyDataset({"x": ro})
view = zero_copy_collate(ds.__getitems__(list(range(10, 20))))["x"]
view.add_(1).mul_(-1)                      # in place on a view of a read-only mapping
again = zero_copy_collate(ds.__getitems__(list(range(10, 20))))["x"]
assert float(again[0, 0]) == -(40 + 1), float(again[0, 0])   # visible in this process (same mapping)
assert float(ro[10, 0]) == 40.0                              # not through the user's read-only map
after = hashlib.sha256(open(path, "rb").read()).hexdigest()
assert before == after, "the file changed"
print("ok")
"""


def test_in_place_ops_on_a_read_only_mapping_never_crash_nor_reach_the_file(tmp_path: Path) -> None:
    proc = run_isolated(WRITE_TO_READ_ONLY_MAP, str(tmp_path / "ro.npy"))
    assert proc.returncode == 0, f"rc={proc.returncode}: {proc.stderr[-800:]}"
    assert proc.stdout.strip() == "ok"


# -- per-sample values ------------------------------------------------------------------------------
class _Samples(ZeroCopyDataset):
    """A per-sample dataset whose sample ``bad`` is replaced by ``value``."""

    def __init__(self, value: Any, bad: int = 5, n: int = 12) -> None:
        self.value, self.bad, self.n = value, bad, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == self.bad:
            return {"x": self.value}
        return {"x": np.zeros(4, np.float32)}


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.zeros(4, ">f4"), CopyRequiredError, "expected native byte order"),
        (np.zeros(8, np.float32)[::-2], CopyRequiredError, "expected non-negative strides"),
        (np.array([None] * 4, dtype=object), CopyRequiredError, "expected a numeric array, found dtype object"),
        (np.zeros(4, np.longdouble), CopyRequiredError, "expected a dtype torch supports"),
        (np.zeros(4, np.float64), SchemaError, "expected float32 .*found float64"),
        (np.zeros(5, np.float32), SchemaError, r"expected shape \(4,\)"),
    ],
    ids=["big-endian", "negative-stride", "object", "longdouble", "dtype-drift", "shape"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_sample_is_named_by_field_and_dataset_index(value: Any, error: type, message: str, workers: int) -> None:
    loader = DataLoader(
        _Samples(value), batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with pytest.raises(error, match=rf"field 'x' at index 5: {message}"):
        consume(loader)


@pytest.mark.parametrize(
    ("obj", "kwargs", "message"),
    [
        ([1, 2, 3], {}, "expected an array, tensor or buffer, found a Python list"),
        (np.zeros(3, np.float64), {"dtype": torch.float32}, "expected float32, found float64"),
        (torch.zeros(3), {"dtype": torch.float64}, "expected float64, found float32"),
        (np.zeros(3), {"device": "meta"}, "expected data on meta, found host memory"),
        (torch.zeros(3), {"device": "meta"}, "expected a tensor on meta, found one on cpu"),
        (np.zeros(3, ">i4"), {}, "expected native byte order"),
        (object(), {}, "expected an object torch can alias"),
    ],
    ids=["list", "np-cast", "tensor-cast", "np-move", "tensor-move", "big-endian", "opaque"],
)
def test_strict_asarray_refuses_every_hidden_copy(obj: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CopyRequiredError, match=rf"field 'f' at index 9: {message}"):
        strict_asarray(obj, field="f", index=9, **kwargs)


def test_default_collate_fails_on_the_same_layouts() -> None:
    """The refusals above are not stricter than PyTorch: it cannot alias these either."""
    for bad in (np.zeros(4, ">f4"), np.zeros(8, np.float32)[::-2]):
        with pytest.raises(ValueError):
            default_collate([bad])
