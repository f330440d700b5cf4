"""Shards written by worker processes, each shard whole by one worker, the bar fed from a shared counter.

A shard's bytes depend only on the rows it holds, so which worker writes it (and when) changes
nothing in the output. Workers start by ``fork`` where the platform has it (the source is
inherited, not pickled), else ``spawn`` (the source must pickle).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from zcopy_data.writer._shards import ShardEntry

__all__ = ["ShardJob", "write_parallel"]


class ShardJob(Protocol):
    """Writes shard ``k`` whole and returns its index entry."""

    def __call__(self, k: int, on_rows: Callable[[int], None]) -> ShardEntry: ...


_job: ShardJob | None = None
_counter: Any = None


def _init(job: ShardJob, counter: Any) -> None:
    global _job, _counter
    _job, _counter = job, counter


def _add(n: int) -> None:
    with _counter.get_lock():
        _counter.value += n


def _run(k: int) -> ShardEntry:
    assert _job is not None  # set by the pool's initializer
    return _job(k, _add)


def write_parallel(
    job: ShardJob, todo: Sequence[int], workers: int, start_method: str | None, update: Callable[[int], None]
) -> dict[int, ShardEntry]:
    """Run ``job`` for every shard in ``todo`` on ``workers`` processes; the first error is raised here."""
    method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    counter = ctx.Value("q", 0)
    seen = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(job, counter)) as pool:
        futures: dict[Future[ShardEntry], int] = {pool.submit(_run, k): k for k in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                now = counter.value
                update(now - seen)
                seen = now
                for f in done:
                    f.result()  # the worker's error, as raised there
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    update(counter.value - seen)
    return {k: f.result() for f, k in futures.items()}
