"""Pinned host buffers: exact-size blocks, batch-slot pools, and PyTorch's pinned allocator.

PyTorch's pinned allocator rounds every request up to a power of two (a 3.1 MiB batch pins
4 MiB). Here one block of page-locked memory is mapped for the exact bytes (rounded to a page)
and registered with the driver (``cudaHostRegister``), then carved into buffers at fixed offsets.
Each buffer is its own tensor storage, so "does anything still reference it?" is a question about
that storage's use count, not about data pointers.

A buffer is free when (1) its lease was released, (2) the event of the copy that reads it has
completed, and (3) no tensor, view or NumPy array references its storage beyond the pool's own
(the rule of :mod:`zcopy_data.memory.reuse`).

Without an accelerator the same pools hand out ordinary host memory (``pinned_bytes == 0``), so
the reuse logic runs, and is tested, everywhere.
"""

from __future__ import annotations

import itertools
import math
import mmap
import threading
import time
import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import get_worker_info

from zcopy_data._accelerator import accelerator, check_main_process
from zcopy_data._dtypes import dtype_name
from zcopy_data.errors import PoolExhaustedError, SchemaError
from zcopy_data.memory.inflight import reap
from zcopy_data.memory.reuse import Reusable, ReusePool
from zcopy_data.schema import Schema

__all__ = [
    "ExactPinnedPool",
    "HostBlock",
    "PinnedBufferPool",
    "PinnedSlot",
    "PoolExhaustedError",
    "is_pinned_gather",
    "is_pool_memory",
    "torch_pinned",
]

ALIGN = 64  # every buffer starts on a cache line (and on any dtype's alignment)
PAGE = mmap.PAGESIZE
Spec = tuple[tuple[int, ...], torch.dtype]


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# -- page-locked blocks ------------------------------------------------------------------------
_blocks: dict[int, tuple[int, int]] = {}  # key -> [start, end) of live blocks, for is_pool_memory
_keys = itertools.count()
_blocks_lock = threading.RLock()  # re-entrant: _forget runs from finalizers


