"""Property tests: a batch of random indices equals NumPy fancy indexing; contiguous runs are views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcopy_data import NumpyDataset, SampleIndexError, zero_copy_collate
from zcopy_data.ledger import capture

pytestmark = pytest.mark.reliability

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [np.bool_, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.complex64]


@st.composite
def columns(draw: st.DrawFn) -> dict[str, np.ndarray[Any, Any]]:
    n = draw(st.integers(1, 40), label="samples")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    out = {}
    for name in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True), label="fields"):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = (n, *draw(st.lists(st.integers(1, 3), max_size=2), label=f"{name} shape"))
        raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        arr = (
            raw.view(dtype).reshape(shape)
            if dtype.kind != "b"
            else (raw[: int(np.prod(shape))] & 1).astype(bool).reshape(shape)
        )
        if draw(st.booleans(), label=f"{name} fortran"):
            arr = np.asfortranarray(arr)  # rows are strided, not contiguous
        out[name] = arr
    return out


def _indices(n: int) -> st.SearchStrategy[list[int]]:
    scattered = st.lists(st.integers(-n, n - 1), min_size=1, max_size=2 * n)
    run = st.tuples(st.integers(0, n - 1), st.integers(1, n)).map(lambda t: list(range(t[0], min(n, t[0] + t[1]))))
    negative_run = run.map(lambda r: [i - n for i in r])
    return st.one_of(scattered, run, negative_run)


def _bytes_equal(t: torch.Tensor, a: np.ndarray[Any, Any]) -> bool:
    return t.dtype == torch.from_numpy(np.zeros(0, a.dtype)).dtype and t.numpy().tobytes() == a.tobytes()


@SETTINGS
@given(cols=columns(), data=st.data())
def test_gather_equals_numpy_fancy_indexing(cols: dict[str, np.ndarray[Any, Any]], data: st.DataObject) -> None:
    n = len(next(iter(cols.values())))
    idx = data.draw(_indices(n), label="indices")
    ds = NumpyDataset(cols)
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(idx))
    positive = [i % n for i in idx]
    is_run = positive == list(range(positive[0], positive[0] + len(positive)))
    assert list(batch) == list(cols)
    for name, col in cols.items():
        want = col[np.asarray(idx)]
        out = batch[name]
        assert tuple(out.shape) == want.shape
        assert _bytes_equal(out, want), name
        if is_run:
            # a view over the source: same first byte, shared memory, zero bytes copied
            assert out.data_ptr() == col[positive[0] :].ctypes.data
            assert np.shares_memory(out.numpy(), col)
        else:
            assert not np.shares_memory(out.numpy(), col)
    copied = sum(r[4] for r in records)
    viewed = sum(r[3] for r in records)
    nbytes = sum(batch[name].numel() * batch[name].element_size() for name in cols)
    assert (copied, viewed) == ((0, nbytes) if is_run else (nbytes, 0))


@SETTINGS
@given(cols=columns(), data=st.data())
def test_copy_true_never_shares_memory(cols: dict[str, np.ndarray[Any, Any]], data: st.DataObject) -> None:
    n = len(next(iter(cols.values())))
    idx = data.draw(_indices(n), label="indices")
    ds = NumpyDataset(cols, copy=True)
    batch = zero_copy_collate(ds.__getitems__(idx))
    for name, col in cols.items():
        assert _bytes_equal(batch[name], col[np.asarray(idx)])
        assert not np.shares_memory(batch[name].numpy(), col)


@SETTINGS
@given(cols=columns(), data=st.data())
def test_mutating_the_source_is_seen_through_a_contiguous_batch(
    cols: dict[str, np.ndarray[Any, Any]], data: st.DataObject
) -> None:
    n = len(next(iter(cols.values())))
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    ds = NumpyDataset(cols)
    batch = zero_copy_collate(ds.__getitems__(list(range(start, stop))))
    for name, col in cols.items():
        col[start:stop] = np.ones((), col.dtype)
        assert _bytes_equal(batch[name], col[start:stop])


@SETTINGS
@given(
    n=st.integers(1, 50),
    data=st.data(),
)
def test_out_of_range_indices_are_refused_naming_the_first_offender(n: int, data: st.DataObject) -> None:
    ds = NumpyDataset({"x": np.arange(n, dtype=np.int32)})
    good = data.draw(st.lists(st.integers(-n, n - 1), max_size=8), label="good")
    bad = data.draw(st.one_of(st.integers(n, n + 2**40), st.integers(-(2**40), -n - 1)), label="bad")
    pos = data.draw(st.integers(0, len(good)), label="position")
    idx = [*good[:pos], bad, *good[pos:]]
    with pytest.raises(SampleIndexError) as err:
        zero_copy_collate(ds.__getitems__(idx))
    assert err.value.index == bad
    assert f"index {bad} (position {pos} in the batch)" in str(err.value)
    assert f"dataset of {n} samples" in str(err.value)


def test_file_backed_contiguous_batch_is_a_view_of_the_mapping_and_a_gather_is_not(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", arr)
    ds = NumpyDataset({"x": str(tmp_path / "x.npy")})
    mapped = ds.columns()["x"]
    view = zero_copy_collate(ds.__getitems__([4, 5, 6]))["x"]
    gathered = zero_copy_collate(ds.__getitems__([6, 4, 5]))["x"]
    assert view.data_ptr() == mapped[4:].ctypes.data
    assert np.shares_memory(view.numpy(), mapped)
    assert not np.shares_memory(gathered.numpy(), mapped)
    assert np.array_equal(gathered.numpy(), arr[[6, 4, 5]])


@pytest.mark.parametrize(
    "indices",
    [[1.5, 2.0], [0.0], np.array([1.0, 2.0]), [True, False], np.array([True, False, True])],
    ids=["float", "float-whole", "float-array", "bool", "bool-array"],
)
def test_non_integer_indices_are_refused_not_truncated(indices: Any) -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.float32)})
    with pytest.raises(SampleIndexError, match="indices must be integers"):
        zero_copy_collate(ds.__getitems__(indices))


@pytest.mark.parametrize("index", [1.5, 2.0, True, "3"])
def test_getitem_refuses_a_non_integer_index(index: Any) -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.float32)})
    with pytest.raises(SampleIndexError, match="index must be an integer"):
        ds[index]


def test_integer_like_indices_are_accepted() -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.float32)})
    for idx in (
        [np.int64(3), np.int32(4)],
        torch.tensor([3, 4]),
        [torch.tensor(3), torch.tensor(4)],
        np.array([3, 4], np.uint8),
    ):
        assert zero_copy_collate(ds.__getitems__(idx))["x"].tolist() == [3.0, 4.0]
    assert ds[np.int64(3)]["x"] == 3.0
    assert ds[torch.tensor(3)]["x"] == 3.0


def test_indices_beyond_int64_are_out_of_range_not_wrapped() -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.float32)})
    for idx in ([2**70], np.array([2**64 - 1], np.uint64)):
        with pytest.raises(SampleIndexError, match="out of range"):
            zero_copy_collate(ds.__getitems__(idx))


@pytest.mark.parametrize(
    "indices", [[[1, 2], [3]], [None], ["a"], [[1, 2], [3, 4]]], ids=["ragged", "none", "str", "2d"]
)
def test_malformed_index_batches_are_refused(indices: Any) -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.float32)})
    with pytest.raises(SampleIndexError):
        zero_copy_collate(ds.__getitems__(indices))
