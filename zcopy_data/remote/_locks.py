"""Cross-process file locks for one shard of a cache folder (``fcntl.flock``, released when a process dies).

Each shard has two lock files: ``.<name>.download.lock`` (exclusive while one process downloads
it; others wait, then find it published) and ``.<name>.use.lock`` (shared while a process needs
the shard; eviction takes it exclusively without waiting, and skips a shard in use).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["download_lock", "pin", "try_evict_lock", "unpin"]


def _lock_path(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}.lock")


@contextmanager
def download_lock(final: Path) -> Iterator[None]:
    """Hold the shard's download lock (waits for another process's download to end)."""
    fd = os.open(_lock_path(final, "download"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def pin(final: Path) -> int:
    """A descriptor holding the shard's use lock shared: no process evicts it while it is open."""
    fd = os.open(_lock_path(final, "use"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def unpin(fd: int) -> None:
    os.close(fd)


@contextmanager
def try_evict_lock(final: Path) -> Iterator[bool]:
    """Yield whether the shard is in use by nobody (its use lock taken exclusively, without waiting)."""
    fd = os.open(_lock_path(final, "use"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
