"""The device hop on a real GPU: equality with the CPU path, free pinning, exact bytes, races, overlap.

Every test here carries the ``cuda`` marker and is skipped without a CUDA device.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from zcopy_data import NumpyDataset, ZeroCopyDataLoader, explain, zero_copy_collate
from zcopy_data.ledger import capture
from zcopy_data.memory.pinned import ALIGN, PAGE, is_pinned_gather, is_pool_memory
from zcopy_data.memory.policy import PINNED, ExactPinnedAllocation, HostAllocation
from zcopy_data.transfer import Cast, DevicePrefetcher, PinnedBufferPool, to_device
from zcopy_data.transfer._streams import on_stream, side_stream

pytestmark = pytest.mark.cuda

CAST = {"image": Cast(torch.float16, scale=1 / 255, mean=[0.5, 0.25, 0.125], std=[0.5, 0.5, 0.5])}
SLEEP_CYCLES = 5_000_000  # a few milliseconds of a spinning kernel


def _dataset(n: int = 256) -> NumpyDataset:
    rng = np.random.default_rng(1)
    return NumpyDataset(
        {"image": rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8), "label": np.arange(n, dtype=np.int64)}
    )


def _loader(ds: NumpyDataset, workers: int, **kw: object) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    return DataLoader(
        ds, batch_size=32, shuffle=True, generator=g, num_workers=workers, collate_fn=zero_copy_collate, **kw
    )


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("depth", [1, 3])
def test_device_batches_equal_the_cpu_path_casts_included(workers, depth):
    ds = _dataset()
    on_cpu = [{k: v.clone() for k, v in b.items()} for b in DevicePrefetcher(_loader(ds, workers), "cpu", cast=CAST)]
    on_gpu = []
    for b in DevicePrefetcher(_loader(ds, workers), "cuda", depth=depth, cast=CAST):
        assert b["image"].device.type == "cuda" and b["image"].dtype == torch.float16
        on_gpu.append({k: v.cpu() for k, v in b.items()})
    assert len(on_gpu) == len(on_cpu) == 8
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert torch.equal(g["image"], c["image"]) and torch.equal(g["label"], c["label"])


@pytest.mark.parametrize("order", ["shuffle", "sequential"])
def test_gather_threads_feed_the_device_the_same_batches(order):
    ds = _dataset()
    shuffle = order == "shuffle"

    def loader(workers: int) -> ZeroCopyDataLoader:
        g = torch.Generator().manual_seed(3)
        return ZeroCopyDataLoader(ds, batch_size=32, shuffle=shuffle, generator=g, num_workers=workers)

    threaded = loader(2)
    assert threaded.uses_threads
    if shuffle:  # gathered by the threads straight into pinned memory
        assert all(b["image"].is_pinned() and is_pinned_gather(b["image"]) for b in threaded)
    on_cpu = [{k: v.clone() for k, v in b.items()} for b in DevicePrefetcher(loader(0), "cpu", cast=CAST)]
    on_gpu = [{k: v.cpu() for k, v in b.items()} for b in DevicePrefetcher(loader(2), "cuda", depth=2, cast=CAST)]
    assert len(on_gpu) == len(on_cpu) == 8
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert torch.equal(g["image"], c["image"]) and torch.equal(g["label"], c["label"])
    pinned = ZeroCopyDataLoader(ds, batch_size=32, shuffle=shuffle, num_workers=2, pin_memory=True)
    assert all(b["image"].is_pinned() and b["label"].is_pinned() for b in pinned)


def test_to_device_moves_nested_batches_from_pinned_and_pageable_memory():
    pinned = PinnedBufferPool({"x": ((4, 3, 2, 2), torch.uint8)}, slots=1).acquire()["x"]
    pinned.copy_(torch.arange(48, dtype=torch.uint8).view(4, 3, 2, 2))
    pageable = torch.arange(4)
    resident = torch.ones(2, device="cuda")
    batch = {"image": pinned, "meta": [pageable, ("tag", resident)]}
    with capture() as records:
        out = to_device(batch, "cuda", cast={"image": torch.float32})
    assert out["image"].device.type == "cuda" and out["image"].dtype == torch.float32
    assert torch.equal(out["image"].cpu(), pinned.float())
    assert torch.equal(out["meta"][0].cpu(), pageable) and out["meta"][1][0] == "tag"
    assert out["meta"][1][1] is resident
    reasons = {r[1]: r[2] for r in records if r[0] == "host->device"}
    assert reasons["image"].startswith("DMA from pinned memory")
    assert reasons["meta[0]"].startswith("pageable memory")
    assert reasons["meta[1][1]"] == "already on the device"


def test_main_process_gathers_land_in_pinned_memory_so_pinning_is_free():
    ds = _dataset()
    batch = next(iter(_loader(ds, 0)))
    assert batch["image"].is_pinned() and is_pinned_gather(batch["image"])
    assert not is_pool_memory(batch["image"])  # outside a device stage: PyTorch's guarded pinned allocator
    pinned_by_loader = next(iter(_loader(ds, 0, pin_memory=True)))
    assert is_pinned_gather(pinned_by_loader["image"])  # the pin stage handed back the same buffer
    ledger = explain(_loader(ds, 0, pin_memory=True), batches=3)
    pins = [r for r in ledger.rows if r.stage == "pin"]
    assert pins and all(r.reason.startswith("free") and r.bytes_copied == 0 for r in pins)
    # With workers the batch is in shared memory: the pin thread copies it, and the ledger says so.
    ledger = explain(_loader(ds, 2, pin_memory=True), batches=3)
    assert ledger.copied("pin") == 3 * 32 * (3 * 8 * 8 + 8)


def test_inside_the_prefetcher_gathers_use_exact_buffers_and_nothing_is_staged():
    pf = DevicePrefetcher(_loader(_dataset(), 0), "cuda")
    with capture() as records:
        n = sum(len(b["label"]) for b in pf)
    assert n == 256 and pf.pool is None
    pins = [r for r in records if r[0] == "pin"]
    assert len(pins) == 16 and all(r[2].startswith("free") and r[4] == 0 for r in pins)

    # a loader that offers host_batches() is handed the prefetcher's exact pinned allocation
    g = torch.Generator().manual_seed(3)
    zpf = DevicePrefetcher(ZeroCopyDataLoader(_dataset(), batch_size=32, shuffle=True, generator=g), "cuda")
    labels = torch.cat([b["label"].cpu() for b in zpf])
    assert sorted(labels.tolist()) == list(range(256))
    assert isinstance(zpf.allocation, ExactPinnedAllocation) and zpf.allocation.pool.nbytes > 0
    x = zpf.allocation((1000,), torch.int32)
    assert is_pool_memory(x) and x.is_pinned()


def test_gathers_outside_a_device_stage_survive_a_users_own_non_blocking_copies():
    n, outs = 1 << 20, []
    for k in range(32):
        x = PINNED((n,), torch.int32)  # PyTorch's pinned allocator: it guards its blocks by events
        assert x.is_pinned() and not is_pool_memory(x)
        x.fill_(k)
        torch.cuda._sleep(SLEEP_CYCLES)  # the copy below starts late
        outs.append(x.to("cuda", non_blocking=True))
        del x  # a later gather may get this block back, but only after the copy ran
    torch.cuda.synchronize()
    for k, y in enumerate(outs):
        assert bool((y == k).all()), f"batch {k} was overwritten before its copy ran"


def test_pinned_bytes_are_exact_not_rounded_to_a_power_of_two():
    torch.cuda.init()
    before = torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    image = 256 * 3 * 64 * 65  # 3,194,880 bytes: PyTorch's pinned allocator would take 4 MiB
    pool = PinnedBufferPool({"image": ((256, 3, 64, 65), torch.uint8), "label": ((256,), torch.int64)}, slots=4)
    exact = 4 * (image + 256 * 8)
    assert pool.pinned and pool.nbytes == exact
    assert exact <= pool.pinned_bytes < exact + PAGE + 4 * 2 * ALIGN
    assert torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) == before  # not the rounding allocator
    for _ in range(4):
        slot = pool.acquire()
        assert slot["image"].is_pinned() and slot["label"].is_pinned()
        slot.release()


def _delay(stream: torch.Stream) -> None:
    with on_stream(stream):
        torch.cuda._sleep(SLEEP_CYCLES)


@pytest.mark.parametrize("source", ["pinned-gathers", "pageable"])
@pytest.mark.parametrize("delayed", ["transfer", "consumer"])
def test_a_producer_rewriting_buffers_as_fast_as_it_can_never_corrupts_a_batch(source, delayed):
    n, batches = 1 << 20, 48
    device = torch.device("cuda", torch.cuda.current_device())

    def produce():
        for k in range(batches):
            if source == "pinned-gathers":
                x = PINNED((n,), torch.int32)  # the buffer a gather in the main process writes into
            else:
                x = torch.empty(n, dtype=torch.int32)  # staged through the prefetcher's pinned pool
            x.fill_(k)
            if delayed == "transfer":
                _delay(side_stream(device))  # this batch's copy starts only after the sleep
            yield {"x": x}
            del x

    bad = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for k, batch in enumerate(DevicePrefetcher(produce(), device, depth=2)):
        if delayed == "consumer":
            torch.cuda._sleep(SLEEP_CYCLES)  # the check below runs late, after later copies were issued
        bad += (batch["x"] != k).sum()
        seen += 1
    torch.cuda.synchronize()
    assert seen == batches
    assert int(bad) == 0


def test_pool_slots_wait_for_their_copy_before_being_rewritten():
    n = 1 << 20
    pool = PinnedBufferPool({"x": ((n,), torch.int32)}, slots=2)
    stream = torch.Stream(device="cuda")
    outs = []
    for k in range(24):
        slot = pool.acquire()  # must block until the copy that read this slot two batches ago is done
        slot["x"].fill_(k)
        _delay(stream)
        outs.append(to_device({"x": slot["x"]}, "cuda", stream=stream)["x"])
        slot.release(stream.record_event())
    torch.cuda.synchronize()
    for k, out in enumerate(outs):
        assert bool((out == k).all()), f"batch {k} was overwritten before its copy ran"


def test_copies_overlap_compute():
    nbytes = 64 << 20
    pool = PinnedBufferPool({"x": ((nbytes,), torch.uint8)}, slots=3)
    sources = []
    for _ in range(3):
        slot = pool.acquire()
        sources.append(slot["x"])
        slot.release()
    steps = 30
    device = torch.device("cuda", torch.cuda.current_device())

    def feed():
        for k in range(steps):
            yield {"x": sources[k % 3]}

    def timed(fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in DevicePrefetcher(feed(), device):  # warm up the stream, the allocator, the pool
        pass
    copy = timed(lambda: [to_device(b, device) for b in feed()])
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    cycles = int(1_000_000 * (copy / steps * 1000) / start.elapsed_time(end))  # one sleep ~ one copy
    compute = timed(lambda: [torch.cuda._sleep(cycles) for _ in range(steps)])

    def pipeline() -> None:
        for _ in DevicePrefetcher(feed(), device, depth=2):
            torch.cuda._sleep(cycles)

    both = timed(pipeline)
    assert both < 0.8 * (copy + compute), f"no overlap: {both=:.4f}s, {copy=:.4f}s, {compute=:.4f}s"


class _PinsInWorker(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        PinnedBufferPool({"x": ((4,), torch.uint8)}, slots=1, pin=True)
        return torch.zeros(1)


def test_pinning_inside_a_worker_is_refused_before_touching_the_device():
    loader = DataLoader(_PinsInWorker(), batch_size=1, num_workers=1)
    with pytest.raises(RuntimeError, match="main process only"):
        next(iter(loader))


def test_pinned_gathers_can_be_turned_off():
    # the policy is handed down: a plain host allocation gathers into pageable memory
    g = torch.Generator().manual_seed(3)
    loader = ZeroCopyDataLoader(_dataset(), batch_size=32, shuffle=True, generator=g)
    assert not next(iter(loader.host_batches(HostAllocation())))["image"].is_pinned()
    assert next(iter(loader))["image"].is_pinned()
