"""Shared-memory output buffers for batches assembled inside ``DataLoader`` workers: a pool.

Each worker keeps a pool of shared-memory segments, created once (checked against the free
space of ``/dev/shm`` and reserved with ``posix_fallocate``, so a full ``/dev/shm`` is a clear
error instead of a bus error) and faulted in at creation. A batch is gathered straight into a
free segment and crosses to the main process as a handle (see
:mod:`zcopy_data.memory.crossing`): the main process maps each segment once and builds the
batch over it.

A segment is reused only when it is free on both sides:

* in the worker, no tensor references its storage (storage use count back to the pool's own);
* in the main process, every tensor built from it -- views included -- has been freed (the
  segment's header, :mod:`zcopy_data.memory.segment`).

A user who holds many batches makes the pool grow, up to ``ZCOPY_DATA_WORKER_SHM_BYTES`` per
worker (default 1 GiB) and while ``/dev/shm`` has room; beyond either, the worker waits up to
``ZCOPY_DATA_WORKER_SHM_WAIT_S`` seconds (default 30) for a release, then raises
:class:`SharedMemoryExhaustedError` with the byte counts. Segments are unlinked right after
creation (PyTorch's ``file_descriptor`` strategy), so nothing is left in ``/dev/shm`` even when
a worker is killed.

.. note:: The main process keeps its mapping of a worker's buffers until it next meets a new
   buffer and finds that worker gone (a few buffers per worker, a few batches' worth of memory).
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.multiprocessing as tmp

from zcopy_data.errors import SharedMemoryExhaustedError
from zcopy_data.memory.reuse import Reusable
from zcopy_data.memory.segment import HEADER_BYTES, Header, tensor_over

__all__ = [
    "PoolConfig",
    "SharedMemoryExhaustedError",
    "Slot",
    "WorkerBufferPool",
    "allocate_shared",
    "current_pool",
]

_PAGE = 4096
_SHM_DIR = "/dev/shm"


def _env_number(name: str, default: float, *, integer: bool = False, minimum: float = 0) -> float:
    """``name`` from the environment as a finite number >= ``minimum``; the error names the variable."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    want = f"an integer >= {minimum:g}" if integer else f"a finite number >= {minimum:g}"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} should be {want}") from None
    if not math.isfinite(value) or value < minimum or (integer and value != int(value)):
        raise ValueError(f"{name}={raw!r} should be {want}; unset it for the default ({default:g})")
    return value


@dataclass(frozen=True)
class PoolConfig:
    """Limits of one worker's pool (read from the environment, so spawned workers see them).

    Attributes:
        max_bytes: shared memory one worker may hold in its pool (``ZCOPY_DATA_WORKER_SHM_BYTES``).
        wait_s: how long to wait for the main process to free a buffer when the pool is full
            (``ZCOPY_DATA_WORKER_SHM_WAIT_S``).
    """

    max_bytes: int = 1 << 30
    wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes={self.max_bytes} should be >= 1")
        if self.wait_s < 0:
            raise ValueError(f"wait_s={self.wait_s} should be >= 0")

    @classmethod
    def from_env(cls) -> PoolConfig:
        return cls(
            max_bytes=int(_env_number("ZCOPY_DATA_WORKER_SHM_BYTES", cls.max_bytes, integer=True, minimum=1)),
            wait_s=_env_number("ZCOPY_DATA_WORKER_SHM_WAIT_S", cls.wait_s),
        )


def _shm_free() -> tuple[int, int] | None:
    """``(free, total)`` bytes of ``/dev/shm``, or ``None`` where there is none."""
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


@dataclass(eq=False)
class Slot:
    """One shared-memory segment of a pool: header, then ``capacity`` bytes of data."""

    index: int
    storage: torch.UntypedStorage
    capacity: int
    header: Header
    reuse: Reusable

    @property
    def data_ptr(self) -> int:
        return int(self.storage.data_ptr())

    def is_free(self) -> bool:
        # worker side first: a tensor still alive here may yet be handed off
        return self.reuse.is_free() and self.header.received_all()


