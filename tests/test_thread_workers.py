"""ZeroCopyDataLoader's gather threads: the same batches as DataLoader, errors in their turn, no leaks."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from zcopy_data import BlockShuffleSampler, NumpyDataset, SampleIndexError, ZeroCopyDataLoader, zero_copy_collate
from zcopy_data.transfer import PinnedBufferPool

pytestmark = pytest.mark.reliability

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dataset(n: int) -> NumpyDataset:
    rng = np.random.default_rng(n)
    return NumpyDataset({"x": rng.integers(0, 256, (n, 2, 3), dtype=np.uint8), "y": np.arange(n, dtype=np.int64)})


@SETTINGS
@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 64),
    drop_last=st.booleans(),
    order=st.sampled_from(["seq", "shuffle", "block"]),
    workers=st.sampled_from([0, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_same_batches_as_dataloader_for_any_configuration(n, batch_size, drop_last, order, workers, seed):
    ds = _dataset(n)

    def epochs(cls: type[DataLoader[Any]], **kw: Any) -> tuple[list[np.ndarray[Any, Any]], torch.Tensor]:
        torch.manual_seed(seed)
        if order == "block":
            kw["batch_sampler"] = BlockShuffleSampler(n, batch_size, seed=seed % 1000, drop_last=drop_last)
        else:
            kw.update(batch_size=batch_size, shuffle=order == "shuffle", drop_last=drop_last)
        loader = cls(ds, collate_fn=zero_copy_collate, **kw)
        out = []
        for epoch in range(2):
            if order == "block":
                kw["batch_sampler"].set_epoch(epoch)
            out += [np.concatenate([b["y"].numpy(), b["x"].numpy().reshape(-1)]) for b in loader]
        return out, torch.get_rng_state()

    theirs, rng_theirs = epochs(DataLoader)
    # (a new iterator every epoch, as DataLoader without workers: each draws its base seed)
    ours, rng_ours = epochs(ZeroCopyDataLoader, num_workers=workers)
    assert len(ours) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert torch.equal(rng_ours, rng_theirs)


@SETTINGS
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 190), st.integers(1, 10), st.booleans()),  # start, length, scattered
        min_size=1,
        max_size=30,
    ),
    bad_at=st.one_of(st.none(), st.integers(0, 29)),
    workers=st.sampled_from([1, 2]),
)
def test_mixed_views_and_gathers_arrive_in_order_and_an_error_in_its_turn(runs, bad_at, workers):
    ds = _dataset(200)
    source = ds.columns()["x"]
    batches = []
    for start, length, scattered in runs:
        idx = np.arange(start, start + length, dtype=np.int64)
        batches.append(idx[::-1].copy() if scattered and length > 1 else idx)
    if bad_at is not None and bad_at < len(batches):
        batches[bad_at] = np.array([0, 200], dtype=np.int64)  # 200 is out of range
    else:
        bad_at = None
    it = iter(ZeroCopyDataLoader(ds, batch_sampler=batches, num_workers=workers))
    held = []
    for k, idx in enumerate(batches):
        if k == bad_at:
            with pytest.raises(SampleIndexError, match="index 200 .*out of range for a dataset of 200"):
                next(it)
            return
        batch = next(it)
        held.append((idx, batch))
        assert batch["y"].tolist() == idx.tolist()
    for idx, batch in held:  # nothing reused under a held batch
        assert np.array_equal(batch["x"].numpy(), source[idx])
    with pytest.raises(StopIteration):
        next(it)


def test_worker_threads_never_outlive_their_loader():
    before = set(threading.enumerate())
    for persistent in (False, True):
        loader = ZeroCopyDataLoader(
            _dataset(500), batch_size=16, shuffle=True, num_workers=2, persistent_workers=persistent
        )
        for _ in range(2):
            it = iter(loader)
            next(it)
            next(it)  # leave the epoch early, gathers in flight
        del it, loader
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.name.startswith("zcopy_data-worker")]
        if not extra:
            break
        time.sleep(0.02)
    assert extra == []


def test_no_reference_cycle_keeps_a_pinned_pool_alive():
    # Cyclic garbage that holds device events is destroyed by the first garbage collection of a
    # DataLoader worker forked meanwhile: a device call in a forked child, which aborts it.
    gc.disable()
    try:
        pool = PinnedBufferPool({"x": ((4, 3), torch.float32)}, slots=3, pin=False)
        for _ in range(3):
            pool.acquire().release()
        gone = weakref.ref(pool)
        del pool
        assert gone() is None
    finally:
        gc.enable()
