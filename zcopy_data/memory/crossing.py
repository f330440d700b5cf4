"""How a tensor crosses from a ``DataLoader`` worker to the main process, without copies.

Inside a worker, :func:`install` registers a reducer for ``torch.Tensor`` with the
``multiprocessing`` pickler the result queue uses. For every tensor a worker sends it picks:

* **handle** -- the tensor lives in a pooled shared-memory buffer
  (:mod:`zcopy_data.memory.shared`): the buffer is sent once (a file descriptor), then only
  ``(pool, buffer, offset, shape, strides, dtype)``; the main process builds the tensor over
  its cached mapping, and counts a release when that tensor and all its views are freed.
* **descriptor** -- the tensor views a registered file mapping
  (:mod:`zcopy_data._mapping`): the main process maps the file itself.
* anything else -- PyTorch's own reducer, unchanged (copies into shared memory when needed).

The user only ever sees ordinary tensors, in the worker and in the main process.
"""

from __future__ import annotations

import os
import threading
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.multiprocessing.reductions import reduce_tensor as _torch_reduce_tensor

from zcopy_data._mapping import Layout, describe_file_view, rebuild_file_view
from zcopy_data.memory import shared
from zcopy_data.memory.segment import Header, tensor_over

__all__ = ["crossing_of", "install"]

_installed_pid: int | None = None


def install() -> None:
    """Route tensors this worker process sends through :func:`_reduce_tensor` (idempotent)."""
    global _installed_pid
    if _installed_pid == os.getpid():
        return
    ForkingPickler.register(torch.Tensor, _reduce_tensor)
    _installed_pid = os.getpid()


def _eligible(t: torch.Tensor) -> bool:
    return (
        type(t) is torch.Tensor
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not t.requires_grad
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and t.numel() > 0
    )


def crossing_of(t: torch.Tensor) -> str:
    """``"handle"``, ``"descriptor"``, ``"shared"`` (PyTorch sends a handle) or ``"copy"``."""
    if _eligible(t):
        pool = shared.current_pool()
        if pool is not None and pool.slot_of(t) is not None:
            return "handle"
        if describe_file_view(t) is not None:
            return "descriptor"
    return "shared" if t.is_shared() else "copy"  # type: ignore[no-untyped-call]


def _reduce_tensor(t: torch.Tensor) -> Any:
    if _eligible(t):
        pool = shared.current_pool()
        slot = pool.slot_of(t) if pool is not None else None
        if pool is not None and slot is not None:
            slot.header.mark_sent()  # count the hand-off before the worker drops its reference
            storage = None if slot.header.acked else slot.storage
            layout = Layout.of(t, int(t.storage_offset()) * t.element_size())
            return _rebuild_pooled, (_Handle(pool.token, pool.pid, slot.index, layout), storage)
        d = describe_file_view(t)
        if d is not None:
            return rebuild_file_view, (d,)
    return _torch_reduce_tensor(t)  # type: ignore[no-untyped-call]


# -- main process ----------------------------------------------------------------------------
class _Handle(NamedTuple):
    token: int
    pid: int
    slot: int
    layout: Layout


class _MappedSlot:
    """The main process's mapping of one worker buffer, kept while the worker lives."""

    __slots__ = ("__weakref__", "bytes", "header", "lock", "pid", "storage")

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.pid = os.getpid()
        whole = tensor_over(storage, 0, (storage.nbytes(),), torch.uint8)
        self.bytes: np.ndarray[Any, Any] = whole.numpy()
        self.header = Header.over(self.bytes)
        self.lock = threading.RLock()  # re-entrant: release() runs from finalizers

    def release(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child freeing its inherited copy of a batch: the parent still holds it
        with self.lock:  # finalizers may run on the pin-memory thread and the main thread
            self.header.mark_released()


_mapped: dict[tuple[int, int], _MappedSlot] = {}
_pids: dict[int, int] = {}  # pool token -> worker pid
_mapped_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _register(h: _Handle, storage: torch.UntypedStorage) -> _MappedSlot:
    slot = _MappedSlot(storage)
    with _mapped_lock:
        # forget buffers of workers that are gone, or that their pool dropped
        dead = {tok for tok, pid in _pids.items() if tok != h.token and not _alive(pid)}
        for key in [k for k, m in _mapped.items() if k[0] in dead or m.header.dropped]:
            del _mapped[key]
        for tok in dead:
            del _pids[tok]
        _mapped[(h.token, h.slot)] = slot
        _pids[h.token] = h.pid
    slot.header.ack()  # the worker stops sending the storage itself
    return slot


def _rebuild_pooled(h: _Handle, storage: torch.UntypedStorage | None) -> torch.Tensor:
    slot = _mapped.get((h.token, h.slot))
    if storage is not None and (slot is None or slot.storage.data_ptr() != storage.data_ptr()):
        slot = _register(h, storage)
    if slot is None:
        raise RuntimeError(
            f"a batch from DataLoader worker pid {h.pid} refers to shared buffer {h.slot} that this "
            "process never received; batches from a worker must be unpickled by one process"
        )
    layout = h.layout
    owner = slot.bytes[layout.offset : layout.offset + layout.extent]  # a fresh array: alive while any view is
    weakref.finalize(owner, slot.release).atexit = False  # nobody reuses buffers after exit
    return layout.tensor_in(owner)
