"""The one gather: a view for a contiguous run, one ``index_select`` per field otherwise, counted."""

from __future__ import annotations

import pytest
import torch

from zcopy_data.ledger import COLLATE, capture
from zcopy_data.memory.gather import gather_fields, take_rows, view_rows
from zcopy_data.memory.policy import HostAllocation


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bool])
def test_rows_of_every_dtype_are_taken_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        raw = torch.randint(0, 2, (20, 2), dtype=torch.uint8, generator=g)
    else:  # any bits, the top one included: wide unsigned types move the same bits, never a cast
        raw = torch.randint(0, 256, (20, 2 * dtype.itemsize), dtype=torch.uint8, generator=g)
    src = raw.view(dtype)
    rows = torch.tensor([7, 0, 19, 7])
    out = take_rows(src, rows, HostAllocation())
    assert out.dtype == dtype and out.shape == (4, 2)
    assert torch.equal(out.view(torch.uint8), raw[rows])


def test_gather_fields_views_a_run_and_gathers_otherwise_with_ledger_rows() -> None:
    sources = {"x": torch.arange(30.0).reshape(10, 3), "y": torch.arange(10)}
    with capture() as records:
        views = gather_fields(sources, torch.arange(2, 5), (2, 5), HostAllocation())
        gathered = gather_fields(sources, torch.tensor([4, 1]), None, HostAllocation())
    assert views["x"].data_ptr() == view_rows(sources["x"], 2, 5).data_ptr()
    assert torch.equal(gathered["y"], torch.tensor([4, 1])) and gathered["x"].data_ptr() != sources["x"].data_ptr()
    rows = [(r[0], r[1], r[3], r[4]) for r in records]
    assert rows == [
        (COLLATE, "x", 36, 0),
        (COLLATE, "y", 24, 0),
        (COLLATE, "x", 0, 24),
        (COLLATE, "y", 0, 16),
    ]
