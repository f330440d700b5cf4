"""Small batches built a few at a time without workers: one build for several index batches, the
same batches as built one by one, each counted in the ledger as it is handed out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from zcopy_data import (
    ArrowDataset,
    LazyShuffleSampler,
    NumpyDataset,
    SampleIndexError,
    ZeroCopyDataLoader,
    explain,
)
from zcopy_data._batch_groups import group_size
from zcopy_data.datasets import TokenDataset
from zcopy_data.ledger import LEDGER, capture, held, record
from zcopy_data.memory.policy import (
    ExactPinnedAllocation,
    HostAllocation,
    PinnedAllocation,
    SharedAllocation,
)

SEQ = 16


def _windows(tokens: np.ndarray, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    w = np.stack([tokens[i : i + SEQ + 1] for i in idx])
    return w[:, :-1], w[:, 1:]


class ArrayBatches:
    """A batch sampler of fixed index arrays (int64), as a user's own sampler may yield them."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches
        self.batch_size = len(batches[0])

    def __iter__(self) -> Any:
        return (np.asarray(b, dtype=np.int64) for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_shuffled_token_batches_built_in_groups_equal_the_reference_and_share_one_gather(
    bin_file: Path, tokens: np.ndarray
) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)
    sampler = LazyShuffleSampler(ds, 6, seed=3)  # 4984 windows: the last batch has 4
    loader = ZeroCopyDataLoader(ds, batch_sampler=sampler)
    order = list(sampler)
    batches = list(loader)  # all held at once: no later group may overwrite an earlier one
    assert [len(b["input"]) for b in batches] == [len(i) for i in order]
    assert len(order[-1]) == 4
    for batch, idx in zip(batches, order, strict=True):
        x, y = _windows(tokens, idx)
        assert batch["input"].is_contiguous() and batch["target"].is_contiguous()
        assert batch["input"].dtype == torch.uint16
        assert np.array_equal(batch["input"].numpy(), x) and np.array_equal(batch["target"].numpy(), y)
    # one gather built several batches: batch 2 starts where batch 1 ends, in the same buffer
    a, b = batches[0]["input"], batches[1]["input"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert b.data_ptr() == a.data_ptr() + a.nbytes


def test_the_ledger_counts_each_batch_of_a_group_as_it_is_handed_out(bin_file: Path) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)
    loader = ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 8, seed=0))
    per_batch = [
        ("collate", "input", "gather: windows not consecutive", 0, 8 * SEQ * 2),
        ("collate", "target", "gather: windows not consecutive", 0, 8 * SEQ * 2),
    ]
    LEDGER.reset()
    it = iter(loader)
    for _ in range(5):  # the first builds the group, the others only hand out its views
        with capture() as records:
            next(it)
        assert records == per_batch
    assert LEDGER.copied("collate") == 5 * 2 * 8 * SEQ * 2
    assert explain(loader, batches=3).bytes_copied == 3 * 2 * 8 * SEQ * 2


def test_a_batch_that_is_one_run_stays_a_view_among_shuffled_ones() -> None:
    src = np.arange(400, dtype=np.float32).reshape(100, 4)
    ds = NumpyDataset({"x": src})
    loader = ZeroCopyDataLoader(ds, batch_sampler=ArrayBatches([[5, 1, 9, 3], [10, 11, 12, 13], [7, 2, 8, 0]]))
    batches = [b["x"] for b in loader]
    for b, idx in zip(batches, [[5, 1, 9, 3], [10, 11, 12, 13], [7, 2, 8, 0]], strict=True):
        assert np.array_equal(b.numpy(), src[idx])
    assert batches[1].data_ptr() == src.ctypes.data + 10 * 16  # a view of the array, not a gathered copy


@pytest.mark.parametrize("workers", [0, 2])  # built in this thread, and on gather threads
def test_a_bad_index_is_raised_at_its_own_batch_after_the_good_ones(workers: int) -> None:
    src = np.arange(400, dtype=np.float32).reshape(100, 4)
    loader = ZeroCopyDataLoader(
        NumpyDataset({"x": src}),
        batch_sampler=ArrayBatches([[1, 2, 4, 3], [5, 0, 7, 6], [9, 100000, 8, 1]]),
        num_workers=workers,
    )
    assert loader.uses_threads == bool(workers)
    it = iter(loader)
    assert np.array_equal(next(it)["x"].numpy(), src[[1, 2, 4, 3]])
    assert np.array_equal(next(it)["x"].numpy(), src[[5, 0, 7, 6]])
    with pytest.raises(SampleIndexError, match=r"index 100000 \(position 1 in the batch\)"):
        next(it)


class FailingBatches(ArrayBatches):
    """Yields its batches, then raises: a sampler that breaks mid-epoch."""

    def __iter__(self) -> Any:
        yield from super().__iter__()
        raise ValueError("the sampler broke")


