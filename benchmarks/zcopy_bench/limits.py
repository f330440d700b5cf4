"""This machine's copy/gather limit for the benchmark's data and index order, measured in the run.

Two loops over the same batches of indices the contenders read, into reused output buffers (so
no allocation or page fault is timed), indices prepared beforehand:

* ``gather_1t``: ``np.take(column, idx, axis=0, mode='clip', out=buf)``, one thread (NumPy's
  gather is single-threaded; ``mode='clip'`` avoids the hidden temporary of ``mode='raise'``);
* ``index_select_all``: ``torch.index_select(column, 0, idx, out=buf)`` with all CPU threads.

A 0-worker loader on one core cannot beat ``gather_1t`` for shuffled indices, except by not
copying at all (contiguous views).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from zcopy_bench.data import DataSource

__all__ = ["LIMITS", "Loop", "limit_loops", "measure_limits", "timed_limit_pass"]

LIMITS = {
    "gather_1t": "np.take(mode='clip', out=reused), 1 thread",
    "index_select_all": "torch.index_select(out=reused), all threads",
}


def _epoch_indices(batches: Iterable[list[int]]) -> list[np.ndarray[Any, Any]]:
    set_epoch = getattr(batches, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(0)
    return [np.asarray(b, dtype=np.int64) for b in batches]


Loop = tuple[Callable[[np.ndarray[Any, Any]], None], int]
"""One limit: the step that copies one batch of indices, and the torch threads it runs on."""


def limit_loops(
    src: DataSource, batches: Iterable[list[int]], batch_size: int
) -> tuple[dict[str, Loop], list[np.ndarray[Any, Any]]]:
    """Every limit's step over prepared buffers, and one epoch of prepared indices (see the module)."""
    arrays = {k: np.load(p, mmap_mode="c").view(np.ndarray) for k, p in src.paths.items()}
    tensors = {k: torch.from_numpy(a) for k, a in arrays.items()}
    np_out = {k: np.empty((batch_size, *a.shape[1:]), a.dtype) for k, a in arrays.items()}
    t_out = {k: torch.from_numpy(np.empty_like(b)) for k, b in np_out.items()}
    for buf in (*np_out.values(), *(t.numpy() for t in t_out.values())):
        buf.fill(0)  # fault the pages in once, outside the timed loops
    epoch = _epoch_indices(batches)
    t_epoch = [torch.from_numpy(idx) for idx in epoch]
    t_of = {id(i): t for i, t in zip(epoch, t_epoch, strict=True)}

    def gather_1t(idx: np.ndarray[Any, Any]) -> None:
        k = idx.size
        for name, a in arrays.items():
            np.take(a, idx, axis=0, mode="clip", out=np_out[name][:k])

    def index_select_all(idx: np.ndarray[Any, Any]) -> None:
        k = idx.size
        ti = t_of[id(idx)]
        for name, t in tensors.items():
            torch.index_select(t, 0, ti, out=t_out[name][:k])

    return {"gather_1t": (gather_1t, 1), "index_select_all": (index_select_all, os.cpu_count() or 1)}, epoch


def timed_limit_pass(loop: Loop, epoch: list[np.ndarray[Any, Any]], cap_s: float) -> tuple[int, float]:
    """Samples and seconds of one pass of ``loop`` over ``epoch`` (stopped after ``cap_s`` seconds)."""
    step, threads = loop
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 0
        t0 = time.perf_counter()
        for idx in epoch:
            step(idx)
            n += idx.size
            if time.perf_counter() - t0 > cap_s:
                break
        return n, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def measure_limits(
    src: DataSource, batches: Iterable[list[int]], batch_size: int, *, passes: int, cap_s: float
) -> dict[str, list[float]]:
    """Samples/s of each limit loop, one value per pass (after one warm-up pass each)."""
    loops, epoch = limit_loops(src, batches, batch_size)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for p in range(passes + 1):
        for name, loop in loops.items():
            n, seconds = timed_limit_pass(loop, epoch, cap_s)
            if p:  # pass 0 warms the page cache, the mapping and the buffers up
                rates[name].append(n / seconds)
    return rates
