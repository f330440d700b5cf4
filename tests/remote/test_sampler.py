"""ShardShuffleSampler: each sample once per epoch across ranks, a few shards at a time, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from zcopy_data.errors import ResumeStateError
from zcopy_data.remote import ShardShuffleSampler

ROWS = [7, 13, 5, 20, 9, 11, 3, 16]


def starts() -> np.ndarray:
    return np.concatenate([[0], np.cumsum(ROWS)])


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_every_sample_once_per_epoch_across_ranks(replicas: int, window: int) -> None:
    for epoch in (0, 1):
        seen = []
        for rank in range(replicas):
            s = ShardShuffleSampler(ROWS, 4, window=window, seed=3, num_replicas=replicas, rank=rank)
            s.set_epoch(epoch)
            seen += [i for b in s for i in b]
        assert sorted(seen) == list(range(sum(ROWS)))


@pytest.mark.parametrize("replicas", [2, 3])
def test_each_rank_reads_only_its_shards_at_most_window_at_a_time(replicas: int) -> None:
    window = 2
    owned: set[int] = set()
    for rank in range(replicas):
        s = ShardShuffleSampler(ROWS, 4, window=window, num_replicas=replicas, rank=rank)
        stream = np.array([i for b in s for i in b])
        shard = np.searchsorted(starts(), stream, side="right") - 1
        assert set(shard.tolist()) == set(s.rank_shards)
        assert not owned & set(s.rank_shards)
        owned |= set(s.rank_shards)
        first = {k: int(np.argmax(shard == k)) for k in s.rank_shards}
        last = {k: len(shard) - 1 - int(np.argmax(shard[::-1] == k)) for k in s.rank_shards}
        for pos in range(len(shard)):
            assert sum(first[k] <= pos <= last[k] for k in s.rank_shards) <= window
        # the shards are read in shard_order, window by window
        order = s.shard_order()
        assert sorted(first, key=first.__getitem__)[:window] == sorted(order[:window], key=first.__getitem__)
    assert owned == set(range(len(ROWS)))


def test_order_is_deterministic_under_seed_and_epoch() -> None:
    a = ShardShuffleSampler(ROWS, 5, seed=1, num_replicas=1, rank=0)
    b = ShardShuffleSampler(ROWS, 5, seed=1, num_replicas=1, rank=0)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_drop_last_gives_every_rank_the_same_full_batches() -> None:
    samplers = [ShardShuffleSampler(ROWS, 4, num_replicas=3, rank=r, drop_last=True) for r in range(3)]
    lengths = {len(list(s)) for s in samplers}
    assert lengths == {len(samplers[0])}
    assert all(len(b) == 4 for s in samplers for b in s)


@pytest.mark.reliability
@pytest.mark.parametrize("replicas", [2, 3])
def test_resume_mid_epoch_yields_each_sample_once(replicas: int) -> None:
    for rank in range(replicas):
        s = ShardShuffleSampler(ROWS, 4, seed=9, num_replicas=replicas, rank=rank)
        s.set_epoch(2)
        it = iter(s)
        head = [next(it) for _ in range(3)]
        state = s.state_dict()
        fresh = ShardShuffleSampler(ROWS, 4, seed=9, num_replicas=replicas, rank=rank)
        fresh.load_state_dict(state)
        tail = list(fresh)
        s.set_epoch(2)
        assert head + tail == list(s)
        assert list(fresh) == list(s)  # the next iteration is a whole epoch again


def test_a_state_from_another_world_is_refused() -> None:
    state = ShardShuffleSampler(ROWS, 4, num_replicas=2, rank=0).state_dict()
    with pytest.raises(ResumeStateError, match=r"num_replicas=2.*this one has num_replicas=3"):
        ShardShuffleSampler(ROWS, 4, num_replicas=3, rank=0).load_state_dict(state)


def test_local_indices_address_the_rank_shards_only() -> None:
    s = ShardShuffleSampler(ROWS, 4, num_replicas=2, rank=1, local=True)
    assert sorted(i for b in s for i in b) == list(range(sum(ROWS[k] for k in s.rank_shards)))
