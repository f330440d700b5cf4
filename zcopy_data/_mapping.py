"""File mappings: copy-on-write, registered when created, and described to other processes.

* **Copy-on-write.** A tensor over a read-only mapping crashes the process (SIGSEGV) on the first
  in-place op, so files are mapped ``MAP_PRIVATE`` and writable: a write touches a private copy
  of that page only, never the file, and is visible to later reads *in the same process*.
* **One identity per file.** A dataset takes a file's identity ``(device, inode, size, mtime)``
  once, when it is built, and every process that maps the file for it checks the file it opened
  against that identity: a file replaced or rewritten since raises :class:`FileChangedError`
  instead of mixing two files into one epoch.
* **Registered at creation.** Every mapping made here is registered with its address range, so a
  tensor over it -- from any source, NumPy, Arrow or another -- crosses from a ``DataLoader``
  worker as a :class:`FileDescriptor` (the receiving process maps the file itself: zero copies).
  The registry holds ranges weakly: a range lives as long as its mapping.
* **Two kinds of mapping.** A dataset maps its own files (``shared=False``): a new dataset reads
  the file as it is now. Descriptors from workers and remapped read-only memmaps are rebuilt over
  one *shared* mapping per file, alive while any view of it is: a write to such a view is seen by
  every later one of that file while one of them lives. Nothing keeps a mapping no dataset or
  batch uses: thousands of streamed shards keep bounded address space, and a deleted file's disk
  space comes back.

.. note:: The receiving process sees the file's bytes: writes a worker made to its own private
   (copy-on-write) pages are not carried over. Pages already handed out as views show whatever
   the file holds when they are read; pass ``copy=True`` to a dataset to isolate batches.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from zcopy_data.errors import CorruptFileError, FileChangedError

__all__ = [
    "FileDescriptor",
    "FileIdentity",
    "FileRange",
    "Layout",
    "check_unchanged",
    "describe_file_view",
    "file_array",
    "file_region",
    "identity_of",
    "mapping_count",
    "rebuild_file_view",
    "register_file_array",
    "register_file_range",
    "remap_private",
]


class FileIdentity(NamedTuple):
    """Which file, and which version of it: what a dataset promises to serve."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def identity_of(path: str | os.PathLike[str]) -> FileIdentity:
    """The identity of the file at ``path`` now."""
    return FileIdentity.of_stat(os.stat(path))


def _changed(path: str, want: FileIdentity, found: FileIdentity) -> FileChangedError:
    if (want.dev, want.ino) != (found.dev, found.ino):
        what = "replaced"
    else:
        what = "truncated" if found.size < want.size else "rewritten"
    return FileChangedError(
        f"{path!r} was {what} after the dataset was built (expected {want.size} bytes modified at "
        f"mtime_ns {want.mtime_ns} on inode {want.ino}, found {found.size} bytes at {found.mtime_ns} on "
        f"inode {found.ino}); a zero-copy dataset serves the file it was built on: write new data "
        "to a new path, or rebuild the dataset after the file is complete"
    )


def check_unchanged(path: str, identity: FileIdentity) -> None:
    """Raise :class:`FileChangedError` when ``path`` no longer is the file ``identity`` names.

    One ``stat`` per file: cheap next to building a batch, and done before each one.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileChangedError(
            f"{path!r} was deleted after the dataset was built (expected {identity.size} bytes on inode "
            f"{identity.ino}); a zero-copy dataset serves the file it was built on: keep it until the "
            "dataset is done, or rebuild the dataset"
        ) from None
    # the fields compared in place (no FileIdentity built): this runs per file and batch
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != identity:
        raise _changed(path, identity, FileIdentity.of_stat(st))


class Layout(NamedTuple):
    """Where a tensor's elements lie in a buffer: byte offset, shape, strides (elements), dtype."""

    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, t: torch.Tensor, offset: int) -> Layout:
        return cls(offset, tuple(t.shape), tuple(t.stride()), t.dtype)

    @property
    def extent(self) -> int:
        """Bytes from the first element to one past the last (non-negative strides)."""
        if any(s == 0 for s in self.shape):
            return 0
        return (sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True)) + 1) * self.dtype.itemsize

    def tensor_in(self, region: np.ndarray[Any, Any]) -> torch.Tensor:
        """The tensor over ``region``, the bytes ``[offset, offset + extent)`` of its buffer."""
        flat = torch.from_numpy(region)
        if self.dtype != torch.uint8:
            flat = flat.view(self.dtype)
        return flat.as_strided(self.shape, self.stride)


