"""Real DataLoader workers (fork and spawn): integrity, zero copies, buffer reuse, failures."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, get_worker_info

from zcopy_data import NumpyDataset, ZeroCopyDataLoader, _mapping, explain, zero_copy_collate
from zcopy_data.memory import crossing
from zcopy_data.memory.shared import SharedMemoryExhaustedError
from zcopy_data.samplers import BlockShuffleSampler

N, BATCH = 480, 32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random uint8 images and each sample's own index, written by ``np.save``."""
    folder = tmp_path_factory.mktemp("workers")
    paths = {"image": folder / "image.npy", "index": folder / "index.npy"}
    np.save(paths["image"], np.random.default_rng(1).integers(0, 256, size=(N, 3, 8, 8), dtype=np.uint8))
    np.save(paths["index"], np.arange(N, dtype=np.int64))
    return paths


def _dataset(files: dict[str, Path]) -> NumpyDataset:
    return NumpyDataset({k: str(v) for k, v in files.items()})


def _loader(
    ds: Any, order: str, workers: int, replicas: int, rank: int, threads: bool = False, **kw: Any
) -> DataLoader[Any]:
    """A DataLoader with worker processes, or (``threads``) a ZeroCopyDataLoader with gather threads."""
    cls: Any = DataLoader
    if threads:
        cls = ZeroCopyDataLoader
    elif workers:
        kw.setdefault("multiprocessing_context", "fork")
    if workers:
        kw.setdefault("persistent_workers", True)
    if order == "block":
        sampler = BlockShuffleSampler(ds, BATCH, seed=7, num_replicas=replicas, rank=rank)
        loader = cls(ds, batch_sampler=sampler, num_workers=workers, collate_fn=zero_copy_collate, **kw)
    else:
        if replicas == 1:
            shuffle: Any = RandomSampler(ds, generator=torch.Generator().manual_seed(7))
        else:
            shuffle = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=7)
        loader = cls(ds, batch_size=BATCH, sampler=shuffle, num_workers=workers, collate_fn=zero_copy_collate, **kw)
    assert not threads or not workers or loader.uses_threads
    return loader


def _set_epoch(loader: DataLoader[Any], epoch: int) -> None:
    for s in (loader.batch_sampler, loader.sampler):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def _check_epoch(held: Sequence[dict[str, torch.Tensor]], source: np.ndarray[Any, Any]) -> None:
    """Every index exactly once, and every held batch still equal to the source."""
    seen = np.concatenate([b["index"].numpy() for b in held])
    assert np.array_equal(np.sort(seen), np.arange(N))
    for b in held:
        assert np.array_equal(b["image"].numpy(), source[b["index"].numpy()])


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("order", ["shuffle", "block"])
@pytest.mark.parametrize(("workers", "threads"), [(0, False), (2, False), (0, True), (2, True)])
def test_every_index_once_per_epoch_and_held_batches_unchanged(files, workers, threads, order, replicas):
    ds = _dataset(files)
    source = np.load(files["image"])
    loaders = [_loader(ds, order, workers, replicas, r, threads=threads) for r in range(replicas)]
    orders = []
    for epoch in range(3):
        held: list[dict[str, torch.Tensor]] = []
        for loader in loaders:
            _set_epoch(loader, epoch)
            mine = list(loader)
            assert len(mine) == len(loader)
            held += mine
        counts = {len(loader) for loader in loaders}
        assert len(counts) == 1  # every rank the same number of batches
        _check_epoch(held, source)  # after every later batch of the epoch was produced
        orders.append(np.concatenate([b["index"].numpy() for b in held]))
    assert not np.array_equal(orders[0], orders[1])  # shuffled differently per epoch


def _in_main_mapping(t: torch.Tensor) -> bool:
    return any(r.start <= t.data_ptr() < r.stop for r in _mapping._ranges.values())


def test_contiguous_batches_cross_as_file_descriptors(files):
    ds = _dataset(files)
    loader = _loader(ds, "block", 2, 1, 0, persistent_workers=False)
    batches = list(loader)
    contiguous = [b for b in batches if bool((np.diff(b["index"].numpy()) == 1).all())]
    assert len(contiguous) == len(batches)  # every block is one run, the short ones at the boundaries too
    assert all(_in_main_mapping(b["image"]) and _in_main_mapping(b["index"]) for b in contiguous)
    # another writer changes the file: a zero-copy batch shows it, a copy would not
    first = contiguous[0]
    row = int(first["index"][0])
    writer = np.load(files["index"], mmap_mode="r+")
    writer[row] = -5
    writer.flush()
    try:
        assert int(first["index"][0]) == -5
    finally:
        writer[row] = row
        writer.flush()


def test_explain_is_exact_with_workers(files):
    ds = _dataset(files)
    sample_bytes = 3 * 8 * 8 + 8
    block = explain(_loader(ds, "block", 2, 1, 0, persistent_workers=False, sampler=None), batches=4)
    assert block.bytes_copied == 0
    assert block.copied("worker->main") == 0
    shuffled = explain(_loader(ds, "shuffle", 2, 1, 0, persistent_workers=False), batches=4)
    assert shuffled.bytes_copied == shuffled.copied("collate") == 4 * BATCH * sample_bytes
    assert {r.reason for r in shuffled.rows if r.stage == "worker->main"} == {
        "handle: pooled shared-memory buffer, mapped once by the main process"
    }


