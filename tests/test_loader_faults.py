"""Fault injection through real ``DataLoader`` workers (fork and spawn).

Dead workers, hung workers, bad samplers, empty datasets and short datasets end in an error of a
documented type, or in documented graceful handling, within a bounded time and without leaving
shared-memory segments behind.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader, Sampler, default_collate

from tests.support import SleepingDataset, consume, run_isolated, torch_segments
from zcopy_data import NumpyDataset, SampleIndexError, ZeroCopyDataLoader, zero_copy_collate

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

# (workers, multiprocessing context); one spawned worker is enough to cross the spawn boundary and
# halves the interpreter starts it costs
MODES = [(0, None), (2, "fork"), (1, "spawn")]
MODE_IDS = ["main", "fork", "spawn"]


def _loader(ds: Any, workers: int, ctx: str | None, **kwargs: Any) -> DataLoader[Any]:
    if workers:
        kwargs.update(num_workers=workers, multiprocessing_context=ctx, timeout=60)
    return DataLoader(ds, collate_fn=zero_copy_collate, **kwargs)


def _columns(n: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "i": np.arange(n)}


@pytest.mark.parametrize(("workers", "ctx"), MODES[:2], ids=MODE_IDS[:2])
def test_an_empty_dataset_yields_no_batches(workers: int, ctx: str | None) -> None:
    ds = NumpyDataset({"x": np.zeros((0, 3), np.float32)})
    assert consume(_loader(ds, workers, ctx, batch_size=4)) == []
    assert consume(_loader(ds, workers, ctx, batch_size=None)) == []


def test_an_empty_dataset_with_shuffle_fails_like_the_default_path() -> None:
    ds = NumpyDataset({"x": np.zeros((0, 3), np.float32)})
    with pytest.raises(ValueError, match="num_samples should be a positive integer value, but got num_samples=0"):
        DataLoader(ds, batch_size=4, shuffle=True, collate_fn=default_collate)
    with pytest.raises(ValueError, match="num_samples=0"):
        _loader(ds, 0, None, batch_size=4, shuffle=True)


@pytest.mark.parametrize(("workers", "ctx"), MODES[:2], ids=MODE_IDS[:2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_size_larger_than_the_dataset_gives_one_short_batch(workers: int, ctx: str | None, shuffle: bool) -> None:
    ds = NumpyDataset(_columns(5))
    (batch,) = consume(_loader(ds, workers, ctx, batch_size=64, shuffle=shuffle))
    assert sorted(batch["i"].tolist()) == [0, 1, 2, 3, 4]
    assert np.array_equal(batch["x"].numpy(), ds.columns()["x"][batch["i"].numpy()])
    assert consume(_loader(ds, workers, ctx, batch_size=64, drop_last=True)) == []


class _BadBatches(Sampler[list[int]]):
    """A batch sampler that slips an out-of-range index into its third batch."""

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad

    def __iter__(self) -> Iterator[list[int]]:
        yield [0, 1, 2]
        yield [5, 3, 4]
        yield [6, self.bad, 7]

    def __len__(self) -> int:
        return 3


class _BadIndices(Sampler[int]):
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@pytest.mark.parametrize(
    ("workers", "ctx", "bad"),
    [(0, None, 20), (0, None, 10**12), (0, None, -21), (2, "fork", 20), (2, "fork", -21), (1, "spawn", 20)],
    ids=["main-20", "main-huge", "main-negative", "fork-20", "fork-negative", "spawn-20"],
)
def test_out_of_range_indices_from_a_batch_sampler_raise_sample_index_error(
    workers: int, ctx: str | None, bad: int
) -> None:
    ds = NumpyDataset(_columns(20))
    loader = _loader(ds, workers, ctx, batch_sampler=_BadBatches(20, bad))
    with pytest.raises(
        SampleIndexError, match=rf"index {bad} \(position 1 in the batch\) is out of range .* 20 samples"
    ):
        consume(loader)


@pytest.mark.parametrize(("workers", "ctx"), MODES[:2], ids=MODE_IDS[:2])
def test_out_of_range_indices_from_a_sampler_raise_sample_index_error(workers: int, ctx: str | None) -> None:
    ds = NumpyDataset(_columns(10))
    loader = _loader(ds, workers, ctx, batch_size=4, sampler=_BadIndices([0, 1, 2, 3, 4, 9, 10, 2]))
    with pytest.raises(SampleIndexError, match=r"index 10 \(position 2 in the batch\)"):
        consume(loader)


def test_a_hung_worker_ends_in_the_loader_timeout_not_a_hang() -> None:
    ds = SleepingDataset(_columns(40), stuck=20, seconds=4)  # twice the loader timeout
    loader = DataLoader(
        ds, batch_size=5, num_workers=2, collate_fn=zero_copy_collate, timeout=2, multiprocessing_context="fork"
    )
    started = time.monotonic()
    got: list[Any] = []
    it = iter(loader)
    try:
        with pytest.raises(RuntimeError, match=r"DataLoader timed out after 2 seconds"):
            for batch in it:
                got.append(batch)
    finally:
        it._shutdown_workers()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 40
    firsts = [b["i"][0].item() for b in got]
    # every batch before the stuck one, in order (fewer only if a loaded machine was slower than the timeout)
    assert firsts == list(range(0, 20, 5))[: len(firsts)]
    assert all(np.array_equal(b["x"].numpy(), ds.columns()["x"][b["i"].numpy()]) for b in got)


KILLED_WORKER = """
import json, os, sys, time
import numpy as np
import torch.multiprocessing
from torch.utils.data import DataLoader
from tests.support import ExitingDataset, torch_segments
from zcopy_data import zero_copy_collate

