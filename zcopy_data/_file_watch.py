"""``FileWatch``: which of a set of files changed since last asked, in one system call (Linux inotify).

A sharded dataset must not read a shard rewritten after it was built. Comparing every open shard's
``stat`` with its identity before each batch costs one system call per shard: 100 open shards
cost more than the batch. An inotify watch per open shard says instead which ones saw a write,
a metadata change, a rename or an unlink (a file replaced by ``os.replace`` loses a link: an
attribute change of the inode mapped), so a batch stats only those. Where inotify is missing (not
Linux, or its per-user limits reached), a file is reported as unwatched and its caller stats it
every batch as before. A forked child opens its own instance (the parent's would share events):
the first question it asks is answered with "check everything".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
import weakref
from typing import Any

__all__ = ["FileWatch"]

# inotify(7) event bits: a write, a metadata change (mtime, link count), a written file closed,
# the inode deleted or moved; and the kernel's own notices
_MASK = 0x002 | 0x004 | 0x008 | 0x400 | 0x800
_IN_IGNORED = 0x8000  # the watch is gone (its file deleted, or removed by us)
_IN_Q_OVERFLOW = 0x4000  # events were lost
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _ = lib.inotify_init1, lib.inotify_add_watch, lib.inotify_rm_watch
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()


def _close_if_ours(fd: int, pid: int) -> None:
    if os.getpid() == pid:  # in a forked child the number may name another file by now
        try:
            os.close(fd)
        except OSError:
            pass


class FileWatch:
    """Watches files by key; :meth:`changed` says which keys saw a change since it was last called.

    Keys whose file cannot be watched are in :attr:`unwatched`: the caller checks them itself.
    Not thread-safe: callers hold their own lock.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._fd = -1
        self._paths: dict[int, str] = {}
        self._wd_key: dict[int, int] = {}
        self._key_wd: dict[int, int] = {}
        self.unwatched: set[int] = set()
        self._lost = False
        self._finalizer: weakref.finalize[Any, FileWatch] | None = None

    @property
    def active(self) -> bool:
        """Whether changes are watched in this process (else every key is :attr:`unwatched`)."""
        return self._fd >= 0 and self._pid == os.getpid()

    def add(self, key: int, path: str) -> None:
        self._paths[key] = path
        if self._ready():
            self._watch(key, path)
        else:
            self.unwatched.add(key)

    def remove(self, key: int) -> None:
        self._paths.pop(key, None)
        self.unwatched.discard(key)
        wd = self._key_wd.pop(key, None)
        if wd is not None:
            self._wd_key.pop(wd, None)
            if self.active and _LIBC is not None:
                _LIBC.inotify_rm_watch(self._fd, wd)

    def changed(self) -> set[int] | None:
        """Keys whose file changed since the last call; ``None`` when that cannot be told (events
        lost, or the first call in a forked child): then every key is to be checked."""
        if not self._ready():
            return None
        found: set[int] = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                off += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self._lost = True
                    continue
                key = self._wd_key.get(wd)
                if key is None:
                    continue
                found.add(key)
                if mask & _IN_IGNORED:  # no more events will come for it: checked every time from now
                    self._wd_key.pop(wd, None)
                    self._key_wd.pop(key, None)
                    self.unwatched.add(key)
        if self._lost:
            self._lost = False
            return None
        return found

    # -- internals ----------------------------------------------------------------------------
    def _ready(self) -> bool:
        """An inotify instance of this process, opened (again, after a fork) on first use."""
        if self._pid == os.getpid():
            return self._fd >= 0
        inherited = self._pid != -1
        self._pid = os.getpid()
        self._fd = -1  # a parent's descriptor: left alone (its finalizer closes only in the parent)
        self._wd_key.clear()
        self._key_wd.clear()
        self.unwatched = set(self._paths)
        if _LIBC is None:
            return False
        fd = int(_LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            return False  # EMFILE (max_user_instances) and the like: callers stat instead
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_if_ours, fd, self._pid)
        for key, path in list(self._paths.items()):
            self._watch(key, path)
        self._lost = inherited  # what changed between the fork and these watches is unknown
        return True

    def _watch(self, key: int, path: str) -> None:
        assert _LIBC is not None
        wd = int(_LIBC.inotify_add_watch(self._fd, os.fsencode(path), _MASK))
        if wd < 0:
            self.unwatched.add(key)  # ENOSPC (max_user_watches), a path gone, ...: stat it instead
            return
        if self._wd_key.get(wd, key) != key:
            self.unwatched.add(key)  # the same file under two keys: one watch; this one stats instead
            return
        self.unwatched.discard(key)
        self._wd_key[wd] = key
        self._key_wd[key] = wd
