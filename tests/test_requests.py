"""Batch requests: indices resolved once, contiguous runs found, bad indices refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zcopy_data import NumpyDataset, SampleIndexError
from zcopy_data._requests import BatchRequest, as_index, contiguous_run


@pytest.mark.parametrize(
    ("idx", "run"),
    [([3, 4, 5], (3, 6)), ([5], (5, 6)), ([], None), ([1, 3, 2], None), ([1, 2, 4], None), ([2, 2, 2], None)],
)
def test_contiguous_runs(idx: list[int], run: tuple[int, int] | None) -> None:
    assert contiguous_run(np.asarray(idx, dtype=np.int64)) == run


def test_as_index_takes_integers_only() -> None:
    assert as_index(np.int64(4)) == 4 and type(as_index(np.int32(2))) is int and as_index(torch.tensor(3)) == 3
    for bad in (1.0, True, np.bool_(False), "1", torch.tensor(True)):
        with pytest.raises(SampleIndexError, match="index must be an integer"):
            as_index(bad)


def test_a_request_resolves_negative_indices_and_is_a_lazy_sequence() -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.int64)})
    request = ds.__getitems__([-3, -2, -1])
    assert isinstance(request, BatchRequest) and len(request) == 3
    idx, run = request.resolve()
    assert idx.tolist() == [7, 8, 9] and run == (7, 10) and request.is_view()
    assert int(request[1]["x"]) == 8  # default_collate can read it sample by sample
    with pytest.raises(SampleIndexError, match=r"index 10 \(position 0 in the batch\) is out of range"):
        ds.__getitems__([10]).resolve()


@pytest.mark.parametrize("bad", [10, -11, 2**40])
def test_a_scattered_int64_batch_is_range_checked_in_one_pass(bad: int) -> None:
    ds = NumpyDataset({"x": np.arange(10, dtype=np.int64)})
    idx, run = ds.__getitems__(np.array([4, 0, 7, 2], dtype=np.int64)).resolve()
    assert idx.tolist() == [4, 0, 7, 2] and run is None
    idx, run = ds.__getitems__(np.array([4, -1, 7], dtype=np.int64)).resolve()  # a negative: the full check
    assert idx.tolist() == [4, 9, 7] and run is None
    with pytest.raises(SampleIndexError, match=rf"index {bad} \(position 2 in the batch\) is out of range"):
        ds.__getitems__(np.array([4, 0, bad, 2], dtype=np.int64)).resolve()