def test_a_sampler_error_is_raised_after_the_batches_drawn_before_it() -> None:
    src = np.arange(400, dtype=np.float32).reshape(100, 4)
    loader = ZeroCopyDataLoader(NumpyDataset({"x": src}), batch_sampler=FailingBatches([[3, 1], [9, 4]]))
    it = iter(loader)
    assert np.array_equal(next(it)["x"].numpy(), src[[3, 1]])
    assert np.array_equal(next(it)["x"].numpy(), src[[9, 4]])
    with pytest.raises(ValueError, match="the sampler broke"):
        next(it)


@pytest.mark.parametrize("stop", [3, 13])  # inside the first group, and inside a later one
def test_an_epoch_resumed_inside_a_group_sees_each_window_once(bin_file: Path, stop: int) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)

    def loader() -> ZeroCopyDataLoader:
        return ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 16, seed=7))

    whole = [b["input"].clone() for b in loader()]
    first = loader()
    it = iter(first)
    seen = [next(it)["input"].clone() for _ in range(stop)]
    state = first.state_dict()
    again = loader()
    again.load_state_dict(state)
    seen += [b["input"].clone() for b in again]
    assert len(seen) == len(whole)
    assert all(torch.equal(a, b) for a, b in zip(seen, whole, strict=True))


def test_only_datasets_whose_batches_split_along_rows_are_grouped(tmp_path: Path, bin_file: Path) -> None:
    assert TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16).splits_by_rows
    with_bounds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16, eos_id=0, fields=("input", "cu_seqlens"))
    assert not with_bounds.splits_by_rows  # cu_seqlens belongs to the batch, not to a row
    assert NumpyDataset({"x": np.zeros((10, 3), np.float32)}).splits_by_rows
    table = pa.table({"x": pa.array(np.arange(10, dtype=np.int64)), "s": pa.array([str(i) for i in range(10)])})
    with pa.ipc.new_file(tmp_path / "t.arrow", table.schema) as w:
        w.write_table(table)
    ds = ArrowDataset(tmp_path / "t.arrow", strings="list")
    assert not ds.splits_by_rows  # strings arrive as lists, not rows of one buffer
    loader = ZeroCopyDataLoader(ds, batch_sampler=ArrayBatches([[3, 1], [0, 5], [9, 2]]))
    assert [b["s"] for b in loader] == [["3", "1"], ["0", "5"], ["9", "2"]]


def test_held_records_reach_neither_the_ledger_nor_a_capture_and_do_not_nest() -> None:
    LEDGER.reset()
    with capture() as seen, held() as kept:
        record("collate", "x", "gather: test", copied=10)
        with pytest.raises(RuntimeError, match="do not nest"), held():
            pass
    assert kept == [("collate", "x", "gather: test", 0, 10)]
    assert seen == [] and LEDGER.bytes_copied == 0
    record("collate", "x", "gather: test", copied=10)  # after the block: counted again
    assert LEDGER.bytes_copied == 10


def test_groups_are_built_in_host_and_pinned_buffers_never_in_per_batch_ones(bin_file: Path) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)  # 64 bytes a row
    assert group_size(ds, 8, HostAllocation()) == 32 == group_size(ds, 8, PinnedAllocation())
    assert group_size(ds, 8, SharedAllocation()) == 1  # a worker sends each batch's own segment
    assert group_size(ds, 8, ExactPinnedAllocation()) == 1  # a device stage waits on each batch's buffer
    assert group_size(ds, 2**15, HostAllocation()) == 1  # 2 MiB a batch: nothing to amortise


def test_gather_threads_build_groups_too_with_the_same_batches(
    bin_file: Path, tokens: np.ndarray
) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)
    sampler = LazyShuffleSampler(ds, 6, seed=5)
    loader = ZeroCopyDataLoader(ds, batch_sampler=sampler, num_workers=2)
    assert loader.uses_threads
    LEDGER.reset()
    batches = list(loader)
    order = list(sampler)
    assert [len(b["input"]) for b in batches] == [len(i) for i in order]
    for batch, idx in zip(batches, order, strict=True):
        x, y = _windows(tokens, idx)
        assert np.array_equal(batch["input"].numpy(), x) and np.array_equal(batch["target"].numpy(), y)
    a, b = batches[0]["input"], batches[1]["input"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one thread call built both
    assert LEDGER.copied("collate") == sum(2 * len(i) * SEQ * 2 for i in order)  # each batch counted once


class CountedRequests(NumpyDataset):
    """A dataset that hands out its own requests: it must still be asked for every batch."""

    asked = 0

    def __getitems__(self, indices: Any) -> Any:
        type(self).asked += 1
        return super().__getitems__(indices)


def test_a_dataset_with_its_own_getitems_is_asked_for_every_batch() -> None:
    src = np.arange(400, dtype=np.float32).reshape(100, 4)
    ds = CountedRequests({"x": src})
    loader = ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 5, seed=1))
    batches = [b["x"] for b in loader]
    assert CountedRequests.asked == len(batches) == 20
    assert sorted(np.concatenate([b.numpy()[:, 0] for b in batches]).tolist()) == src[:, 0].tolist()