ctx, strategy, shuffle = sys.argv[1], sys.argv[2], sys.argv[3] == "shuffle"
torch.multiprocessing.set_sharing_strategy(strategy)
src = np.arange(400 * 64, dtype=np.float32).reshape(400, 64)
# a fixed order, shuffled (gathers) or not (views); the fatal index sits in batch 11 either way
order = np.random.default_rng(0).permutation(400) if shuffle else np.arange(400)
ds = ExitingDataset({"x": src, "i": np.arange(400)}, fatal=int(order[11 * 20 + 3]))
loader = DataLoader(ds, batch_size=20, num_workers=2, sampler=order.tolist(), collate_fn=zero_copy_collate,
                    timeout=30, multiprocessing_context=ctx)
report = {"batches": 0, "wrong": 0, "error": None, "held_segments": 0}
started = time.monotonic()
it = iter(loader)
pids = [w.pid for w in it._workers]
held = []
try:
    try:
        for batch in it:
            held.append(batch)
            report["batches"] += 1
            report["wrong"] += int(not np.array_equal(batch["x"].numpy(), src[batch["i"].numpy()]))
            report["held_segments"] = max(report["held_segments"], len(torch_segments(pids)))
    finally:
        report["seconds"] = time.monotonic() - started
        it._shutdown_workers()
except Exception as err:  # PyTorch may also raise from its SIGCHLD handler, anywhere in this block
    report["error"] = f"{type(err).__name__}: {err}"
del held, it
report["pids"] = pids
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    ("ctx", "strategy"),
    [("fork", "file_descriptor"), ("spawn", "file_descriptor"), ("fork", "file_system")],
    # spawned workers do not inherit the parent's sharing strategy, so file_system is a fork case
)
def test_a_killed_worker_is_a_clear_error_with_no_hang_and_no_leaked_segment(ctx: str, strategy: str) -> None:
    proc = run_isolated(KILLED_WORKER, ctx, strategy, "shuffle" if strategy == "file_system" else "sequential")
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # PyTorch names the dead worker; when one of its batches was still in flight, rebuilding that
    # batch's shared-memory handle fails first (ConnectionResetError / ConnectionRefusedError).
    assert report["error"] is not None, report
    expected = ("RuntimeError: DataLoader worker (pid", "ConnectionResetError", "ConnectionRefusedError")
    assert report["error"].startswith(expected), report
    assert report["seconds"] < 30, report  # the loader timeout was never needed
    assert report["wrong"] == 0, report
    assert 0 < report["batches"] <= 11, report  # batch 11 never arrives; the ones before it may
    if strategy == "file_system":
        assert report["held_segments"] > 0, report  # the check below can see segments when they exist
    assert torch_segments(report["pids"]) == [], "shared-memory segments outlived the process"


