from __future__ import annotations

import gc
import itertools
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from zcopy_data import Field, Schema, SchemaError
from zcopy_data.memory.pinned import ALIGN, is_pool_memory
from zcopy_data.memory.policy import HostAllocation, main_process_allocation
from zcopy_data.transfer import PinnedBufferPool, PoolExhaustedError

SPECS = {"image": ((8, 3, 5, 5), torch.uint8), "label": ((8,), torch.int64), "w": ((8, 3), torch.float16)}


def _pool(slots: int = 3) -> PinnedBufferPool:
    return PinnedBufferPool(SPECS, slots=slots, pin=False)


def _span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def test_slots_are_exact_sized_distinct_and_do_not_overlap():
    pool = _pool(3)
    exact = 8 * 75 + 8 * 8 + 8 * 3 * 2
    assert pool.nbytes == 3 * exact
    assert pool.slot_bytes < exact + len(SPECS) * ALIGN
    assert pool.pinned_bytes == 0 and not pool.pinned  # no accelerator asked for
    slots = [pool.acquire() for _ in range(3)]
    spans, storages = [], set()
    for slot in slots:
        for name, (shape, dtype) in SPECS.items():
            t = slot[name]
            assert tuple(t.shape) == shape and t.dtype == dtype and t.is_contiguous()
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # a storage of its own
            assert t.data_ptr() % ALIGN == 0
            spans.append(_span(t))
            storages.add(t.untyped_storage().data_ptr())
    assert len(storages) == 9
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_pool_from_a_schema_needs_fixed_shapes():
    schema = Schema({"image": Field(torch.uint8, (3, 4, 4)), "label": Field(torch.int64)})
    pool = PinnedBufferPool(schema, batch_size=16, slots=2, pin=False)
    assert pool.specs == {"image": ((16, 3, 4, 4), torch.uint8), "label": ((16,), torch.int64)}
    with pytest.raises(SchemaError, match=r"field 'tokens'.*variable dimension"):
        PinnedBufferPool(Schema({"tokens": Field(torch.int32, (None,))}), batch_size=4, pin=False)
    with pytest.raises(ValueError, match="batch_size"):
        PinnedBufferPool(schema, pin=False)
    with pytest.raises(SchemaError, match="field 'x'"):
        PinnedBufferPool({"x": (3, torch.uint8)}, pin=False)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="slots"):
        PinnedBufferPool(SPECS, slots=0, pin=False)


def test_slots_are_reused_round_robin_once_released():
    pool = _pool(2)
    a = pool.acquire()
    a.release()
    b = pool.acquire()
    assert b.index != a.index  # the one released longest ago is reused first
    b.release()
    assert pool.acquire().index == a.index


def test_a_referenced_slot_is_never_reused():
    pool = _pool(2)
    slot = pool.acquire()
    kept = slot["image"][2:4]  # a view the consumer still holds
    kept.fill_(7)
    slot.release()
    other = pool.acquire()
    other.release()
    for _ in range(5):
        s = pool.acquire()
        assert s.index != slot.index
        s["image"].fill_(99)
        s.release()
    assert bool((kept == 7).all())
    del kept
    assert {pool.acquire().index, pool.acquire().index} == {0, 1}


@pytest.mark.parametrize("holder", ["tensor", "numpy", "leased"])
def test_exhaustion_is_an_error_that_says_what_to_do(holder):
    pool = _pool(2)
    held = []
    for _ in range(2):
        slot = pool.acquire()
        if holder == "tensor":
            held.append(slot["label"])
            slot.release()
        elif holder == "numpy":
            held.append(slot["w"].numpy())
            slot.release()
    with pytest.raises(PoolExhaustedError, match=r"all 2 slots .* drop references to old batches") as info:
        pool.acquire()
    assert isinstance(info.value, RuntimeError)


def test_acquire_waits_for_another_thread_to_drop_its_batch():
    pool = _pool(1)
    slot = pool.acquire()
    view = slot["image"]
    slot.release()

    def consumer() -> None:
        nonlocal view
        time.sleep(0.05)
        del view

    t = threading.Thread(target=consumer)
    t.start()
    again = pool.acquire(timeout=30)
    t.join()
    assert again.index == slot.index


def test_double_release_is_an_error():
    pool = _pool(1)
    slot = pool.acquire()
    slot.release()
    with pytest.raises(RuntimeError, match="released twice"):
        slot.release()


def test_producer_rewriting_as_fast_as_it_can_never_touches_a_held_batch():
    """Logic of the race test without a device: the consumer holds batches while the producer reuses slots."""
    pool = _pool(4)
    handed: list[tuple[int, torch.Tensor]] = []
    lock = threading.Lock()
    stop = threading.Event()
    corrupted = []

    def producer() -> None:
        k = 0
        while not stop.is_set() and k < 400:
            try:
                slot = pool.acquire(timeout=0.01)
            except PoolExhaustedError:
                continue
            slot["image"].fill_(k % 251)
            batch = slot["image"]
            slot.release()
            with lock:
                handed.append((k, batch))
            del batch
            k += 1
        stop.set()

    t = threading.Thread(target=producer)
    t.start()
    checked = 0
    while not (stop.is_set() and not handed):
        with lock:
            item = handed.pop(0) if handed else None
        if item is None:
            time.sleep(0.0005)
            continue
        k, batch = item
        time.sleep(0.0002)  # a slow consumer: the producer is free to rewrite every other slot meanwhile
        if not bool((batch == k % 251).all()):
            corrupted.append(k)
        del batch, item
        checked += 1
    t.join()
    assert checked == 400 and corrupted == []


def test_pool_memory_is_recognised():
    pool = _pool(1)
    slot = pool.acquire()
    assert is_pool_memory(slot["image"]) and is_pool_memory(slot["label"][3:])
    assert not is_pool_memory(torch.zeros(4))
    assert not is_pool_memory(torch.from_numpy(np.zeros(4)))


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only build")
def test_without_an_accelerator_gathers_use_plain_memory():
    allocation = main_process_allocation(per_shape=4)
    assert isinstance(allocation, HostAllocation)
    buf = allocation((4, 3), torch.uint8)
    assert not buf.is_pinned()
    assert buf.shape == (4, 3) and not is_pool_memory(buf)


def test_a_buffer_outlives_its_pool_while_referenced():
    pool = _pool(1)
    slot = pool.acquire()
    x = slot["label"]
    x.copy_(torch.arange(8))
    del slot, pool
    import gc

    gc.collect()
    assert is_pool_memory(x) and torch.equal(x, torch.arange(8))
    x.add_(1)  # still mapped and writable
    assert torch.equal(x, torch.arange(1, 9))


def test_transfer_exports_are_sorted_and_import():
    import zcopy_data.transfer as transfer

    assert transfer.__all__ == sorted(transfer.__all__)
    for name in transfer.__all__:
        assert getattr(transfer, name) is not None


def test_a_pool_and_its_slots_form_no_reference_cycle() -> None:
    # Cyclic garbage holding device events would be destroyed by the first garbage collection of a
    # DataLoader worker forked meanwhile: a device call in a forked child, which aborts it.
    gc.disable()
    try:
        pool = PinnedBufferPool({"x": ((4, 3), torch.float32)}, slots=2, pin=False)
        slot = pool.acquire()
        slot.release()
        gone = weakref.ref(pool)
        del pool
        assert gone() is None  # freed by reference counting alone
    finally:
        gc.enable()
    with pytest.raises(RuntimeError, match="slot 0 outlived its PinnedBufferPool"):
        _ = slot.pool
    assert slot["x"].shape == (4, 3)  # its memory lives as long as its tensors
