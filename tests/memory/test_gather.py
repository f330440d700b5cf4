"""The one gather: a view for a contiguous run, one ``index_select`` per field otherwise, counted."""

from __future__ import annotations

import pytest
import torch

from zcopy_data.ledger import COLLATE, capture
from zcopy_data.memory.gather import gather_fields, one_thread, take_rows, view_rows
from zcopy_data.memory.policy import Allocation, GatherThreadAllocation, HostAllocation

_DTYPES = [torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.bool]
_DTYPES += [torch.complex64, torch.complex128, torch.float64]


@pytest.mark.parametrize("threads", ["torch", "one"])
@pytest.mark.parametrize("dtype", _DTYPES)
def test_rows_of_every_dtype_are_taken_bit_for_bit(dtype: torch.dtype, threads: str) -> None:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        raw = torch.randint(0, 2, (20, 2), dtype=torch.uint8, generator=g)
    else:  # any bits, the top one included: wide unsigned types move the same bits, never a cast
        raw = torch.randint(0, 256, (20, 2 * dtype.itemsize), dtype=torch.uint8, generator=g)
    src = raw.view(dtype)
    rows = torch.tensor([7, 0, 19, 7])
    alloc: Allocation = HostAllocation() if threads == "torch" else GatherThreadAllocation(HostAllocation())
    assert one_thread(alloc) is (threads == "one")
    out = take_rows(src, rows, alloc)
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


def test_a_gather_thread_copies_strided_sources_and_uses_the_inner_allocations_buffers() -> None:
    inner = HostAllocation(per_shape=1)
    alloc = GatherThreadAllocation(inner)
    src = torch.arange(120, dtype=torch.int32).reshape(20, 6)[:, ::2]  # rows of a strided column
    rows = torch.tensor([3, 19, 0])
    first = gather_fields({"x": src}, rows, None, alloc)["x"]
    assert torch.equal(first, src[rows]) and alloc.kind == inner.kind == "host"
    ptr = first.data_ptr()
    del first
    again = gather_fields({"x": src}, torch.tensor([1, 2, 4]), None, alloc)["x"]
    assert again.data_ptr() == ptr  # the inner pool's buffer, reused once nothing held it
    assert torch.equal(again, src[torch.tensor([1, 2, 4])])
