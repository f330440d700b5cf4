"""Copy-on-write file mappings: reads are zero-copy, writes stay private to the process.

A tensor over a read-only mapping crashes the process (SIGSEGV) on the first in-place op. Files
are therefore mapped ``MAP_PRIVATE`` and writable: a write touches a private copy of that page
only, never the file, and is visible to later reads *in the same process* through any view of
the same mapping. One mapping per file per process, cached.
"""

from __future__ import annotations

import mmap
import os
import threading
from typing import Any

import numpy as np

__all__ = ["file_array", "file_region", "remap_private"]

_lock = threading.Lock()
_maps: dict[tuple[str, int, int, int], mmap.mmap] = {}


def _private_map(path: str) -> mmap.mmap:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        mm = _maps.get(key)
        if mm is None:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            _maps[key] = mm
        return mm


def file_array(
    path: str | os.PathLike[str],
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...] | None = None,
) -> np.ndarray[Any, Any]:
    """A writable, copy-on-write array over ``path`` starting at byte ``offset``."""
    mm = _private_map(os.fspath(path))
    return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, strides=strides)


def file_region(arr: np.ndarray[Any, Any]) -> tuple[str, int] | None:
    """``(path, byte offset)`` of the first element of ``arr`` when it views a ``np.memmap``."""
    mm = getattr(arr, "_mmap", None)
    filename = getattr(arr, "filename", None)
    if not isinstance(mm, mmap.mmap) or filename is None or arr.size == 0:
        return None
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    # np.memmap maps from the allocation-granularity boundary at or below its offset.
    offset: int = getattr(arr, "offset", 0)
    map_start = offset - offset % mmap.ALLOCATIONGRANULARITY
    return filename, map_start + (arr.ctypes.data - start)


def remap_private(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """The same bytes of a read-only ``np.memmap`` view, mapped copy-on-write; else ``None``."""
    region = file_region(arr)
    if region is None:
        return None
    path, offset = region
    return file_array(path, offset, arr.shape, arr.dtype, arr.strides)