@dataclass(frozen=True)
class FileRange:
    """Addresses ``[start, stop)`` of this process that map ``path`` from byte ``file_offset``."""

    start: int
    stop: int
    path: str
    file_offset: int
    identity: FileIdentity


class FileDescriptor(NamedTuple):
    """What crosses instead of a file view's bytes."""

    path: str
    identity: FileIdentity
    layout: Layout

    @property
    def offset(self) -> int:
        """Byte offset of the first element in the file."""
        return self.layout.offset

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.layout.dtype


_lock = threading.RLock()  # re-entrant: a finalizer (_forget) may run while this thread holds it
# One shared mapping per file while any view of it lives: what descriptors from workers and
# remapped read-only memmaps are rebuilt over, so a write to one such view is seen by every later
# one. Held weakly: a file no batch uses is unmapped (its disk space comes back once deleted). A
# dataset maps its own files afresh (``shared=False``): a new dataset reads the file as it is.
_maps: weakref.WeakValueDictionary[tuple[str, FileIdentity], mmap.mmap] = weakref.WeakValueDictionary()
_made: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()  # every live mapping made here, shared or not
_ranges: dict[int, FileRange] = {}  # key -> range, removed when its owner is freed
# key -> the owner that keeps the range mapped. A range is trusted only while its owner is alive:
# CPython unmaps an mmap *before* it clears the mmap's weak references (and so before _forget
# runs), with the GIL released in between; a range read in that window -- or inherited by a
# DataLoader worker forked in it -- names addresses a new mapping of another file may take.
# A weak reference to an object being freed reads None at once, so checking it closes the window.
_owners: dict[int, weakref.ref[Any]] = {}
_next_key = iter(range(1 << 62))


def _forget(key: int) -> None:
    with _lock:
        _ranges.pop(key, None)
        _owners.pop(key, None)


def _add_range(rng: FileRange, owner: Any) -> int:
    """Register ``rng``, kept while ``owner`` lives (call with ``_lock`` held)."""
    key = next(_next_key)
    _ranges[key] = rng
    _owners[key] = weakref.ref(owner)
    return key


def _live_ranges() -> list[FileRange]:
    """The registered ranges whose mapping is certainly alive, newest first."""
    with _lock:
        live = []
        for key in reversed(list(_ranges)):
            ref = _owners.get(key)
            if ref is not None and ref() is not None:
                live.append(_ranges[key])
            else:
                _forget(key)  # its owner is being freed: its finalizer will find nothing left
        return live


def register_file_range(start: int, nbytes: int, path: str, file_offset: int, owner: Any) -> FileRange:
    """Declare that ``nbytes`` at address ``start`` map ``path`` from ``file_offset``.

    For datasets whose views come from mappings of their own (not made here): their views then
    cross from workers as descriptors too. The range is forgotten when ``owner`` (which keeps the
    mapping, and so the addresses, alive) is freed.
    """
    real = os.path.realpath(path)
    rng = FileRange(start, start + nbytes, real, file_offset, identity_of(path))
    with _lock:
        for k, r in _ranges.items():
            if r == rng and _owners[k]() is owner:
                return r
        key = _add_range(rng, owner)
    weakref.finalize(owner, _forget, key)
    return rng


def _private_map(path: str, identity: FileIdentity | None, shared: bool) -> tuple[mmap.mmap, FileIdentity]:
    real = os.path.realpath(path)
    if shared and identity is not None:
        with _lock:
            mm = _maps.get((real, identity))
        if mm is not None:
            # mapped already: the file must still be that file (a shrunk file's lost pages would
            # kill this process with SIGBUS on the first read, so refuse before handing out a view).
            # A deleted file is intact while mapped: its pages live on with the mapping.
            if os.path.exists(path):
                check_unchanged(path, identity)
            return mm, identity
    # O_NONBLOCK: a FIFO put where the file was must be refused, not block this process forever
    # (regular files ignore the flag).
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
        st = os.fstat(f.fileno())
        found = FileIdentity.of_stat(st)  # the file this descriptor opened, not the path now
        if identity is not None and found != identity:
            raise _changed(path, identity, found)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"{path!r} is not a regular file (a FIFO, device or socket); only files are read")
        with _lock:
            mm = _maps.get((real, found)) if shared else None
            if mm is not None:
                return mm, found
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if found.size else mmap.mmap(-1, 1)
            if shared:
                _maps[(real, found)] = mm
            _made.add(mm)
            start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
            key = _add_range(FileRange(start, start + len(mm), real, 0, found), mm)
        weakref.finalize(mm, _forget, key)
        return mm, found


