"""Resuming a loader mid-epoch: the rest of the epoch and every later one equal the uninterrupted run's.

Real loaders on real memory: 0 workers, gather threads and forked worker processes; PyTorch's own
samplers and BlockShuffleSampler; states round-tripped through ``torch.save`` and
``torch.load(weights_only=True)``. Reads are counted in shared memory, so a worker process's read of
a skipped sample would show.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler, IterableDataset, Sampler

from tests.support import run_isolated
from zcopy_data import NumpyDataset, ResumeStateError, ZeroCopyDataLoader, ledger
from zcopy_data.samplers import BlockShuffleSampler
from zcopy_data.transfer.device import DevicePrefetcher

pytestmark = pytest.mark.reliability

N, BS = 103, 10
KINDS = ["sequential", "shuffle_generator", "shuffle_global", "block", "distributed"]
MODES = [(0, "auto"), (2, "threads"), (2, "processes")]


class Counting(NumpyDataset):
    """A NumPy dataset that counts, per sample, how often a batch asked for it (in shared memory)."""

    def __init__(self, n: int) -> None:
        super().__init__({"x": np.arange(n, dtype=np.int64)})
        self.reads = torch.zeros(n, dtype=torch.int32).share_memory_()

    def __getitems__(self, indices: Sequence[int]) -> Any:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.reads.index_add_(0, index, torch.ones(len(index), dtype=torch.int32))
        return super().__getitems__(indices)


def _make(
    ds: NumpyDataset,
    kind: str,
    mode: tuple[int, str] = (0, "auto"),
    *,
    persistent: bool = False,
    drop_last: bool = False,
    world: int = 1,
    rank: int = 0,
) -> ZeroCopyDataLoader:
    workers, worker_mode = mode
    kw: dict[str, Any] = {
        "num_workers": workers,
        "worker_mode": worker_mode,
        "persistent_workers": persistent and workers > 0,
    }
    if kind == "sequential":
        return ZeroCopyDataLoader(ds, batch_size=BS, drop_last=drop_last, **kw)
    if kind == "shuffle_generator":
        g = torch.Generator()
        g.manual_seed(7)
        return ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=g, drop_last=drop_last, **kw)
    if kind == "shuffle_global":
        return ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, drop_last=drop_last, **kw)
    if kind == "block":
        sampler = BlockShuffleSampler(len(ds), BS, seed=3, drop_last=drop_last, num_replicas=world, rank=rank)
        return ZeroCopyDataLoader(ds, batch_sampler=sampler, **kw)
    assert kind == "distributed"
    dist = DistributedSampler(ds, num_replicas=world, rank=rank, seed=5, drop_last=drop_last)
    return ZeroCopyDataLoader(ds, batch_size=BS, sampler=dist, drop_last=drop_last, **kw)


def _set_epoch(loader: ZeroCopyDataLoader, epoch: int) -> None:
    # as Lightning does before every epoch
    for s in (loader.batch_sampler, loader.sampler):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def _epoch(loader: ZeroCopyDataLoader, epoch: int) -> list[list[int]]:
    _set_epoch(loader, epoch)
    return [b["x"].tolist() for b in loader]


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


# -- the equivalence -------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    mode=st.sampled_from(MODES),
    persistent=st.booleans(),
    drop_last=st.booleans(),
    world_rank=st.sampled_from([(1, 0), (2, 0), (2, 1), (3, 2)]),
    stop_epoch=st.sampled_from([0, 1]),
    stop_at=st.floats(0, 1),
)
def test_a_resumed_loader_yields_the_rest_of_the_epoch_then_the_same_epochs(
    kind: str,
    mode: tuple[int, str],
    persistent: bool,
    drop_last: bool,
    world_rank: tuple[int, int],
    stop_epoch: int,
    stop_at: float,
) -> None:
    _check_resume(kind, mode, persistent, drop_last, world_rank, stop_epoch, stop_at)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES, ids=["0w", "threads", "processes"])
def test_a_persistent_loader_resumes_in_a_later_epoch_and_at_an_epochs_end(kind: str, mode: tuple[int, str]) -> None:
    # the cases a persistent iterator makes different: no worker seed drawn after the first epoch
    _check_resume(kind, mode, True, False, (2, 1), 1, 0.5)
    _check_resume(kind, mode, True, True, (1, 0), 1, 1.0)


def _check_resume(
    kind: str,
    mode: tuple[int, str],
    persistent: bool,
    drop_last: bool,
    world_rank: tuple[int, int],
    stop_epoch: int,
    stop_at: float,
) -> None:
    world, rank = world_rank
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    opts: dict[str, Any] = {"persistent": persistent, "drop_last": drop_last, "world": world, "rank": rank}

    torch.manual_seed(11)
    ref = _make(ds, kind, mode, **opts)
    reference, rng_after = [], []
    for e in range(3):
        reference.append(_epoch(ref, e))
        rng_after.append(torch.get_rng_state())

    torch.manual_seed(11)
    run = _make(ds, kind, mode, **opts)
    for e in range(stop_epoch):
        assert _epoch(run, e) == reference[e]
    stop = round(stop_at * len(run))  # len(run): every batch consumed, the end not yet met
    _set_epoch(run, stop_epoch)
    it = iter(run)
    seen = [next(it)["x"].tolist() for _ in range(stop)]
    state = _roundtrip(run.state_dict())
    _shut_down(run, ref)
    del it, run

    torch.manual_seed(999)  # a fresh process has another global state
    resumed = _make(ds, kind, mode, **opts)
    resumed.load_state_dict(state)
    later_from = stop_epoch + 1
    if stop < len(resumed):
        rest = _epoch(resumed, stop_epoch)
        assert seen + rest == reference[stop_epoch], f"{kind} resumed after {stop} batches"
    else:
        assert seen == reference[stop_epoch]  # and the state resumes at the next epoch
    torch.set_rng_state(rng_after[stop_epoch])  # global-generator shuffles draw later epochs from it
    assert [_epoch(resumed, e) for e in range(later_from, 3)] == reference[later_from:]
    _shut_down(resumed)


def _shut_down(*loaders: ZeroCopyDataLoader) -> None:
    # persistent worker processes left mid-epoch: PyTorch's iterator, collected later, would join
    # them with a 5 s timeout each while the next loader forks (its own behaviour, not ours)
    for loader in loaders:
        it = loader.__dict__.get("_iterator")
        if it is not None:
            it._shutdown_workers()
            loader._iterator = None


@pytest.mark.parametrize("kind", ["sequential", "shuffle_generator", "block", "distributed"])
@pytest.mark.parametrize("mode", MODES, ids=["0w", "threads", "processes"])
def test_resuming_reads_only_the_rest_of_the_epoch(kind: str, mode: tuple[int, str]) -> None:
    ds = Counting(N)
    batches = _epoch(_make(ds, kind, mode, world=2, rank=1), 0)
    run = _make(ds, kind, mode, world=2, rank=1)
    _set_epoch(run, 0)
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    del it
    ds.reads.zero_()

    resumed = _make(ds, kind, mode, world=2, rank=1)
    resumed.load_state_dict(state)
    rest = _epoch(resumed, 0)
    assert rest == batches[4:]
    expected = torch.zeros(N, dtype=torch.int32)
    for b in rest:
        expected.index_add_(0, torch.tensor(b), torch.ones(len(b), dtype=torch.int32))
    assert torch.equal(ds.reads, expected)  # every read is of a batch it yields; none of a skipped one


def test_the_ledger_counts_only_the_batches_a_resumed_epoch_builds() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    g = torch.Generator()
    g.manual_seed(1)
    run = ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=g)
    it = iter(run)
    for _ in range(7):
        next(it)
    state = run.state_dict()

    g2 = torch.Generator()
    resumed = ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=g2)
    resumed.load_state_dict(state)
    with ledger.capture() as records:
        rest = list(resumed)
    collated = [r for r in records if r[0] == ledger.COLLATE]
    assert len(rest) == len(run) - 7 == len(collated)
    assert sum(r[3] + r[4] for r in collated) == sum(b["x"].nbytes for b in rest)


def test_a_state_is_small_plain_and_versioned() -> None:
    ds = NumpyDataset({"x": np.zeros(10_000_000, dtype=np.int8)})
    g = torch.Generator()
    g.manual_seed(3)
    loader = ZeroCopyDataLoader(ds, batch_size=1000, shuffle=True, generator=g)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    assert buf.tell() < 16_384  # two generator states and a few ints, not 10M indices
    assert state["version"] == 1 and state["batches_done"] == 1 and state["in_epoch"] is True
    assert _roundtrip(state)["loader"] == state["loader"]


def test_a_state_between_epochs_starts_the_next_epoch() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    g = torch.Generator()
    g.manual_seed(5)
    ref = ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=g)
    epochs = [_epoch(ref, e) for e in range(3)]
    g.manual_seed(5)
    run = ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=g)
    assert _epoch(run, 0) == epochs[0]
    state = run.state_dict()
    assert state["in_epoch"] is False and state["batches_done"] == 0
    resumed = ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True, generator=torch.Generator())
    resumed.load_state_dict(_roundtrip(state))
    assert [_epoch(resumed, 1), _epoch(resumed, 2)] == epochs[1:]


def test_a_state_from_a_file_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    sampler = BlockShuffleSampler(N, BS, seed=9, num_replicas=1, rank=0)
    ref = ZeroCopyDataLoader(ds, batch_sampler=sampler, num_workers=2, worker_mode="processes")
    epochs = [_epoch(ref, e) for e in range(2)]
    run = ZeroCopyDataLoader(ds, batch_sampler=BlockShuffleSampler(N, BS, seed=9, num_replicas=1, rank=0))
    _set_epoch(run, 0)
    it = iter(run)
    for _ in range(6):
        next(it)
    torch.save(run.state_dict(), tmp_path / "loader.pt")
    out = run_isolated(
        """
        import json, sys
        import numpy as np, torch
        from zcopy_data import NumpyDataset, ZeroCopyDataLoader
        from zcopy_data.samplers import BlockShuffleSampler
        ds = NumpyDataset({"x": np.arange(103, dtype=np.int64)})
        sampler = BlockShuffleSampler(103, 10, seed=9, num_replicas=1, rank=0)
        loader = ZeroCopyDataLoader(ds, batch_sampler=sampler, num_workers=2, worker_mode="processes")
        loader.load_state_dict(torch.load(sys.argv[1], weights_only=True))
        got = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            got.append([b["x"].tolist() for b in loader])
        print(json.dumps(got))
        """,
        str(tmp_path / "loader.pt"),
    )
    assert out.returncode == 0, out.stderr
    rest, later = json.loads(out.stdout)
    assert rest == epochs[0][6:]
    assert later == epochs[1]


# -- a stage that fetches ahead ---------------------------------------------------------------------
def test_a_prefetching_stage_counts_what_its_consumer_received() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = ZeroCopyDataLoader(ds, batch_size=BS, num_workers=2, worker_mode="threads")
    stage = iter(DevicePrefetcher(loader, "cpu", depth=2))
    got = [next(stage)["x"].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state["batches_done"] == 3  # not the batches the stage fetched ahead
    resumed = ZeroCopyDataLoader(ds, batch_size=BS)
    resumed.load_state_dict(state)
    assert got + _epoch(resumed, 0) == _epoch(ZeroCopyDataLoader(ds, batch_size=BS), 0)


def test_consumed_batches_overrides_what_was_handed_out() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    used = {"n": 2}
    loader = ZeroCopyDataLoader(ds, batch_size=BS, consumed_batches=lambda: used["n"])
    it = iter(loader)
    for _ in range(5):
        next(it)  # handed out 5; the consumer has trained on 2
    assert loader.state_dict()["batches_done"] == 2
    used["n"] = None  # type: ignore[assignment]  # it does not know: the loader's own count
    assert loader.state_dict()["batches_done"] == 5


# -- elastic resume ---------------------------------------------------------------------------------
def _rank_batches(world: int, state: dict[str, Any] | None, drop_last: bool = False) -> list[list[list[int]]]:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    out = []
    for rank in range(world):
        loader = _make(ds, "block", drop_last=drop_last, world=world, rank=rank)
        if state is not None:
            loader.load_state_dict(state)
        out.append(_epoch(loader, 0))
    return out


def _state_after(world: int, steps: int, state: dict[str, Any] | None = None) -> dict[str, Any]:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = _make(ds, "block", world=world, rank=0)
    if state is not None:
        loader.load_state_dict(state)
    _set_epoch(loader, 0)
    it = iter(loader)
    for _ in range(steps):
        next(it)
    return _roundtrip(loader.state_dict())


@pytest.mark.parametrize(("before", "after"), [(2, 3), (2, 1), (3, 2), (1, 4)])
def test_an_elastic_resume_covers_every_unseen_sample_once(before: int, after: int) -> None:
    whole = _rank_batches(before, None)
    steps = 2
    seen = [i for rank in whole for b in rank[:steps] for i in b]
    rest = _rank_batches(after, _state_after(before, steps))
    unseen = [i for rank in rest for b in rank for i in b]
    assert sorted(seen + unseen) == list(range(N))  # every sample exactly once over the epoch
    assert len({len(rank) for rank in rest}) == 1  # every rank the same number of batches (DDP steps together)
    assert all(len(b) > 0 for rank in rest for b in rank)


def test_a_chain_of_elastic_resumes_still_covers_the_epoch_once() -> None:
    first = _rank_batches(2, None)
    seen = [i for rank in first for b in rank[:2] for i in b]
    state = _state_after(2, 2)
    middle = _rank_batches(3, state)
    seen += [i for rank in middle for b in rank[:1] for i in b]
    state = _state_after(3, 1, state)
    assert [w for w, _ in state["sampler_state"]["progress"]] == [2, 3]
    last = _rank_batches(2, state)
    seen += [i for rank in last for b in rank for i in b]
    assert sorted(seen) == list(range(N))


def test_an_elastic_resume_with_drop_last_drops_only_at_the_end() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = _make(ds, "block", drop_last=True, world=2, rank=0)
    _set_epoch(loader, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    seen = [i for rank in _rank_batches(2, None, drop_last=True) for i in rank[0]]
    rest = _rank_batches(3, state, drop_last=True)
    flat = [i for rank in rest for b in rank for i in b]
    assert len(set(seen) | set(flat)) == len(seen) + len(flat)  # nothing twice
    assert all(len(b) == BS for rank in rest for b in rank)
    assert len({len(rank) for rank in rest}) == 1


# -- samplers without a known order -----------------------------------------------------------------
class EveryThird(Sampler[list[int]]):
    """A user's batch sampler with no state of its own."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        for start in range(0, 3):
            idx = list(range(start, self.n, 3))
            for k in range(0, len(idx), BS):
                yield idx[k : k + BS]

    def __len__(self) -> int:
        return sum(-(-len(range(s, self.n, 3)) // BS) for s in range(3))


def test_an_unknown_sampler_is_skipped_unread_and_says_so_once() -> None:
    ds = Counting(N)
    whole = [b["x"].tolist() for b in ZeroCopyDataLoader(ds, batch_sampler=EveryThird(N))]
    run = ZeroCopyDataLoader(ds, batch_sampler=EveryThird(N))
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    ds.reads.zero_()
    resumed = ZeroCopyDataLoader(ds, batch_sampler=EveryThird(N))
    resumed.load_state_dict(state)
    replay = r"EveryThird has no known order: .* first 4 index batches .*no sample is read"
    with pytest.warns(UserWarning, match=replay):
        rest = [b["x"].tolist() for b in resumed]
    assert rest == whole[4:]
    assert int(ds.reads.sum()) == sum(len(b) for b in rest)
    resumed.load_state_dict(state)
    assert [b["x"].tolist() for b in resumed] == whole[4:]  # once: no second warning (warnings are errors here)


# -- bad states --------------------------------------------------------------------------------------
def _state(**kw: Any) -> dict[str, Any]:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = ZeroCopyDataLoader(ds, batch_size=kw.pop("batch_size", BS), **kw)
    it = iter(loader)
    next(it)
    return loader.state_dict()


def test_bad_states_name_what_differs() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    small = NumpyDataset({"x": np.arange(50, dtype=np.int64)})
    loader = ZeroCopyDataLoader(ds, batch_size=BS)
    state = _state()
    with pytest.raises(ResumeStateError, match=r"dataset_len=103, this loader has dataset_len=50; build the loader"):
        ZeroCopyDataLoader(small, batch_size=BS).load_state_dict(state)
    with pytest.raises(ResumeStateError, match=r"batch_size=10, this loader has batch_size=16"):
        ZeroCopyDataLoader(ds, batch_size=16).load_state_dict(state)
    kinds = r"sampler='BatchSampler\(SequentialSampler\)'.*BatchSampler\(RandomSampler\)"
    with pytest.raises(ResumeStateError, match=kinds):
        ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True).load_state_dict(state)
    with pytest.raises(ResumeStateError, match=r"drop_last=False, this loader has drop_last=True"):
        ZeroCopyDataLoader(ds, batch_size=BS, drop_last=True).load_state_dict(state)
    dist = _state(sampler=DistributedSampler(ds, num_replicas=2, rank=0, seed=1))
    with pytest.raises(ResumeStateError, match=r"seed=1, this loader has seed=2"):
        ZeroCopyDataLoader(
            ds, batch_size=BS, sampler=DistributedSampler(ds, num_replicas=2, rank=0, seed=2)
        ).load_state_dict(dist)
    with pytest.raises(ResumeStateError, match=r"version 7 is not one this zcopy_data reads \(version 1\)"):
        loader.load_state_dict({**state, "version": 7})
    with pytest.raises(ResumeStateError, match=r"a loader state is a dict, found list"):
        loader.load_state_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ResumeStateError, match=r"lacks \['batches_done'\]"):
        loader.load_state_dict({k: v for k, v in state.items() if k != "batches_done"})
    with pytest.raises(ResumeStateError, match=r"batches_done=99 is outside this loader's 11 batches"):
        loader.load_state_dict({**state, "batches_done": 99})
    seeded = _state(shuffle=True, generator=torch.Generator())
    with pytest.raises(ResumeStateError, match=r"generator states for \['loader'\], this loader draws from \[\]"):
        ZeroCopyDataLoader(ds, batch_size=BS, shuffle=True).load_state_dict(seeded)


