from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import DataLoader, Dataset, default_collate

from zcopy_data import (
    CopyRequiredError,
    DtypeDriftError,
    NumpyDataset,
    ShapeMismatchError,
    explain,
    zero_copy_collate,
)
from zcopy_data.ledger import capture

Point = namedtuple("Point", ["x", "y"])


def assert_same(a: Any, b: Any) -> None:
    """Equal in structure, type, dtype, shape and values."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.numpy(), b.numpy(), equal_nan=True)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("kind", ["numpy", "tensor", "scalar"])
def test_leaves_match_default_collate(dtype, shape, kind):
    rng = np.random.default_rng(0)
    arrays = [(rng.random(shape) * 10).astype(dtype) for _ in range(4)]
    if kind == "tensor":
        batch = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    elif kind == "scalar":
        batch = [np.asarray(a).reshape(-1)[0] if a.size else dtype(0) for a in arrays]
        batch = [dtype(b) for b in batch]
    else:
        batch = arrays
    assert_same(zero_copy_collate(batch), default_collate(batch))


@pytest.mark.parametrize(
    "batch",
    [
        [1, 2, 3],
        [1.5, 2.5],
        [True, False],
        ["a", "b"],
        [b"a", b"b"],
        [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}],
        [(1, 2.0), (3, 4.0)],
        [[1, 2], [3, 4]],
        [Point(1, np.zeros(2)), Point(2, np.ones(2))],
        [{"img": np.zeros((2, 2), np.uint8), "meta": {"id": 3, "tags": ["a", "b"]}}] * 3,
        [{"nested": [torch.ones(2), (np.int32(1), "s")]}] * 2,
    ],
)
def test_structures_match_default_collate(batch):
    assert_same(zero_copy_collate(batch), default_collate(batch))


leaf = st.one_of(
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, width=64),
    st.text(max_size=3),
    hnp.arrays(st.sampled_from(DTYPES), st.just((2, 3))),
)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.lists(kids, min_size=1, max_size=3), st.dictionaries(st.text(max_size=3), kids, min_size=1, max_size=3)
        ),
        max_leaves=6,
    ),
    st.integers(1, 4),
)
def test_random_structures_match_default_collate(sample, n):
    batch = [sample] * n
    assert_same(zero_copy_collate(batch), default_collate(batch))


def test_per_sample_arrays_are_stacked_with_exactly_one_copy():
    batch = [np.full((3, 4), i, np.float32) for i in range(8)]
    with capture() as records:
        out = zero_copy_collate(batch)
    assert records == [("collate", "<sample>", "stack: per-sample values", 0, 8 * 3 * 4 * 4)]
    assert not any(np.shares_memory(out.numpy(), b) for b in batch)


def test_drift_and_shape_errors_are_clear():
    with pytest.raises(DtypeDriftError, match=r"field 'x' at batch position 1: expected float32 .*found float64"):
        zero_copy_collate([{"x": np.zeros(2, np.float32)}, {"x": np.zeros(2, np.float64)}])
    with pytest.raises(
        ShapeMismatchError, match=r"field 'x' at batch position 2: expected shape \(2,\) .*found \(3,\)"
    ):
        zero_copy_collate([{"x": torch.zeros(2)}, {"x": torch.zeros(2)}, {"x": torch.zeros(3)}])
    with pytest.raises(DtypeDriftError, match="expected a int like the batch's first sample, found a float"):
        zero_copy_collate([{"n": 1}, {"n": 2.5}])
    with pytest.raises(ShapeMismatchError, match="has 3 elements"):
        zero_copy_collate([[1, 2], [1, 2, 3]])
    with pytest.raises(CopyRequiredError, match="dtype object"):
        zero_copy_collate([{"o": np.array([object()])}] * 2)
    with pytest.raises(CopyRequiredError, match="big-endian"):
        zero_copy_collate([np.zeros(2, ">i4")] * 2)


def test_contiguous_batch_is_one_view_and_shuffled_is_one_gather(npy_files):
    ds = NumpyDataset({k: str(v) for k, v in npy_files.items()})
    cols = ds.columns()
    with capture() as records:
        view = zero_copy_collate(ds.__getitems__(list(range(20, 30))))
    assert view["image"].data_ptr() == cols["image"][20:].ctypes.data
    assert np.shares_memory(view["label"].numpy(), cols["label"])
    assert all(r[4] == 0 for r in records)
    idx = [5, 3, 99, 3, 0]
    with capture() as records:
        gathered = zero_copy_collate(ds.__getitems__(idx))
    assert np.array_equal(gathered["image"].numpy(), cols["image"][idx])
    assert not np.shares_memory(gathered["image"].numpy(), cols["image"])
    assert [(r[1], r[4]) for r in records] == [("image", 5 * 48), ("label", 5 * 8)]


def test_zero_copy_proven_by_mutating_the_source():
    src = np.zeros((10, 2), np.float32)
    ds = NumpyDataset({"x": src})
    batch = zero_copy_collate(ds.__getitems__([2, 3, 4]))
    src[3] = 7
    assert batch["x"][1].tolist() == [7.0, 7.0]


class _Rows(Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return {"x": torch.full((4,), i, dtype=torch.int32), "i": i}


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_worker_batches_are_born_in_shared_memory(ctx):
    loader = DataLoader(_Rows(), batch_size=8, num_workers=2, collate_fn=zero_copy_collate, multiprocessing_context=ctx)
    report = explain(loader, batches=4)
    crossing = [r for r in report.rows if r.stage == "worker->main"]
    assert crossing and all(r.bytes_copied == 0 for r in crossing)
    assert report.copied("collate") == 4 * 8 * (16 + 8)
    seen = sorted(i for b in loader for i in b["i"].tolist())
    assert seen == list(range(32))