SEGMENTS_AFTER_EPOCHS = """
import gc, json, sys
import numpy as np
import torch.multiprocessing
from torch.utils.data import DataLoader
from tests.support import torch_segments
from zcopy_data import NumpyDataset, zero_copy_collate

torch.multiprocessing.set_sharing_strategy("file_system")
ds = NumpyDataset({"x": np.ones((300, 128), np.float32)})
loader = DataLoader(ds, batch_size=30, num_workers=2, shuffle=True, collate_fn=zero_copy_collate,
                    persistent_workers=True, timeout=60, multiprocessing_context=sys.argv[1])
counts = []
it = iter(loader)
pids = [w.pid for w in it._workers]
for _ in range(3):
    held = list(it)
    counts.append(len(torch_segments(pids)))
    del held
    gc.collect()
    it = iter(loader)
counts.append(len(torch_segments(pids)))
del it, loader
gc.collect()
print(json.dumps({"pids": pids, "while_held": counts[:-1], "after": counts[-1]}))
"""


def test_completed_epochs_leave_no_segment_behind() -> None:
    proc = run_isolated(SEGMENTS_AFTER_EPOCHS, "fork")
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    held = report["while_held"]
    assert min(held) >= 10, report  # at least one segment per held batch: the count is real
    assert max(held) <= held[0] + 2 * 2 * 2, report  # no growth from epoch to epoch (beyond one prefetch)
    assert report["after"] <= max(held), report  # released batches do not leave more segments behind
    assert torch_segments(report["pids"]) == [], "segments outlived the process"


SIGNALLED_WORKERS = """
import json, signal, time
import numpy as np
from torch.utils.data import DataLoader
from tests.support import ExitingDataset
from zcopy_data import zero_copy_collate

src = np.arange(200 * 16, dtype=np.float32).reshape(200, 16)
report = {}
for sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS):
    ds = ExitingDataset({"x": src, "i": np.arange(200)}, fatal=103, code=-int(sig))
    loader = DataLoader(ds, batch_size=10, num_workers=2, collate_fn=zero_copy_collate, timeout=30)
    it, wrong, started = iter(loader), 0, time.monotonic()
    try:
        try:
            for batch in it:
                wrong += int(not np.array_equal(batch["x"].numpy(), src[batch["i"].numpy()]))
        finally:
            it._shutdown_workers()
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    report[sig.name] = {"error": error, "wrong": wrong, "seconds": time.monotonic() - started}
print(json.dumps(report))
"""


def test_a_worker_killed_by_a_signal_is_a_clear_error_in_the_main_process() -> None:
    """SIGKILL (the OOM killer), SIGSEGV and SIGBUS (a native crash) in a worker: the main process lives on."""
    proc = run_isolated(SIGNALLED_WORKERS)
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, outcome in report.items():
        assert outcome["error"] is not None, (name, outcome)
        expected = ("RuntimeError: DataLoader worker (pid", "ConnectionResetError", "ConnectionRefusedError")
        assert outcome["error"].startswith(expected), (name, outcome)
        assert outcome["wrong"] == 0, (name, outcome)
        assert outcome["seconds"] < 30, (name, outcome)


@pytest.mark.parametrize("mode", [(0, "auto"), (2, "threads"), (2, "processes")], ids=["0w", "threads", "processes"])
def test_a_sequential_epoch_of_two_billion_samples_builds_its_indices_per_batch(tmp_path: Any, mode: Any) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((10**9, 0), dtype=np.float32))  # a 128-byte file
    for ds in (NumpyDataset({"x": np.zeros((2**31, 0), dtype=np.float32)}), NumpyDataset({"x": tmp_path / "wide.npy"})):
        tracemalloc.start()
        try:
            loader = ZeroCopyDataLoader(ds, batch_size=256, num_workers=mode[0], worker_mode=mode[1])
            it = iter(loader)
            first, second = next(it)["x"], next(it)["x"]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert first.shape == second.shape == (256, 0)
        assert peak < 16 * 2**20  # O(batch), not 8 bytes per sample (16 GiB here)
        del it  # its workers (if any) end with it
