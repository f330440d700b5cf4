"""The worker buffer pool: real shared memory, reuse only when every reference is gone."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from zcopy_data.errors import ZeroCopyError
from zcopy_data.memory import crossing, shared
from zcopy_data.memory.segment import HEADER_BYTES, tensor_over
from zcopy_data.memory.shared import PoolConfig, SharedMemoryExhaustedError, WorkerBufferPool


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> WorkerBufferPool:
    """A pool installed as this process's pool, and a main-side cache that is emptied afterwards."""
    p = WorkerBufferPool(PoolConfig(max_bytes=1 << 20, wait_s=0.05))
    monkeypatch.setattr(shared, "_pool", p)
    monkeypatch.setattr(crossing, "_mapped", {})
    monkeypatch.setattr(crossing, "_pids", {})
    return p


def test_buffers_are_shared_memory_and_reused_when_free(pool):
    a = pool.allocate((4, 8), torch.float32)
    assert a.is_shared()
    ptr = a.data_ptr()
    del a
    assert pool.allocate((4, 8), torch.float32).data_ptr() == ptr
    assert len(pool.slots) == 1


def test_a_view_in_the_worker_keeps_its_buffer(pool):
    a = pool.allocate((16,), torch.int64)
    view = a[3:]
    first = a.data_ptr()
    del a
    b = pool.allocate((16,), torch.int64)
    assert b.data_ptr() != first  # the view still references the first buffer
    del view, b
    assert pool.allocate((16,), torch.int64).data_ptr() in {first, first + 0}


def _worker(cmd: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A process playing the DataLoader worker: sends a pooled tensor, then answers questions."""
    crossing.install()
    pool = shared.current_pool(create=True)
    assert pool is not None
    a = pool.allocate((8, 3), torch.float32)
    a.copy_(torch.arange(24, dtype=torch.float32).view(8, 3))
    out.put(a)
    del a
    first = pool.slots[0]
    while (msg := cmd.get()) != "stop":
        if msg == "peek":  # read through this process's own mapping (a temporary view)
            out.put(float(tensor_over(first.storage, HEADER_BYTES, (1,), torch.float32)))
        elif msg == "free?":
            out.put(first.is_free())
        elif msg == "again":
            b = pool.allocate((8, 3), torch.float32)
            _rebuild, (handle, storage) = crossing._reduce_tensor(b)
            out.put((b.data_ptr() == first.data_ptr + HEADER_BYTES, handle.slot, storage is None))


def test_handed_off_buffer_waits_for_every_view_in_the_receiver(pool):  # noqa: ARG001
    ctx = mp.get_context("fork")
    cmd, out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_worker, args=(cmd, out))
    proc.start()
    try:
        received = out.get(timeout=30)
        assert torch.equal(received, torch.arange(24, dtype=torch.float32).view(8, 3))
        received[0, 0] = -1.0  # one memory in two processes: nothing was copied
        cmd.put("peek")
        assert out.get(timeout=30) == -1.0
        view = received[2:]
        del received
        cmd.put("free?")
        assert out.get(timeout=30) is False  # a view in this process still references it
        del view
        cmd.put("free?")
        assert out.get(timeout=30) is True
        cmd.put("again")
        same_memory, index, without_storage = out.get(timeout=30)
        assert same_memory and index == 0
        assert without_storage  # this process maps the buffer already: only the handle crosses again
        cmd.put("stop")
        proc.join(timeout=30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()


def test_full_pool_raises_with_byte_counts():
    small = WorkerBufferPool(PoolConfig(max_bytes=3 * (4096 + HEADER_BYTES), wait_s=0.05))
    held = [small.allocate((1024,), torch.float32) for _ in range(3)]
    with pytest.raises(SharedMemoryExhaustedError, match=r"holds 12480 B of the 12480 B allowed, in 3 buffers, 3"):
        small.allocate((1024,), torch.float32)
    del held
    assert small.allocate((1024,), torch.float32).is_shared()  # freed buffers come back


def test_one_batch_larger_than_the_limit_is_refused(pool):
    with pytest.raises(
        SharedMemoryExhaustedError, match=r"needs 2097216 B of shared memory for one batch, more than the 1048576 B"
    ):
        pool.allocate((2 << 20,), torch.uint8)


def test_a_too_small_dev_shm_is_an_error_not_a_bus_error():
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    huge = WorkerBufferPool(PoolConfig(max_bytes=1 << 60, wait_s=0))
    with pytest.raises(SharedMemoryExhaustedError, match=r"/dev/shm has only \d+ B free of \d+ B; enlarge it") as err:
        huge.allocate((free + (64 << 20),), torch.uint8)
    assert isinstance(err.value, MemoryError) and isinstance(err.value, ZeroCopyError)
    assert str(type(err.value)(str(err.value))) == str(err.value)  # rebuilt from its message by DataLoader
    assert not huge.slots


def test_wrong_sized_free_buffers_are_dropped_to_make_room():
    p = WorkerBufferPool(PoolConfig(max_bytes=2 * (8192 + HEADER_BYTES), wait_s=0))
    a = p.allocate((2048,), torch.float32)
    first = p.slot_of(a)
    del a
    big = p.allocate((4096,), torch.float32)  # 16 KiB: only fits once the 8 KiB buffer is gone
    assert first.header.dropped and first.index not in p.slots
    assert big.numel() == 4096


def test_config_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", "12345")
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_WAIT_S", "0.5")
    assert PoolConfig.from_env() == PoolConfig(max_bytes=12345, wait_s=0.5)
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", "lots")
    with pytest.raises(ValueError, match="ZCOPY_DATA_WORKER_SHM_BYTES='lots' should be an integer"):
        PoolConfig.from_env()
    for bad in ("inf", "nan", "1.5", "0"):  # a byte count is a finite positive integer
        monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", bad)
        with pytest.raises(ValueError, match=f"ZCOPY_DATA_WORKER_SHM_BYTES='{bad}' should be an integer >= 1"):
            PoolConfig.from_env()
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", "12345")
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_WAIT_S", "inf")
    with pytest.raises(ValueError, match="ZCOPY_DATA_WORKER_SHM_WAIT_S='inf'"):
        PoolConfig.from_env()
    with pytest.raises(ValueError, match="max_bytes=0"):
        PoolConfig(max_bytes=0)


def test_a_full_dev_shm_waits_for_a_release_then_says_why(monkeypatch):
    p = WorkerBufferPool(PoolConfig(max_bytes=1 << 20, wait_s=0.05))
    first = p.allocate((1024,), torch.uint8)  # one buffer exists and is held
    monkeypatch.setattr(shared, "_shm_free", lambda: (1000, 2000))  # then /dev/shm fills up
    with pytest.raises(
        SharedMemoryExhaustedError, match=r"has only 1000 B free of 2000 B.*waited 0.05 s for one of the 1"
    ):
        p.allocate((1024,), torch.uint8)
    del first
    assert p.allocate((1024,), torch.uint8).is_shared()  # freed: reused without growing
    assert len(p.slots) == 1
