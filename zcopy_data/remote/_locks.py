"""Cross-process file locks for one shard of a cache folder (``fcntl.flock``, released when a process dies).

Each shard has two lock files: ``.<name>.download.lock`` (exclusive while one process downloads
it; others wait, then find it published) and ``.<name>.use.lock`` (shared while a process needs
the shard; eviction takes it exclusively without waiting, and skips a shard in use).

The folder's room is shared the same way: ``.room.lock`` is held while one process weighs the
room and reserves its download's bytes in a ``.<name>.<owner>.reserve`` file, locked for as long
as the download runs, so every process counts the others' downloads under way; a reservation
whose lock is free was left by a killed process and is removed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["download_lock", "pin", "reservations", "reserve", "room_lock", "try_evict_lock", "unpin"]


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


@contextmanager
def room_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the folder's room lock: one process at a time weighs the room and reserves from it."""
    fd = os.open(cache_dir / ".room.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def reserve(final: Path, owner: str, nbytes: int) -> tuple[int, Path]:
    """Reserve ``nbytes`` for a download of ``final`` (call under :func:`room_lock`).

    Returns the descriptor holding the reservation (close it, then unlink the path, when the
    download ends) and the reservation's path.
    """
    path = final.with_name(f".{final.name}.{owner}.reserve")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(nbytes).encode())
    return fd, path


def reservations(cache_dir: Path) -> int:
    """Bytes reserved by downloads under way in any process (call under :func:`room_lock`).

    A reservation file whose lock nobody holds was left by a killed process: removed, not counted.
    """
    total = 0
    for path in cache_dir.glob(".*.reserve"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its download just ended
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                total += int(os.read(fd, 32) or b"0")  # held: a download under way
                continue
            path.unlink(missing_ok=True)  # free: its owner is gone (or ended, and unlinks it next)
        finally:
            os.close(fd)
    return total
