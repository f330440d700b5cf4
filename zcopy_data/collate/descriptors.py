"""Views of memory-mapped files cross from a worker to the main process as descriptors.

A tensor over a memory-mapped file is not in shared memory, so pickling it in a ``DataLoader``
worker would copy it into shared memory (and a tensor wrapping the whole file would copy the
whole file). Instead, a worker registers the file mappings its columns live in; a tensor whose
bytes lie inside one crosses as ``(path, file identity, byte offset, shape, strides, dtype)``
and the main process maps the file itself, copy-on-write, one mapping per file (cached), and
builds the same tensor over it: zero copies.

.. note:: The main process sees the file's bytes. Writes a worker made to its own private
   (copy-on-write) pages of the file are not carried over: they never reach the file.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zcopy_data import _mapping

__all__ = ["FileDescriptor", "FileRange", "describe_file_view", "register_file_array", "register_file_range"]

FileKey = tuple[int, int, int]  # st_ino, st_size, st_mtime_ns: the file the worker mapped


@dataclass(frozen=True)
class FileRange:
    """Addresses ``[start, stop)`` of this process that map ``path`` from byte ``file_offset``."""

    start: int
    stop: int
    path: str
    file_offset: int
    key: FileKey
    owner: Any  # keeps the mapping (and so the addresses) alive


@dataclass(frozen=True)
class FileDescriptor:
    """What crosses instead of a file view's bytes."""

    path: str
    key: FileKey
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


_lock = threading.Lock()
_ranges: list[FileRange] = []
_by_array: dict[int, tuple[Any, FileRange | None]] = {}  # id(array) -> (array, its range)


def _file_key(path: str) -> FileKey:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def register_file_range(start: int, nbytes: int, path: str, file_offset: int, owner: Any) -> FileRange:
    """Declare that ``nbytes`` at address ``start`` map ``path`` from ``file_offset`` (read-only use).

    Datasets whose views come from their own file mappings (not ``np.memmap``) call this once
    per mapping, so their views cross from workers as descriptors too. ``owner`` must keep the
    mapping alive; it is held for the life of the process.
    """
    rng = FileRange(start, start + nbytes, os.path.realpath(path), file_offset, _file_key(path), owner)
    with _lock:
        for r in _ranges:
            if r.start == rng.start and r.stop == rng.stop and r.path == rng.path:
                return r
        _ranges.append(rng)
    return rng


def _mapping_of(arr: np.ndarray[Any, Any]) -> tuple[str, mmap.mmap, int] | None:
    """``(path, mmap, file offset of the mmap's first byte)`` when ``arr`` views a file mapping."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            mm = getattr(base, "_mmap", None)
            if base.filename is None or not isinstance(mm, mmap.mmap):
                return None
            return base.filename, mm, base.offset - base.offset % mmap.ALLOCATIONGRANULARITY
        base = base.base
    if isinstance(base, mmap.mmap):  # mapped by zcopy_data._mapping (a re-mapped read-only memmap)
        with _mapping._lock:
            for (path, *_), mm in _mapping._maps.items():
                if mm is base:
                    return path, mm, 0
    return None


def register_file_array(arr: np.ndarray[Any, Any] | torch.Tensor) -> FileRange | None:
    """Register the file mapping ``arr`` views (cached per array); ``None`` when it views none."""
    hit = _by_array.get(id(arr))
    if hit is not None and hit[0] is arr:
        return hit[1]
    found = _mapping_of(arr) if isinstance(arr, np.ndarray) else None
    rng = None
    if found is not None:
        path, mm, map_offset = found
        start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        rng = register_file_range(start, len(mm), path, map_offset, mm)
    _by_array[id(arr)] = (arr, rng)
    return rng


def _extent(shape: tuple[int, ...], stride: tuple[int, ...], itemsize: int) -> int:
    """Bytes from the first to one past the last element (non-negative strides)."""
    return (sum((s - 1) * st for s, st in zip(shape, stride, strict=True)) + 1) * itemsize


def describe_file_view(t: torch.Tensor) -> FileDescriptor | None:
    """The descriptor of a CPU tensor whose bytes all lie in a registered file mapping."""
    if not _ranges or t.numel() == 0 or t.device.type != "cpu" or t.layout != torch.strided:
        return None
    ptr = t.data_ptr()
    shape, stride = tuple(t.shape), tuple(t.stride())
    end = ptr + _extent(shape, stride, t.element_size())
    for r in _ranges:
        if r.start <= ptr and end <= r.stop:
            return FileDescriptor(r.path, r.key, r.file_offset + ptr - r.start, shape, stride, t.dtype)
    return None


# -- main process ----------------------------------------------------------------------------
_bases: dict[tuple[str, FileKey], np.ndarray[Any, Any]] = {}


def _file_bytes(path: str, key: FileKey) -> np.ndarray[Any, Any]:
    base = _bases.get((path, key))
    if base is None:
        if _file_key(path) != key:
            raise RuntimeError(
                f"{path!r} changed after a DataLoader worker mapped it (file identity {key} became "
                f"{_file_key(path)}); do not replace files while a loader reads them"
            )
        # the same copy-on-write mapping zcopy_data._mapping gives everyone else in this process
        base = np.frombuffer(_mapping._private_map(path), dtype=np.uint8)
        with _lock:
            _bases[(path, key)] = base
    return base


def rebuild_file_view(
    path: str, key: FileKey, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """In the receiving process: the tensor a descriptor stands for, over a cached file mapping."""
    base = _bases.get((path, key))
    if base is None:
        base = _file_bytes(path, key)
    region = base[offset : offset + _extent(shape, stride, dtype.itemsize)]  # a fresh array: its own storage
    flat = torch.from_numpy(region)
    if dtype != torch.uint8:
        flat = flat.view(dtype)
    return flat.as_strided(shape, stride)
