"""``RemoteShards``: the shards under an object-storage URL, fetched once into a bounded local cache.

A shard is downloaded to a temp name in the cache folder, verified (size, ETag MD5, the index's
SHA-256), then renamed into place: a file with the final name is always a whole, verified shard,
whatever process was killed when. Its name carries the listing's identity (ETag, size), so a
shard replaced remotely is a different cache file, never an old one served as new. Processes on
one node share the folder: a lock per shard means one download, the others wait and reuse it.
Room is made by evicting the least recently used shards that no process has pinned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zcopy_data.errors import CacheFullError
from zcopy_data.remote._download import RetryPolicy, download
from zcopy_data.remote._fs import open_filesystem
from zcopy_data.remote._listing import RemoteShard, list_shards
from zcopy_data.remote._locks import download_lock, pin, reservations, reserve, room_lock, try_evict_lock, unpin

__all__ = ["RemoteShards", "default_remote_cache_dir"]


def default_remote_cache_dir(url: str) -> Path:
    """``$XDG_CACHE_HOME/zcopy_data/remote/<hash of url>`` (``~/.cache`` by default)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "zcopy_data" / "remote" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteShards:
    """The shards under ``url`` (``s3://bucket/prefix/``), listed now, fetched on demand into a local cache.

    Args:
        url: the prefix holding a ``zcopy_index.json`` or ``*.arrow`` shards.
        cache_dir: the local cache folder (default :func:`default_remote_cache_dir`), shared by
            every process that names it.
        cache_bytes: the most bytes of shards the folder holds; least recently used shards not
            pinned are evicted to stay under it (default: no budget, only the disk's free space).
        storage_options: passed to fsspec (``{"endpoint_url": ...}``, credentials, ...).
        max_downloads: downloads at once in :meth:`prefetch`.
        room_wait: seconds the shard :meth:`prefetch` needs first waits for room that other
            processes' pinned shards hold (they release them as they read on), before a
            ``CacheFullError``.
        retry: how broken downloads are retried.

    Raises:
        FileNotFoundError: no bucket, prefix or shard there.
        RemoteShardError: the prefix cannot be listed.

    .. note:: Listing reads object metadata only; no shard byte moves until :meth:`fetch`.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
        max_downloads: int = 4,
        retry: RetryPolicy | None = None,
        room_wait: float = 120.0,
    ) -> None:
        if max_downloads < 1:
            raise ValueError(f"{max_downloads=} should be >= 1")
        if cache_bytes is not None and cache_bytes < 1:
            raise ValueError(f"{cache_bytes=} should be >= 1 (or None for no budget)")
        self.url = url
        self._storage_options = storage_options
        self._fs, root = open_filesystem(url, storage_options)
        self.shards: list[RemoteShard] = list_shards(self._fs, root, url)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_remote_cache_dir(url)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self.max_downloads = max_downloads
        self.room_wait = room_wait
        self.retry = retry or RetryPolicy()
        self.downloaded = 0  # shards this object downloaded (the others were found in the cache)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pins: dict[int, int] = {}  # shard -> descriptor holding its use lock shared
        self._pool: ThreadPoolExecutor | None = None
        self._room = threading.Condition()  # one room check at a time in this process (the room lock across them)
        self._reserved: dict[int, int] = {}  # shard -> bytes of a download of ours under way
        self._wanted: set[int] = set()  # the window of the latest prefetch
        self._ahead: dict[int, Future[str]] = {}  # its downloads

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> RemoteShard:
        return self.shards[i]

    def local_path(self, i: int) -> Path:
        """Where shard ``i`` lives once fetched: its name, tagged with the identity it was listed with."""
        s = self.shards[i]
        tag = hashlib.sha256(f"{s.path}|{s.size}|{s.etag}|{s.sha256}".encode()).hexdigest()[:12]
        stem, dot, suffix = s.name.rpartition(".")
        return self.cache_dir / (f"{stem}.{tag}.{suffix}" if dot else f"{s.name}.{tag}")

    def is_cached(self, i: int) -> bool:
        return self.local_path(i).is_file()

    # -- fetching ---------------------------------------------------------------------------
    def fetch(self, i: int) -> str:
        """The local path of shard ``i``, downloaded and verified first if the cache lacks it.

        The shard stays pinned (never evicted, by any process) until :meth:`release` or the next
        :meth:`prefetch` leaves it out of its window.

        Raises:
            FileChangedError: the object changed since it was listed.
            RemoteShardError: the download failed after every retry.
            CacheFullError: no room for it, even after evicting unpinned shards.
        """
        return self._fetch(i, 0.0)

    def _fetch(self, i: int, patience: float) -> str:
        """:meth:`fetch`, waiting up to ``patience`` seconds for other processes' pins to free room."""
        self._in_this_process()
        self._pin(i)
        final = self.local_path(i)
        if self._hit(i, final):
            return str(final)
        with download_lock(final):
            if self._hit(i, final):
                return str(final)  # another process (or thread) downloaded it while we waited
            self._remove_partials(final)  # left by a killed download: we hold its lock, nobody writes them
            owner = f"{os.getpid()}-{threading.get_ident()}"
            with self._room:
                held, reservation = self._wait_for_room(i, patience, owner)
                self._reserved[i] = self.shards[i].size
            tmp = final.with_name(f".{final.name}.{owner}.partial")
            try:
                download(self._fs, self.shards[i], str(tmp), self.retry)
                os.replace(tmp, final)  # atomic: the final name only ever holds a verified shard
            finally:
                os.close(held)  # the published file (or nothing) now holds the room it reserved
                reservation.unlink(missing_ok=True)
                with self._room:
                    self._reserved.pop(i, None)
                    self._room.notify_all()
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            with self._lock:
                self.downloaded += 1
        return str(final)

    def prefetch(self, order: Sequence[int], *, pin_ahead: bool = True) -> list[Future[str]]:
        """Start downloading the leading shards of ``order`` (at most ``max_downloads`` at once).

        The window is as many leading shards as fit in ``cache_bytes`` (all of ``order`` without a
        budget, at least one). Window shards are pinned; shards pinned before and left out of this
        window are released, so they are the first evicted when room is needed. Returns one future
        per window shard (its local path), in order.

        ``pin_ahead=False`` (streaming): only the first shard is pinned; the others are
        downloads ahead, evictable once written, so that several processes reading on one
        cache never hold its room with shards they do not read yet.
        """
        self._in_this_process()
        window = self._window(order)
        keep = set(window) if pin_ahead else set(window[:1])
        with self._lock:
            self._wanted = keep
            stale = [self._ahead.pop(s) for s in [s for s in self._ahead if s not in keep]]
            for s in [s for s in self._pins if s not in keep]:
                unpin(self._pins.pop(s))
        for future in stale:
            future.cancel()  # queued for an older window: never started (its callback takes the lock)
        for s in keep:
            self._pin(s)
        pool = self._executor()
        futures = []
        for k, s in enumerate(window):
            # the first is needed now: it waits while other processes' pins hold the room; the
            # others are downloads ahead, given up (an error in their future) when there is none
            future = pool.submit(self._fetch, s, self.room_wait if k == 0 else 0.0)
            future.add_done_callback(functools.partial(self._unpin_unwanted, s))
            with self._lock:
                self._ahead[s] = future
            futures.append(future)
        return futures

    def _unpin_unwanted(self, s: int, _future: Future[str] | None = None) -> None:
        """A download of an older window that finished after the window moved on: evictable at once."""
        with self._lock:
            fd = self._pins.pop(s, None) if s not in self._wanted else None
        if fd is not None:
            unpin(fd)
            with self._room:
                self._room.notify_all()

    def release(self, i: int | None = None) -> None:
        """Unpin shard ``i`` (every shard when ``None``): it may be evicted to make room."""
        self._in_this_process()
        with self._lock:
            for s in list(self._pins) if i is None else [i]:
                fd = self._pins.pop(s, None)
                if fd is not None:
                    unpin(fd)

    def close(self) -> None:
        """Wait for running downloads, then release every pin."""
        self._in_this_process()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.release()

    def __enter__(self) -> RemoteShards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pickling: a worker process keeps the listing, and opens its own filesystem, locks and pins
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_fs", "_lock", "_pins", "_pool", "_room", "_reserved", "_wanted", "_ahead"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fs, _ = open_filesystem(self.url, self._storage_options)
        self._own_state()

    def _own_state(self) -> None:
        """Locks, pins and download threads of this process (a forked child inherits dead threads)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pins = {}  # a forked child leaves the parent's pin descriptors alone: unlocking one unpins both
        self._pool = None
        self._room = threading.Condition()
        self._reserved = {}
        self._wanted = set()
        self._ahead = {}

    def _in_this_process(self) -> None:
        if self._pid != os.getpid():  # a forked child: the filesystem's event loop is not fork-safe either
            self._fs, _ = open_filesystem(self.url, self._storage_options)
            self._own_state()

    def __repr__(self) -> str:
        return f"RemoteShards({self.url!r}, {len(self)} shards, cache_dir={str(self.cache_dir)!r})"

    # -- internals ---------------------------------------------------------------------------
    def _hit(self, i: int, final: Path) -> bool:
        try:
            st = final.stat()
        except FileNotFoundError:
            return False
        if st.st_size != self.shards[i].size:
            return False  # cannot be ours: a published file is verified; left for eviction
        with contextlib.suppress(OSError):
            # least recently used first: a hit is a use, marked on the access time only -- the
            # modification time is part of the identity a process mapping the file checks
            os.utime(final, ns=(time.time_ns(), st.st_mtime_ns))
        return True

    def _pin(self, i: int) -> None:
        with self._lock:
            if i not in self._pins:
                self._pins[i] = pin(self.local_path(i))

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_downloads, thread_name_prefix="zcopy-download")
            return self._pool

    def _window(self, order: Sequence[int]) -> list[int]:
        if self.cache_bytes is None:
            return list(order)
        window: list[int] = []
        total = 0
        for s in order:
            total += self.shards[s].size
            if window and total > self.cache_bytes:
                break
            window.append(s)
        return window

    def _remove_partials(self, final: Path) -> None:
        for p in self.cache_dir.glob(f".{final.name}.*.partial"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _published(self) -> list[tuple[float, int, Path]]:
        """The shard files in the folder: ``(last use (access time), bytes, path)``, least recently used first."""
        found = []
        for p in self.cache_dir.iterdir():
            if p.name.startswith("."):
                continue  # lock files and partial downloads
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                found.append((st.st_atime, st.st_size, p))
        return sorted(found)

    def _wait_for_room(self, i: int, patience: float, owner: str) -> tuple[int, Path]:
        """:meth:`_make_room`, then reserve shard ``i``'s bytes for ``owner``'s download, all under the
        folder's room lock; waiting while downloads of ours under way, or (up to ``patience``
        seconds) other processes' pins and downloads, hold the room (call under ``_room``).

        Returns the reservation (:func:`reserve`).
        """
        deadline = time.monotonic() + patience
        while True:
            try:
                with room_lock(self.cache_dir):
                    self._make_room(i)
                    return reserve(self.local_path(i), owner, self.shards[i].size)
            except CacheFullError:
                if not self._reserved and (time.monotonic() > deadline or self._ours_hold_it(i)):
                    raise  # nothing will free room: our own pinned shards hold it, or waiting was in vain
            self._room.wait(timeout=0.1)

    def _ours_hold_it(self, i: int) -> bool:
        """Whether this process's own downloaded, pinned shards leave no room for shard ``i``."""
        if self.cache_bytes is None:
            return False
        with self._lock:
            pinned = [s for s in self._pins if s != i]
        held = sum(self.shards[s].size for s in pinned if self.local_path(s).is_file())
        return held + self.shards[i].size > self.cache_bytes

    def _make_room(self, i: int) -> None:
        """Evict unpinned shards until shard ``i`` fits the budget and the disk; else CacheFullError.

        Call under the folder's room lock: the files and reservations it counts stay as counted.
        """
        shard = self.shards[i]
        need = shard.size
        if self.cache_bytes is not None and need > self.cache_bytes:
            raise CacheFullError(
                f"{shard.url}: the shard is {need} bytes, more than cache_bytes={self.cache_bytes}; "
                f"set cache_bytes to at least {need}"
            )
        files = self._published()
        pending = reservations(self.cache_dir)  # downloads under way, in every process, will take this much more
        used = sum(size for _, size, _ in files) + pending
        free = shutil.disk_usage(self.cache_dir).free - pending
        for _, size, path in files:
            over_budget = self.cache_bytes is not None and used + need > self.cache_bytes
            if not over_budget and free >= need:
                break
            with try_evict_lock(path) as unused:
                if unused:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # a process still mapping it keeps its pages: unlinking is safe
                    used -= size
                    free += size
        if self.cache_bytes is not None and used + need > self.cache_bytes:
            held = f"held by pinned shards{f' and {pending} by downloads under way' if pending else ''}"
            raise CacheFullError(
                f"{shard.url}: needs {need} bytes in the cache, but {used} of cache_bytes={self.cache_bytes} are "
                f"{held}; raise cache_bytes to at least {used + need}, or prefetch a smaller window"
            )
        if free < need:
            raise CacheFullError(
                f"{shard.url}: needs {need} bytes in {str(self.cache_dir)!r}, the disk has {free} free after "
                "evicting every unpinned shard; free space there, or point cache_dir at a larger disk"
            )