def test_bad_block_sampler_states_name_what_differs() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = _make(ds, "block", world=2, rank=0)
    _set_epoch(loader, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    other = ZeroCopyDataLoader(ds, batch_sampler=BlockShuffleSampler(N, BS, seed=4, num_replicas=2, rank=0))
    with pytest.raises(ResumeStateError, match=r"seed=3, this one has seed=4"):
        other.load_state_dict(state)
    too_far = {**state, "sampler_state": {**state["sampler_state"], "progress": [[2, 40]]}}
    with pytest.raises(ResumeStateError, match=r"batches_done=40 on 2 ranks is past the 6 batches per rank left"):
        loader.load_state_dict(too_far)
    late = {**state["sampler_state"], "progress": [[2, 5]]}  # 10 of 12 batches seen: 2 left
    with pytest.raises(ResumeStateError, match=r"samples left in the epoch cannot give each of 100 ranks"):
        BlockShuffleSampler(N, BS, seed=3, num_replicas=100, rank=0).load_state_dict(late)


class Stream(IterableDataset[dict[str, torch.Tensor]]):
    def __iter__(self) -> Any:
        for i in range(30):
            yield {"x": torch.tensor([i])}


def test_an_iterable_dataset_is_not_skipped_into() -> None:
    loader = ZeroCopyDataLoader(Stream(), batch_size=BS)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    with pytest.raises(ResumeStateError, match=r"IterableDataset's position is its own"):
        ZeroCopyDataLoader(Stream(), batch_size=BS).load_state_dict(state)


def test_a_set_epoch_mismatch_warns_and_starts_the_epoch_whole() -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    run = _make(ds, "distributed", world=2, rank=0)
    _set_epoch(run, 3)
    it = iter(run)
    next(it)
    state = run.state_dict()
    resumed = _make(ds, "distributed", world=2, rank=0)
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == 3  # type: ignore[attr-defined]  # restored with the position
    resumed.sampler.set_epoch(4)  # type: ignore[attr-defined]
    with pytest.warns(UserWarning, match=r"taken in epoch 3, but this epoch is 4"):
        got = [b["x"].tolist() for b in resumed]
    assert got == _epoch(_make(ds, "distributed", world=2, rank=0), 4)


# -- epochs that nobody numbers --------------------------------------------------------------------
def _epochs_without_set_epoch(loader: ZeroCopyDataLoader, n: int) -> list[list[list[int]]]:
    return [[b["x"].tolist() for b in loader] for _ in range(n)]


@pytest.mark.parametrize("kind", ["block", "distributed"])
@pytest.mark.parametrize("mode", MODES, ids=["0w", "threads", "processes"])
def test_a_sampler_whose_set_epoch_is_never_called_still_gets_a_new_order_each_epoch(
    kind: str, mode: tuple[int, str]
) -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    unnumbered = _make(ds, kind, mode, world=2, rank=1)
    numbered = _make(ds, kind, world=2, rank=1)
    got = _epochs_without_set_epoch(unnumbered, 3)
    want = [_epoch(numbered, e) for e in range(3)]
    assert got == want  # the loader moved the epoch on itself: 0, 1, 2, as a set_epoch loop would
    assert len({json.dumps(e) for e in got}) == 3
    _shut_down(unnumbered)


@pytest.mark.parametrize("kind", ["block", "distributed"])
def test_an_epoch_set_by_the_caller_is_kept_even_when_it_repeats(kind: str) -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    loader = _make(ds, kind)
    first = _epoch(loader, 4)
    assert _epoch(loader, 4) == first  # asked for epoch 4 again: not moved on
    assert _epoch(loader, 2) == _epoch(_make(ds, kind), 2)
    assert _epochs_without_set_epoch(loader, 1) == [_epoch(_make(ds, kind), 3)]  # then on by itself


@pytest.mark.parametrize("kind", ["block", "distributed"])
@pytest.mark.parametrize("where", ["mid", "last_batch", "between"])
def test_a_resumed_run_without_set_epoch_continues_the_epochs_it_would_have_seen(kind: str, where: str) -> None:
    ds = NumpyDataset({"x": np.arange(N, dtype=np.int64)})
    whole = [b for e in _epochs_without_set_epoch(_make(ds, kind), 4) for b in e]
    run = _make(ds, kind)
    seen = [b for e in _epochs_without_set_epoch(run, 1) for b in e]  # epoch 0
    it = iter(run)  # epoch 1
    per_epoch = len(run)
    stop = {"mid": per_epoch // 2, "last_batch": per_epoch, "between": per_epoch}[where]
    seen += [next(it)["x"].tolist() for _ in range(stop)]
    if where == "between":
        assert next(it, None) is None  # the epoch's end was met
    state = _roundtrip(run.state_dict())
    assert type(state["sampler_epoch"]) is int
    resumed = _make(ds, kind)
    resumed.load_state_dict(state)
    rest = [b for e in _epochs_without_set_epoch(resumed, 4 - 1 - (where != "mid")) for b in e]
    if where == "mid":  # the rest of epoch 1 then epochs 2 and 3; else epochs 2 and 3
        rest = rest[: len(whole) - len(seen)]
    assert seen + rest == whole