@dataclass(eq=False)
class WorkerBufferPool:
    """The shared-memory buffers of one worker process."""

    config: PoolConfig = field(default_factory=PoolConfig.from_env)
    token: int = field(default_factory=lambda: secrets.randbits(62))
    pid: int = field(default_factory=os.getpid)
    slots: dict[int, Slot] = field(default_factory=dict)
    by_ptr: dict[int, Slot] = field(default_factory=dict)
    ordered: list[Slot] = field(default_factory=list)  # by capacity, ascending
    _next: int = 0
    _shm_full: str = ""  # why the last try to grow failed, while waiting for a release
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def held_bytes(self) -> int:
        return sum(s.capacity + HEADER_BYTES for s in self.slots.values())

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``dtype`` in a free buffer of the pool (grown when none fits)."""
        itemsize = dtype.itemsize
        need = max(1, math.prod(shape) * itemsize)
        deadline = None
        while True:
            slot = self._take(need)
            if slot is not None:
                self._shm_full = ""
                return tensor_over(slot.storage, HEADER_BYTES, shape, dtype)
            now = time.monotonic()
            deadline = now + self.config.wait_s if deadline is None else deadline
            if now >= deadline:
                held = sum(1 for s in self.slots.values() if not s.is_free())
                if self._shm_full:
                    raise SharedMemoryExhaustedError(
                        f"{self._shm_full}; waited {self.config.wait_s:g} s for one of the {held} buffers "
                        f"({self.held_bytes} B) still referenced by batches to be freed"
                    )
                raise SharedMemoryExhaustedError(
                    f"a DataLoader worker needs {need} B of shared memory for a batch, but its pool already "
                    f"holds {self.held_bytes} B of the {self.config.max_bytes} B allowed, in {len(self.slots)} "
                    f"buffers, {held} of them still referenced by batches (views included) after waiting "
                    f"{self.config.wait_s:g} s; free batches you no longer need, or raise "
                    "ZCOPY_DATA_WORKER_SHM_BYTES / ZCOPY_DATA_WORKER_SHM_WAIT_S"
                )
            time.sleep(0.0005)

    def _take(self, need: int) -> Slot | None:
        with self._lock:
            well_sized = 2 * need + 16 * _PAGE
            for s in self.ordered:  # ascending capacity: the first free one that fits wastes least
                if s.capacity > well_sized:
                    break
                if s.capacity >= need and s.is_free():
                    return s
            capacity = -(-need // _PAGE) * _PAGE
            if capacity + HEADER_BYTES > self.config.max_bytes:
                raise SharedMemoryExhaustedError(
                    f"a DataLoader worker needs {capacity + HEADER_BYTES} B of shared memory for one batch, "
                    f"more than the {self.config.max_bytes} B a worker may hold; raise "
                    "ZCOPY_DATA_WORKER_SHM_BYTES or lower the batch size"
                )
            free = [s for s in self.ordered if s.is_free()]
            # make room by dropping free buffers of the wrong size, the most different first
            for s in sorted(free, key=lambda s: abs(s.capacity - need), reverse=True):
                if self.held_bytes + capacity + HEADER_BYTES <= self.config.max_bytes:
                    break
                if s.capacity < need or s.capacity > well_sized:
                    self._drop(s)
            if self.held_bytes + capacity + HEADER_BYTES <= self.config.max_bytes:
                try:
                    return self._create(capacity)
                except SharedMemoryExhaustedError as err:
                    if all(s.is_free() for s in self.ordered):
                        raise  # nothing held elsewhere will come back: waiting cannot help
                    self._shm_full = str(err)  # back-pressure: wait for the main process to free one
            bigger = [s for s in free if s.capacity >= need and s.index in self.slots]
            return bigger[0] if bigger else None

    def _create(self, capacity: int) -> Slot:
        size = capacity + HEADER_BYTES
        space = _shm_free()
        if space is not None and size > space[0]:
            raise SharedMemoryExhaustedError(
                f"a DataLoader worker needs a {size} B shared-memory buffer for a batch, but {_SHM_DIR} has only "
                f"{space[0]} B free of {space[1]} B; enlarge it (docker run --shm-size=..., or mount "
                "a bigger tmpfs), use fewer workers, or lower the batch size"
            )
        storage: torch.UntypedStorage = torch.UntypedStorage._new_shared(size)  # type: ignore[no-untyped-call]
        if tmp.get_sharing_strategy() == "file_descriptor":  # type: ignore[no-untyped-call]
            fd, _ = storage._share_fd_cpu_()
            try:
                os.posix_fallocate(fd, 0, size)  # reserve the pages now: ENOSPC here, not SIGBUS later
            except OSError as err:
                # elsewhere (no fallocate on this filesystem) the free-space check above has to do
                if err.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                    raise SharedMemoryExhaustedError(
                        f"a DataLoader worker could not reserve a {size} B shared-memory buffer ({err.strerror}); "
                        f"{_SHM_DIR} is too small, enlarge it, use fewer workers or lower the batch size"
                    ) from None
        tensor_over(storage, 0, (size,), torch.uint8).zero_()  # fault every page in once
        slot = Slot(self._next, storage, capacity, Header.of(storage), Reusable([storage]))
        self._next += 1
        self.slots[slot.index] = slot
        self.by_ptr[slot.data_ptr] = slot
        self.ordered = sorted(self.slots.values(), key=_capacity)
        return slot

    def _drop(self, slot: Slot) -> None:
        slot.header.mark_dropped()
        del self.slots[slot.index]
        del self.by_ptr[slot.data_ptr]
        self.ordered = [s for s in self.ordered if s is not slot]

    def slot_of(self, t: torch.Tensor) -> Slot | None:
        """The slot whose storage ``t`` views, if any."""
        if not self.by_ptr:
            return None
        return self.by_ptr.get(int(t.untyped_storage().data_ptr()))


def _capacity(s: Slot) -> int:
    return s.capacity


_pool: WorkerBufferPool | None = None


def current_pool(create: bool = False) -> WorkerBufferPool | None:
    """This process's pool (a forked child never reuses its parent's)."""
    global _pool
    if _pool is not None and _pool.pid != os.getpid():
        _pool = None
    if _pool is None and create:
        _pool = WorkerBufferPool()
    return _pool


def allocate_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor in a pooled shared-memory buffer of this worker's pool.

    Sent to the main process through the reducer of :mod:`zcopy_data.memory.crossing` (which the
    worker allocation policy installs), it crosses as a handle only.
    """
    pool = current_pool(create=True)
    assert pool is not None
    return pool.allocate(tuple(shape), dtype)