class HostBlock:
    """``nbytes`` of host memory, page-locked when ``pin`` (exactly, up to one page)."""

    def __init__(self, nbytes: int, *, pin: bool) -> None:
        self.nbytes = _align(max(nbytes, 1), PAGE)
        self.pinned_bytes = 0
        key = next(_keys)
        if pin and _cuda_like():
            mm = mmap.mmap(-1, self.nbytes)  # page-aligned, pages of its own: no overlap with other registrations
            self.array = np.frombuffer(mm, dtype=np.uint8)
            ptr = self.array.ctypes.data
            cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
            err = int(cudart.cudaHostRegister(ptr, self.nbytes, 1))  # 1: cudaHostRegisterPortable
            if err != 0:
                raise RuntimeError(f"cudaHostRegister of {self.nbytes} bytes failed with cudaError {err}")
            self.pinned_bytes = self.nbytes
            weakref.finalize(self.array, _unregister, ptr, mm, key)  # unregister before the pages go
        elif pin:
            # Other accelerators: one block from PyTorch's pinned allocator (rounded once, not per buffer).
            block = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
            self.array = block.numpy()
            self.pinned_bytes = self.nbytes
            weakref.finalize(self.array, _forget, key)
        else:
            self.array = np.frombuffer(mmap.mmap(-1, self.nbytes), dtype=np.uint8)
            weakref.finalize(self.array, _forget, key)
        start = self.array.ctypes.data
        with _blocks_lock:
            _blocks[key] = (start, start + self.nbytes)

    def carve(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor with a storage of its own over ``[offset, offset + nbytes)`` of the block."""
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        flat = torch.from_numpy(self.array[offset : offset + n])
        return flat.view(dtype).view(shape)


def _cuda_like() -> bool:
    acc = accelerator()
    return acc is not None and acc.type == "cuda"


def _forget(key: int) -> None:
    with _blocks_lock:
        _blocks.pop(key, None)


def _unregister(ptr: int, mm: mmap.mmap, key: int) -> None:  # noqa: ARG001 (mm: kept mapped until now)
    _forget(key)
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)  # type: ignore[no-untyped-call]
    except Exception:  # at interpreter exit the driver may be gone already; the pages go anyway
        pass


def is_pool_memory(t: torch.Tensor) -> bool:
    """True when ``t`` lives in a buffer of a zcopy_data pool (pinned when an accelerator exists)."""
    if t.device.type != "cpu":
        return False
    ptr = t.untyped_storage().data_ptr()
    with _blocks_lock:
        return any(start <= ptr < end for start, end in _blocks.values())


# -- a pool of batch-sized slots -----------------------------------------------------------------
class PinnedSlot(Mapping[str, torch.Tensor]):
    """One leased set of buffers, one per field; give it back with :meth:`release`."""

    def __init__(self, pool: PinnedBufferPool, index: int, tensors: dict[str, torch.Tensor]) -> None:
        # No strong reference back to the pool: a pool <-> slot cycle would keep the slots' device
        # events alive as cyclic garbage, and a DataLoader worker forked meanwhile would destroy
        # them at its first garbage collection, a device call in a forked child that aborts it.
        self._pool = weakref.ref(pool)
        self._lock = pool._lock
        self.index = index
        self._tensors = tensors
        self._reuse = Reusable(list(tensors.values()))
        self._leased = False

    @property
    def pool(self) -> PinnedBufferPool:
        """The pool this slot belongs to."""
        pool = self._pool()
        if pool is None:
            raise RuntimeError(f"slot {self.index} outlived its PinnedBufferPool")
        return pool

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        return t.view(t.shape)  # a new view: whoever keeps it counts as a reference to the buffer

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def release(self, event: torch.Event | None = None) -> None:
        """Give the slot back; it is reused only after ``event`` (the copy reading it) completes."""
        with self._lock:
            if not self._leased:
                raise RuntimeError(f"slot {self.index} released twice")
            self._reuse.wait_for(event)
            self._leased = False

    def referenced(self) -> bool:
        """True while a tensor, view or array other than the pool's own references a buffer."""
        return self._reuse.referenced()

    def copying(self) -> bool:
        """True while the copy recorded by :meth:`release` has not completed."""
        return self._reuse.copying()

    def is_free(self) -> bool:
        return not self._leased and self._reuse.is_free()

    def __repr__(self) -> str:
        return f"PinnedSlot({self.index}, {list(self._tensors)})"


class PinnedBufferPool:
    """``slots`` exact-size batch buffers, allocated once, pinned when an accelerator exists.

    Args:
        fields: a :class:`~zcopy_data.Schema` (with ``batch_size``) or ``name -> (shape, dtype)``
            of whole batches.
        batch_size: samples per batch, required with a schema.
        slots: how many batches can be in flight or held at once. With a prefetch depth ``d``,
            use at least ``d + 2`` (one being filled, ``d`` copying, one held by the consumer).
        pin: page-lock the memory; default: when an accelerator is available.

    >>> import torch
    >>> pool = PinnedBufferPool({"x": ((4, 3), torch.float32)}, slots=2, pin=False)
    >>> slot = pool.acquire()
    >>> slot["x"].shape, pool.nbytes
    (torch.Size([4, 3]), 96)
    >>> slot.release()
    """

    def __init__(
        self,
        fields: Schema | Mapping[str, Spec],
        *,
        batch_size: int | None = None,
        slots: int = 4,
        pin: bool | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"{slots=} should be >= 1")
        specs = _specs(fields, batch_size)
        if pin is None:  # never query the accelerator from a worker: it may be a forked child
            pin = get_worker_info() is None and accelerator() is not None
        if pin:
            check_main_process("pinning memory")
        layout: dict[str, int] = {}
        offset = 0
        for name, (shape, dtype) in specs.items():
            layout[name] = offset
            offset += _align(math.prod(shape) * torch.empty((), dtype=dtype).element_size(), ALIGN)
        self.specs = specs
        self.slot_bytes = offset
        self.nbytes = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in specs.values()) * slots
        self._block = HostBlock(offset * slots, pin=pin)
        self.pinned_bytes = self._block.pinned_bytes
        self._lock = threading.Lock()
        self._slots = [
            PinnedSlot(
                self,
                i,
                {n: self._block.carve(i * offset + layout[n], shape, dtype) for n, (shape, dtype) in specs.items()},
            )
            for i in range(slots)
        ]
        self._next = 0

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def pinned(self) -> bool:
        return self.pinned_bytes > 0

    def acquire(self, timeout: float | None = None) -> PinnedSlot:
        """Lease a free slot, waiting for pending copies to complete if that frees one.

        Args:
            timeout: also wait up to this many seconds for other threads to drop references.
                ``None`` (default) raises at once when only dropped references could free a slot.

        Raises:
            PoolExhaustedError: every slot is still leased or referenced.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reap()
            with self._lock:
                n = len(self._slots)
                for k in range(n):
                    slot = self._slots[(self._next + k) % n]
                    if slot.is_free():
                        slot._leased = True
                        self._next = (slot.index + 1) % n
                        return slot
                pending = [s for s in self._slots if not s._leased and s._reuse.event is not None]
            if pending:  # the oldest copy frees its slot when it completes
                event = pending[0]._reuse.event
                if event is not None:
                    event.synchronize()
                continue
            if reap(wait_one=True):  # host references held for a copy still running
                continue
            if deadline is not None and time.monotonic() < deadline:
                time.sleep(0.001)
                continue
            held = sum(s._leased for s in self._slots)
            raise PoolExhaustedError(
                f"all {n} slots of the pinned pool are in use ({held} leased, {n - held} still referenced by "
                "tensors); drop references to old batches (or clone what you keep), or build the pool with "
                "more slots"
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {dtype_name(d)}{list(s)}" for k, (s, d) in self.specs.items())
        return f"PinnedBufferPool({self.slots} slots of {{{fields}}}, pinned_bytes={self.pinned_bytes})"


def _specs(fields: Schema | Mapping[str, Spec], batch_size: int | None) -> dict[str, Spec]:
    out: dict[str, Spec] = {}
    if isinstance(fields, Schema):
        if batch_size is None or batch_size < 1:
            raise ValueError(f"{batch_size=}: a pool built from a schema needs batch_size >= 1")
        for name, f in fields.items():
            if not f.is_fixed:
                raise SchemaError(
                    f"field {name!r}: shape {f} has a variable dimension, so its buffers cannot be allocated "
                    "up front; declare a fixed shape or leave the field out of the pool",
                    field=name,
                )
            out[name] = ((batch_size, *(int(d) for d in f.shape if d is not None)), f.dtype)
        return out
    for name, spec in fields.items():
        try:
            shape, dtype = spec
            norm: Spec = (tuple(int(d) for d in shape), dtype)
        except (TypeError, ValueError):
            raise SchemaError(f"field {name!r}: expected (shape, dtype), found {spec!r}", field=name) from None
        if not isinstance(dtype, torch.dtype) or any(d < 0 for d in norm[0]):
            raise SchemaError(f"field {name!r}: expected (shape, torch dtype), found {spec!r}", field=name)
        out[name] = norm
    if not out:
        raise SchemaError("a pinned pool needs at least one field")
    return out


# -- pinned outputs for gathers in the main process ------------------------------------------------
#
# Whoever consumes a batch gathered in the main process may copy it with its own
# ``.to(device, non_blocking=True)``, a copy zcopy_data never sees: such gathers use PyTorch's
# pinned allocator, which records an event for every copy and reuses a block only after it. A
# device stage that copies every batch itself, under its own events, hands down an
# :class:`ExactPinnedPool` instead (see :mod:`zcopy_data.memory.policy`).
_gathered: dict[int, weakref.ref[torch.Tensor]] = {}


def torch_pinned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A buffer from PyTorch's pinned allocator, remembered as gathered into pinned memory."""
    buf = torch.empty(shape, dtype=dtype, pin_memory=True)
    key = id(buf)
    _gathered[key] = weakref.ref(buf, lambda _, k=key: _gathered.pop(k, None))  # type: ignore[misc]
    return buf


def _exact(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    nbytes = math.prod(shape) * dtype.itemsize
    return HostBlock(nbytes, pin=True).carve(0, shape, dtype)


class ExactPinnedPool:
    """Exact-size pinned buffers per ``(shape, dtype)``, reused once no tensor references them.

    Only for batches every copy of which is issued by :func:`~zcopy_data.to_device` (its copy
    references the buffer until its event completes); ``None`` from :meth:`take` when all
    ``per_key`` buffers of a shape are in use.
    """

    def __init__(self, per_key: int = 8) -> None:
        self._pool = ReusePool(_exact, per_key=per_key, keys=16, overflow=False)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        reap()
        return self._pool.take(shape, dtype)

    @property
    def per_key(self) -> int:
        return self._pool.per_key

    @property
    def nbytes(self) -> int:
        return self._pool.nbytes


def is_pinned_gather(t: torch.Tensor) -> bool:
    """True when ``t`` is a buffer a gather wrote straight into pinned memory (so pinning it is free)."""
    ref = _gathered.get(id(t))
    return (ref is not None and ref() is t) or (is_pool_memory(t) and t.is_pinned())