def file_array(
    path: str | os.PathLike[str],
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...] | None = None,
    *,
    identity: FileIdentity | None = None,
    order: Literal["C", "F"] = "C",
    shared: bool = True,
) -> np.ndarray[Any, Any]:
    """A writable, copy-on-write array over ``path`` from byte ``offset``, registered for crossing.

    ``identity``: the file the caller's dataset was built on; a different file raises
    :class:`FileChangedError`. ``shared``: over this process's one shared mapping of the file
    (writes seen by every later shared view) rather than a mapping of the caller's own.
    """
    mm, _ = _private_map(os.fspath(path), identity, shared)
    return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, strides=strides, order=order)


def mapping_count() -> int:
    """Live file mappings made here, shared or a dataset's own (for tests and diagnostics)."""
    with _lock:
        return len(_made)


def file_region(arr: np.ndarray[Any, Any]) -> tuple[str, int] | None:
    """``(path, byte offset)`` of the first element of ``arr`` when it views a ``np.memmap``."""
    found = _memmap_of(arr)
    if found is None or arr.size == 0:
        return None
    path, mm, map_offset = found
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    return path, map_offset + (arr.ctypes.data - start)


def remap_private(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """The same bytes of a read-only ``np.memmap`` view, mapped copy-on-write here; else ``None``."""
    region = file_region(arr)
    if region is None:
        return None
    path, offset = region
    return file_array(path, offset, arr.shape, arr.dtype, arr.strides)


def _memmap_of(arr: np.ndarray[Any, Any]) -> tuple[str, mmap.mmap, int] | None:
    """``(path, mmap, file offset of the mmap's first byte)`` when ``arr`` views a ``np.memmap``."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            mm = getattr(base, "_mmap", None)
            if base.filename is None or not isinstance(mm, mmap.mmap):
                return None
            return base.filename, mm, base.offset - base.offset % mmap.ALLOCATIONGRANULARITY
        base = base.base
    return None


_by_array: weakref.WeakKeyDictionary[Any, FileRange | None] = weakref.WeakKeyDictionary()


def register_file_array(arr: np.ndarray[Any, Any] | torch.Tensor) -> FileRange | None:
    """Register the ``np.memmap`` an array views (a column a dataset did not map here itself).

    Arrays over mappings made by :func:`file_array` are registered already. ``None`` when ``arr``
    views no file.
    """
    if not isinstance(arr, np.ndarray):
        return None
    if arr.size:
        held = _range_holding(arr.ctypes.data)
        if held is not None:
            return held  # mapped by file_array, registered when it was created
    try:
        return _by_array[arr]
    except (KeyError, TypeError):
        pass
    found = _memmap_of(arr)
    rng = None
    if found is not None:
        path, mm, map_offset = found
        start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        rng = register_file_range(start, len(mm), path, map_offset, mm)
    try:
        _by_array[arr] = rng
    except TypeError:
        pass
    return rng


def _range_holding(ptr: int) -> FileRange | None:
    return next((r for r in _live_ranges() if r.start <= ptr < r.stop), None)


def describe_file_view(t: torch.Tensor) -> FileDescriptor | None:
    """The descriptor of a CPU tensor whose bytes all lie in one registered file mapping."""
    if not _ranges or t.numel() == 0 or t.device.type != "cpu" or t.layout != torch.strided:
        return None
    ptr = t.data_ptr()
    layout = Layout.of(t, 0)
    end = ptr + layout.extent
    for r in _live_ranges():
        if r.start <= ptr and end <= r.stop:
            return FileDescriptor(r.path, r.identity, layout._replace(offset=r.file_offset + ptr - r.start))
    return None


def rebuild_file_view(d: FileDescriptor) -> torch.Tensor:
    """In the receiving process: the tensor a descriptor stands for, over this process's mapping
    of the same file (the one the sender mapped, or :class:`FileChangedError`)."""
    mm, _ = _private_map(d.path, d.identity, shared=True)
    base = np.frombuffer(mm, dtype=np.uint8)
    region = base[d.layout.offset : d.layout.offset + d.layout.extent]  # a fresh array: its own storage
    return d.layout.tensor_in(region)
