"""BlockShuffleSampler: contiguous runs, every sample once per epoch across ranks, DDP defaults."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from zcopy_data import LEDGER, NumpyDataset, zero_copy_collate
from zcopy_data.samplers import BlockShuffleSampler


def _epoch(n: int, batch: int, replicas: int, epoch: int = 0, **kw: object) -> list[list[list[int]]]:
    """Per rank, the batches it yields in ``epoch``."""
    out = []
    for rank in range(replicas):
        s = BlockShuffleSampler(n, batch, num_replicas=replicas, rank=rank, **kw)  # type: ignore[arg-type]
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def _runs(batch: list[int]) -> int:
    return 1 + sum(1 for a, b in itertools.pairwise(batch) if b != a + 1)


@pytest.mark.parametrize("n", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("batch", [1, 8, 10])
@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_sample_exactly_once_and_equal_batch_counts(n, batch, replicas, shuffle):
    if math.ceil(math.ceil(n / batch) / replicas) * replicas > n:  # e.g. 7 single-sample batches on 2 ranks
        with pytest.raises(ValueError, match="drop_last=True"):
            BlockShuffleSampler(n, batch, shuffle=shuffle, num_replicas=replicas, rank=0)
        return
    for epoch in range(3):
        per_rank = _epoch(n, batch, replicas, epoch, shuffle=shuffle)
        counts = Counter(i for batches in per_rank for b in batches for i in b)
        assert sorted(counts) == list(range(n))
        assert set(counts.values()) == {1}
        lengths = {len(batches) for batches in per_rank}
        assert len(lengths) == 1
        assert lengths == {len(BlockShuffleSampler(n, batch, shuffle=shuffle, num_replicas=replicas, rank=0))}
        for batches in per_rank:
            assert all(0 < len(b) <= batch for b in batches)
        # at most one batch of the whole epoch is not one contiguous run (the wrap-around block)
        assert sum(_runs(b) > 1 for batches in per_rank for b in batches) <= 1


@pytest.mark.parametrize("n,batch,replicas", [(100, 8, 1), (100, 8, 3), (64, 8, 2), (257, 10, 4)])
def test_drop_last_gives_full_batches_and_equal_counts(n, batch, replicas):
    for epoch in range(3):
        per_rank = _epoch(n, batch, replicas, epoch, drop_last=True)
        assert {len(b) for batches in per_rank for b in batches} == {batch}
        # the fewest full blocks any phase of the boundaries gives, the same every epoch
        fewest = n // batch - (n % batch < batch - 1)
        assert {len(batches) for batches in per_rank} == {fewest // replicas}
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen))


def test_unshuffled_is_sequential_blocks_strided_over_ranks():
    assert list(BlockShuffleSampler(10, 4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    r0, r1 = _epoch(16, 4, 2, shuffle=False)
    assert r0 == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert r1 == [[4, 5, 6, 7], [12, 13, 14, 15]]


def test_order_and_boundaries_change_with_epoch_and_are_reproducible():
    s = BlockShuffleSampler(1000, 32, seed=3)
    epochs = []
    for e in range(4):
        s.set_epoch(e)
        epochs.append(list(s))
    assert all(epochs[i] != epochs[j] for i in range(4) for j in range(i))
    starts = [{b[0] % 32 for b in batches if len(b) == 32 and _runs(b) == 1} for batches in epochs]
    assert len({frozenset(x) for x in starts}) > 1  # boundaries moved, not only the order
    again = BlockShuffleSampler(1000, 32, seed=3)
    again.set_epoch(2)
    assert list(again) == epochs[2]
    other = BlockShuffleSampler(1000, 32, seed=4)
    other.set_epoch(2)
    assert list(other) != epochs[2]


def test_ranks_split_one_epoch_order():
    plan = BlockShuffleSampler(100, 8, num_replicas=2, rank=0).runs(epoch=5)
    r1 = BlockShuffleSampler(100, 8, num_replicas=2, rank=1)
    r1.set_epoch(5)
    assert list(r1) == [[i for a, b in runs for i in range(a, b)] for runs in plan[1::2]]


def test_accepts_a_dataset_and_splits_uneven_blocks():
    ds = NumpyDataset({"x": np.arange(9, dtype=np.int64)})
    per_rank = _epoch(len(ds), 4, 2, shuffle=False)
    # blocks [0..3] [4..7] [8] -> 3 blocks, 2 ranks: the largest, latest block is halved
    assert per_rank == [[[0, 1, 2, 3], [6, 7]], [[4, 5], [8]]]
    assert len(BlockShuffleSampler(ds, 4, num_replicas=2, rank=0)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset_or_len": 10, "batch_size": 0}, "batch_size=0"),
        ({"dataset_or_len": -1, "batch_size": 2}, "dataset_or_len=-1"),
        ({"dataset_or_len": 10, "batch_size": 2, "num_replicas": 2, "rank": 2}, "rank=2"),
        ({"dataset_or_len": 10, "batch_size": 2, "num_replicas": 0, "rank": 0}, "num_replicas=0"),
        ({"dataset_or_len": 2, "batch_size": 2, "num_replicas": 3, "rank": 0}, "drop_last=True"),
    ],
)
def test_bad_arguments_say_what_and_how(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockShuffleSampler(**kwargs)


def test_empty_dataset_yields_nothing():
    assert list(BlockShuffleSampler(0, 4)) == []
    assert len(BlockShuffleSampler(0, 4)) == 0


def test_contiguous_batches_are_views_of_the_file(npy_files):
    ds = NumpyDataset({k: str(v) for k, v in npy_files.items()})
    sampler = BlockShuffleSampler(ds, 10, seed=1)
    sampler.set_epoch(1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=zero_copy_collate)
    source = np.load(npy_files["image"])
    base = ds.columns()["image"]
    LEDGER.reset()
    contiguous = 0
    for idx, batch in zip(sampler, loader, strict=True):
        assert np.array_equal(batch["image"].numpy(), source[idx])
        if _runs(idx) == 1:
            contiguous += 1
            assert batch["image"].data_ptr() == base[idx[0]].ctypes.data
    assert contiguous == len(sampler)  # every batch, the blocks at the moved boundaries included
    assert LEDGER.copied("collate") == 0


def test_distributed_sampler_keeps_working(npy_files):
    ds = NumpyDataset({k: str(v) for k, v in npy_files.items()})
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for batch in DataLoader(ds, batch_size=16, sampler=sampler, collate_fn=zero_copy_collate):
            seen += batch["label"].tolist()
    assert sorted(seen) == list(range(100))


def _ddp_rank(rank: int, init: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    import os

    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # both ranks on this machine: loopback only
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        s = BlockShuffleSampler(50, 8)
        s.set_epoch(1)
        queue.put((rank, s.num_replicas, s.rank, list(s)))
        dist.barrier()  # neither rank tears down while the other is still connecting
    finally:
        dist.destroy_process_group()


def test_defaults_come_from_torch_distributed(tmp_path: Path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_ddp_rank, args=(r, init, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    expected = _epoch(50, 8, 2, epoch=1)
    for rank, replicas, got_rank, batches in results:
        assert (replicas, got_rank) == (2, rank)
        assert batches == expected[rank]
    assert torch.tensor(sorted(i for *_, b in results for x in b for i in x)).equal(torch.arange(50))


def test_lightning_reaches_set_epoch(npy_files):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    ds = NumpyDataset({k: str(v) for k, v in npy_files.items()})
    sampler = BlockShuffleSampler(ds, 10)
    _set_sampler_epoch(DataLoader(ds, batch_sampler=sampler, collate_fn=zero_copy_collate), 4)
    assert sampler.epoch == 4


# -- its own state ---------------------------------------------------------------------------------
def test_its_state_is_a_few_ints_and_resumes_its_own_batches() -> None:
    whole = _epoch(10_000_000, 1000, 2, epoch=3)
    s = BlockShuffleSampler(10_000_000, 1000, num_replicas=2, rank=1)
    s.set_epoch(3)
    it = iter(s)
    for _ in range(7):
        next(it)
    state = s.state_dict()
    assert state["progress"] == [[2, 7]] and state["epoch"] == 3
    assert all(isinstance(v, (int, bool, list)) for v in state.values())
    fresh = BlockShuffleSampler(10_000_000, 1000, num_replicas=2, rank=1)
    fresh.load_state_dict(state)
    assert fresh.epoch == 3  # the epoch comes back with the position
    assert list(fresh) == whole[1][7:]
    assert list(fresh) == whole[1]  # once: the next iteration is the whole epoch again
    fresh.set_epoch(4)
    assert list(fresh) == _epoch(10_000_000, 1000, 2, epoch=4)[1]


def test_an_elastic_resume_splits_the_largest_batch_latest_first() -> None:
    # 5 unseen batches of 10 (and the short last one) for 2 ranks: the largest, latest among
    # equals, is split into halves until every rank gets the same number
    s = BlockShuffleSampler(53, 10, shuffle=False, num_replicas=1, rank=0)
    s.load_state_dict({**s.state_dict(0), "progress": [[1, 1]]})
    parts = [BlockShuffleSampler(53, 10, shuffle=False, num_replicas=2, rank=r) for r in range(2)]
    for p in parts:
        p.load_state_dict({**s.state_dict(0), "progress": [[1, 1]]})
    left = [list(p) for p in parts]
    assert [b[0] for rank in left for b in rank] == [10, 30, 45, 20, 40, 50]  # rank 0, then rank 1
    assert sorted(i for rank in left for b in rank for i in b) == list(range(10, 53))
    assert [len(b) for b in left[0]] == [10, 10, 5] and [len(b) for b in left[1]] == [10, 5, 3]


def test_a_state_from_another_sampler_is_refused_naming_the_difference() -> None:
    s = BlockShuffleSampler(100, 10, seed=1, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=r"batch_size=10, this one has batch_size=20"):
        BlockShuffleSampler(100, 20, seed=1, num_replicas=1, rank=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match=r"version 1, found"):
        s.load_state_dict({"version": 2})
