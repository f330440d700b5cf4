"""ZeroCopyDataLoader: the same batches as DataLoader, workers as gather threads, views inline."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from zcopy_data import (
    BlockShuffleSampler,
    NumpyDataset,
    SampleIndexError,
    ZeroCopyDataLoader,
    explain,
    zero_copy_collate,
)
from zcopy_data._index_batches import index_batches

N = 1000


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, size=(N, 3, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.arange(N, dtype=np.int64))
    return {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")}


@pytest.fixture
def ds(paths: dict[str, str]) -> NumpyDataset:
    return NumpyDataset(paths)


def _labels(loader: Any) -> list[list[int]]:
    return [b["y"].tolist() for b in loader]


# -- the same batches as DataLoader ---------------------------------------------------------------
@pytest.mark.parametrize("n", [N, 1024, 7])
@pytest.mark.parametrize("batch_size", [1, 64, 256])
@pytest.mark.parametrize("drop_last", [False, True])
def test_index_batches_equal_the_batch_samplers_own(n: int, batch_size: int, drop_last: bool) -> None:
    for sampler in (SequentialSampler(range(n)), RandomSampler(range(n), generator=torch.Generator().manual_seed(3))):
        ours_gen = torch.Generator().manual_seed(3)
        theirs = BatchSampler(sampler, batch_size, drop_last)
        mine = BatchSampler(
            RandomSampler(range(n), generator=ours_gen) if isinstance(sampler, RandomSampler) else sampler,
            batch_size,
            drop_last,
        )
        for _epoch in range(3):  # the generator's state carries over: epochs 2 and 3 match too
            expected = list(theirs)
            got = list(index_batches(mine))
            assert all(isinstance(b, np.ndarray) and b.dtype == np.int64 for b in got)
            assert [b.tolist() for b in got] == expected
        if isinstance(sampler, RandomSampler):
            assert torch.equal(ours_gen.get_state(), sampler.generator.get_state())  # type: ignore[union-attr]


def test_a_random_sampler_without_generator_draws_from_the_global_one_as_pytorch_does() -> None:
    sampler = BatchSampler(RandomSampler(range(100)), 10, False)
    torch.manual_seed(5)
    expected = list(sampler)
    after_theirs = torch.get_rng_state()
    torch.manual_seed(5)
    got = [b.tolist() for b in index_batches(sampler)]
    assert got == expected
    assert torch.equal(torch.get_rng_state(), after_theirs)


@pytest.mark.parametrize("rank", [0, 1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_index_batches_of_a_block_shuffle_sampler_equal_its_lists(rank: int, drop_last: bool) -> None:
    sampler = BlockShuffleSampler(N, 64, seed=1, drop_last=drop_last, num_replicas=3, rank=rank)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert [b.tolist() for b in index_batches(sampler)] == list(sampler)


def test_other_samplers_are_iterated_as_they_are() -> None:
    class Custom(BatchSampler):
        pass

    custom = Custom(SequentialSampler(range(10)), 4, False)
    assert list(index_batches(custom)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with_replacement = BatchSampler(RandomSampler(range(10), replacement=True), 4, False)
    assert all(isinstance(b, list) for b in index_batches(with_replacement))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_same_batches_in_the_same_order_as_dataloader(ds: NumpyDataset, workers: int, drop_last: bool) -> None:
    def run(cls: type[DataLoader[Any]], **kw: Any) -> tuple[list[list[int]], torch.Tensor]:
        torch.manual_seed(11)
        loader = cls(ds, batch_size=96, shuffle=True, drop_last=drop_last, collate_fn=zero_copy_collate, **kw)
        epochs = [_labels(loader) for _ in range(3)]
        return [b for e in epochs for b in e], torch.get_rng_state()

    theirs, rng_theirs = run(DataLoader)
    ours, rng_ours = run(ZeroCopyDataLoader, num_workers=workers)
    assert ours == theirs
    assert torch.equal(rng_ours, rng_theirs)  # the global generator is left where DataLoader leaves it


def test_collate_fn_defaults_to_zero_copy_collate(ds: NumpyDataset) -> None:
    assert ZeroCopyDataLoader(ds).collate_fn is zero_copy_collate
    assert ZeroCopyDataLoader(ds, collate_fn=list).collate_fn is list


# -- workers as threads ------------------------------------------------------------------------------
class PerSample(Dataset[Any]):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"y": np.int64(i)}


def test_columnar_datasets_get_threads_and_everything_else_processes(ds: NumpyDataset) -> None:
    assert ZeroCopyDataLoader(ds, num_workers=2).uses_threads
    assert not ZeroCopyDataLoader(ds).uses_threads  # no workers at all
    assert not ZeroCopyDataLoader(ds, num_workers=2, worker_mode="processes").uses_threads
    assert not ZeroCopyDataLoader(ds, num_workers=2, worker_init_fn=print).uses_threads
    assert not ZeroCopyDataLoader(ds, num_workers=2, collate_fn=lambda b: b).uses_threads
    assert not ZeroCopyDataLoader(PerSample(), num_workers=2).uses_threads
    assert ZeroCopyDataLoader(PerSample(), num_workers=2, worker_mode="threads").uses_threads


def test_forcing_threads_where_they_cannot_work_is_refused(ds: NumpyDataset) -> None:
    with pytest.raises(ValueError, match="worker_init_fn.*worker_mode='processes'"):
        ZeroCopyDataLoader(ds, num_workers=2, worker_init_fn=print, worker_mode="threads")
    with pytest.raises(ValueError, match="worker_mode='fork' should be one of"):
        ZeroCopyDataLoader(ds, worker_mode="fork")  # type: ignore[arg-type]


def test_threads_mode_runs_per_sample_datasets_too() -> None:
    loader = ZeroCopyDataLoader(PerSample(), batch_size=6, num_workers=2, worker_mode="threads")
    assert [b["y"].tolist() for b in loader] == [list(range(i, min(i + 6, 20))) for i in range(0, 20, 6)]


def test_process_workers_still_cross_as_handles(ds: NumpyDataset) -> None:
    loader = ZeroCopyDataLoader(ds, batch_size=100, shuffle=True, num_workers=2, worker_mode="processes")
    assert not loader.uses_threads
    seen = sorted(i for b in _labels(loader) for i in b)
    assert seen == list(range(N))
    ledger = explain(loader, batches=4)
    assert {r.reason for r in ledger.rows if r.stage == "worker->main"} == {
        "handle: pooled shared-memory buffer, mapped once by the main process"
    }


@pytest.mark.parametrize("order", ["seq", "shuffle", "block"])
def test_threaded_batches_are_the_source_rows_and_held_batches_never_change(
    ds: NumpyDataset, paths: dict[str, str], order: str
) -> None:
    source = np.load(paths["x"])
    if order == "block":
        kw: dict[str, Any] = {"batch_sampler": BlockShuffleSampler(N, 64, seed=2)}
    else:
        kw = {"batch_size": 64, "shuffle": order == "shuffle"}
    loader = ZeroCopyDataLoader(ds, num_workers=2, persistent_workers=True, **kw)
    for _epoch in range(3):
        held = list(loader)  # every batch of the epoch held at once: no buffer may be reused under them
        labels = np.concatenate([b["y"].numpy() for b in held])
        assert sorted(labels.tolist()) == list(range(N))
        for b in held:
            assert np.array_equal(b["x"].numpy(), source[b["y"].numpy()])


def test_contiguous_batches_are_views_of_the_mapping_with_threads(ds: NumpyDataset) -> None:
    mapped = ds.columns()["x"]
    lo, hi = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes
    loader = ZeroCopyDataLoader(ds, batch_size=100, num_workers=2)
    for b in loader:
        assert lo <= b["x"].data_ptr() < hi
    ledger = explain(loader, batches=3)
    assert ledger.bytes_copied == 0
    assert {r.reason for r in ledger.rows} == {
        "view: indices contiguous",
        "none: assembled by a worker thread in this process",
    }


def test_explain_counts_exactly_the_gathered_bytes_with_threads(ds: NumpyDataset) -> None:
    loader = ZeroCopyDataLoader(ds, batch_size=100, shuffle=True, num_workers=2)
    ledger = explain(loader, batches=4)
    assert ledger.batches == 4
    assert ledger.bytes_copied == 4 * 100 * (48 + 8)
    assert ledger.copied("worker->main") == 0


def test_views_are_built_here_and_gathers_in_worker_threads(ds: NumpyDataset) -> None:
    built: list[tuple[list[int], bool, str]] = []

    class Watched(ZeroCopyDataLoader):
        def host_batches(self, allocation: Any = None) -> Any:
            it = super().host_batches(allocation)
            collate = it._collate  # type: ignore[attr-defined]

            def spy(request: Any) -> Any:
                built.append((list(request.indices), request.is_view(), threading.current_thread().name))
                return collate(request)

            it._collate = spy  # type: ignore[attr-defined]
            return it

    views = [np.arange(0, 10), np.arange(10, 20), np.arange(500, 600)]
    it = Watched(ds, batch_sampler=views, num_workers=2).host_batches()
    assert [b["y"].tolist() for b in it] == [v.tolist() for v in views]
    assert it._pool is None  # type: ignore[attr-defined]  # no thread was ever needed
    main = threading.current_thread().name
    assert [(name == main) for _, _, name in built] == [True, True, True]

    built.clear()
    mixed = [np.arange(0, 10), np.array([5, 1, 9]), np.arange(10, 20), np.array([7, 3])]
    assert [b["y"].tolist() for b in Watched(ds, batch_sampler=mixed, num_workers=2)] == [m.tolist() for m in mixed]
    for _indices, view, name in built:
        assert (name == main) if view else name.startswith("zcopy_data-worker")
    assert sorted(v for _, v, _ in built) == [False, False, True, True]


# -- errors, timeouts, epochs, threads ------------------------------------------------------------
def test_an_error_surfaces_in_its_turn_with_its_type(ds: NumpyDataset) -> None:
    batches = [np.arange(0, 10), np.array([4, 2]), np.array([N - 1, N]), np.array([1, 2**40])]
    loader = ZeroCopyDataLoader(ds, batch_sampler=batches, num_workers=2)
    it = iter(loader)
    assert next(it)["y"].tolist() == list(range(10))
    assert next(it)["y"].tolist() == [4, 2]
    with pytest.raises(SampleIndexError, match=rf"index {N} .* out of range for a dataset of {N} samples"):
        next(it)


def test_timeout_is_honoured(paths: dict[str, str]) -> None:
    class Slow(NumpyDataset):
        def build_batch(self, indices: Any, run: Any, allocation: Any) -> dict[str, torch.Tensor]:  # noqa: ARG002
            time.sleep(1.0)
            return {"y": torch.from_numpy(indices)}

        @property
        def threads_suffice(self) -> bool:
            return True

    loader = ZeroCopyDataLoader(Slow(paths), batch_size=10, num_workers=1, timeout=0.2)
    assert loader.uses_threads
    with pytest.raises(RuntimeError, match=r"timed out after 0.2 seconds"):
        next(iter(loader))


def test_persistent_workers_survive_an_epoch_left_early(ds: NumpyDataset) -> None:
    loader = ZeroCopyDataLoader(ds, batch_size=50, shuffle=True, num_workers=2, persistent_workers=True)
    it = loader.host_batches()
    next(it)
    next(it)  # leave the epoch with batches in flight
    again = _labels(loader)
    assert loader.host_batches() is it  # the same workers
    assert sorted(i for b in again for i in b) == list(range(N))
    assert len(again) == N // 50


def test_worker_threads_end_with_the_epoch(ds: NumpyDataset) -> None:
    before = set(threading.enumerate())
    loader = ZeroCopyDataLoader(ds, batch_size=50, shuffle=True, num_workers=2)

    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.name.startswith("zcopy_data-worker")]

    for _ in range(3):
        it = loader.host_batches()
        assert sum(len(b["y"]) for b in it) == N
        assert it._pool is None  # type: ignore[attr-defined]  # shut down when the epoch ended
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ours() == []


def test_pin_memory_without_an_accelerator_warns_as_dataloader_does(ds: NumpyDataset) -> None:
    if torch.accelerator.is_available():
        pytest.skip("checks the CPU-only build")
    with pytest.warns(UserWarning, match="no accelerator is found"):
        batches = _labels(ZeroCopyDataLoader(ds, batch_size=100, num_workers=2, pin_memory=True))
    assert len(batches) == N // 100


def test_the_profiler_still_sees_each_batch(ds: NumpyDataset) -> None:
    loader = ZeroCopyDataLoader(ds, batch_size=100, num_workers=2)
    with warnings.catch_warnings():  # some torch versions warn that events are kept per profiling cycle
        warnings.simplefilter("ignore", UserWarning)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            assert len(_labels(loader)) == N // 100
        names = [e.name for e in prof.events()]
    assert sum("enumerate(DataLoader)" in n for n in names) >= N // 100


class _Recording(NumpyDataset):
    """Notes which allocation each batch was built with, and on which thread."""

    def build_batch(self, indices: Any, run: Any, allocation: Any) -> dict[str, Any]:
        self.__dict__.setdefault("seen", []).append((type(allocation).__name__, threading.get_ident()))
        return super().build_batch(indices, run, allocation)

    @property
    def threads_suffice(self) -> bool:
        return True  # the columns' own gather: GIL-free


@pytest.mark.parametrize("workers", [0, 2])
def test_gather_threads_copy_on_their_own_thread_and_a_lone_batch_on_torchs(workers: int) -> None:
    ds = _Recording({"x": np.arange(4000, dtype=np.float32).reshape(1000, 4)})
    loader = ZeroCopyDataLoader(ds, batch_size=10, shuffle=True, num_workers=workers)
    got = torch.cat([b["x"] for b in loader])
    assert torch.equal(got.sort(dim=0).values, torch.from_numpy(np.arange(4000, dtype=np.float32).reshape(1000, 4)))
    kinds = {k for k, _ in ds.seen}
    here = {t for _, t in ds.seen} == {threading.get_ident()}
    if workers:  # several batches in flight: each thread copies alone, torch's threads stay out of it
        assert kinds == {"GatherThreadAllocation"} and not here
    else:  # one batch at a time: one index_select on torch's intra-op threads
        assert kinds == {"HostAllocation"} and here