def test_gather_buffers_are_reused_once_released(files):
    ds = _dataset(files)
    loader = _loader(ds, "shuffle", 2, 1, 0, prefetch_factor=2)
    before = set(crossing._mapped)
    pointers = set()
    for _ in range(3):
        for batch in loader:
            pointers.add(batch["image"].data_ptr())
            del batch
    mapped = set(crossing._mapped) - before
    # 45 batches, yet each worker only ever needed a few buffers per field
    assert len(pointers) <= 2 * 6
    assert len(mapped) <= 2 * 2 * 6
    held = list(loader)  # held batches each keep their own buffer
    assert len({b["image"].data_ptr() for b in held}) == len(held)


def test_spawned_workers(files):
    ds = _dataset(files)
    source = np.load(files["image"])
    # one loader (spawning is slow): every epoch, block-shuffled runs then randomly gathered batches
    blocks = BlockShuffleSampler(ds, BATCH, seed=3)
    scattered = np.random.default_rng(3).permutation(N).reshape(-1, BATCH).tolist()
    plan = [*blocks, *scattered]
    loader = DataLoader(
        ds,
        batch_sampler=plan,
        num_workers=2,
        collate_fn=zero_copy_collate,
        multiprocessing_context="spawn",
        persistent_workers=True,
        prefetch_factor=3,
        timeout=60,
    )
    for _ in range(2):
        held = list(loader)
        assert len(held) == len(plan)
        _check_epoch(held[: len(blocks)], source)
        _check_epoch(held[len(blocks) :], source)
    assert any(_in_main_mapping(b["image"]) for b in held)


def test_non_persistent_workers_with_timeout_and_prefetch(files):
    ds = _dataset(files)
    source = np.load(files["image"])
    loader = _loader(ds, "shuffle", 2, 1, 0, persistent_workers=False, prefetch_factor=4, timeout=30)
    for _ in range(2):
        _check_epoch(list(loader), source)


def test_holding_more_batches_than_the_pool_allows_is_a_clear_error(files, monkeypatch):
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", str(3 * 8192))
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_WAIT_S", "0.2")
    loader = _loader(_dataset(files), "shuffle", 2, 1, 0, persistent_workers=False)
    held = []
    it = iter(loader)
    with pytest.raises(SharedMemoryExhaustedError, match=r"pool already holds \d+ B of the 24576 B allowed"):
        for batch in it:
            held.append(batch)
    assert held  # the first batches arrived; the pool ran out only while all were held
    it._shutdown_workers()


class _PerSample(Dataset[dict[str, Any]]):
    """Per-sample access only: the collate stacks each field into a pooled buffer in the worker."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        images = np.load(self.files["image"], mmap_mode="r")
        return {"image": torch.from_numpy(np.array(images[i])), "index": i, "half": i / 2, "even": i % 2 == 0}


def test_per_sample_datasets_stack_into_pooled_buffers(files):
    loader = DataLoader(
        _PerSample(files),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        collate_fn=zero_copy_collate,
        multiprocessing_context="fork",
    )
    held = list(loader)
    _check_epoch(held, np.load(files["image"]))
    for b in held:  # the same values and dtypes default_collate gives
        assert torch.equal(b["half"], b["index"].double() / 2)
        assert torch.equal(b["even"], b["index"] % 2 == 0)
    ledger = explain(loader, batches=2)
    assert ledger.copied("worker->main") == 0
    assert ledger.bytes_copied == ledger.copied("collate") == 2 * BATCH * (3 * 8 * 8 + 8 + 8 + 1)


class _Dying(NumpyDataset):
    """Kills its worker (no cleanup at all) when asked for ``die_at``; logs worker pids."""

    def __init__(self, files: dict[str, Path], die_at: int, log: Path) -> None:
        super().__init__({k: str(v) for k, v in files.items()})
        self.die_at, self.log = die_at, log

    def __getitems__(self, indices: Sequence[int]) -> Any:
        if get_worker_info() is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
            if self.die_at in indices:
                os._exit(3)
        return super().__getitems__(indices)


def _shm_names(pids: set[int]) -> set[str]:
    return {name for name in os.listdir("/dev/shm") if any(f"_{pid}_" in name for pid in pids)}


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_worker_killed_mid_epoch_is_an_error_and_leaves_no_segment(files, tmp_path, context):
    gc.collect()  # no stale iterator may shut down (and see our dead worker) while this test runs
    log = tmp_path / "pids"
    ds = _Dying(files, die_at=N // 2, log=log)
    loader = _loader(ds, "shuffle", 2, 1, 0, multiprocessing_context=context, persistent_workers=False)
    got = 0
    it = iter(loader)
    # PyTorch's two wordings: its watchdog's ("pid(s) ..."), or its SIGCHLD handler's ("pid ...")
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid(\(s\))? [\d, ]+\) exited unexpectedly"):
        for _ in it:
            got += 1
    with contextlib.suppress(RuntimeError):  # PyTorch's SIGCHLD handler may report the dead worker again
        it._shutdown_workers()
    assert got < len(loader)
    pids = {int(p) for p in log.read_text().split()} | {os.getpid()}
    assert len(pids) >= 2
    assert not _shm_names(pids)


def test_normal_end_leaves_no_segment(files, tmp_path):
    log = tmp_path / "pids"
    ds = _Dying(files, die_at=-1, log=log)
    for order in ("shuffle", "block"):
        for _ in _loader(ds, order, 2, 1, 0, persistent_workers=False):
            pass
    pids = {int(p) for p in log.read_text().split()} | {os.getpid()}
    assert not _shm_names(pids)
