"""The one rule for reusing a batch buffer: nobody references it, and no copy is still reading it.

Every pool of batch buffers (host, shared memory, pinned) keeps a :class:`Reusable` per buffer:

* **references** -- the storage use counts of its tensors are back to the baseline taken when the
  pool made them. A batch, any view of it, a NumPy array over it: each holds a reference, so a
  batch the user still holds is never overwritten;
* **pending copy** -- the event of a non-blocking device copy that reads it, when one was
  recorded: the buffer is reused only once the event has completed.

:class:`ReusePool` is the keyed form the host and exact pinned pools share: a few buffers per
``(shape, dtype)``, the least recently used key dropped past a limit; its limits belong to the
pool object (and so to whoever built it), never to the process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from zcopy_data._storage import use_count

__all__ = ["Key", "Reusable", "ReusePool"]

# what use_count asks, on a storage's raw handle (tests/test_storage.py checks the name)
_use_count = torch._C._storage_Use_Count

Key = tuple[tuple[int, ...], torch.dtype]


class Reusable:
    """The reuse state of one buffer: its storages' baselines and the copy event still pending."""

    __slots__ = ("_baseline", "_baselines", "_event", "_handle", "_handles", "_storages")

    def __init__(self, tensors: Sequence[torch.Tensor | torch.UntypedStorage]) -> None:
        self._storages = [t.untyped_storage() if isinstance(t, torch.Tensor) else t for t in tensors]
        self._baselines = [use_count(s) for s in self._storages]
        # the storages' raw handles, valid while ``_storages`` holds them; a lone storage's apart
        self._handles = [s._cdata for s in self._storages]
        self._handle: int | None = self._handles[0] if len(self._handles) == 1 else None
        self._baseline = self._baselines[0] if len(self._baselines) == 1 else 0
        self._event: Any = None

    def referenced(self) -> bool:
        """True while a tensor, view or array other than the pool's own references the buffer."""
        # plain code on raw handles: this runs for every buffer a pool looks at, per batch and field
        if self._handle is not None:
            return bool(_use_count(self._handle) != self._baseline)
        for h, b in zip(self._handles, self._baselines, strict=True):
            if _use_count(h) != b:
                return True
        return False

    def wait_for(self, event: Any) -> None:
        """Do not reuse the buffer before ``event`` (the copy reading it) has completed."""
        self._event = event

    @property
    def event(self) -> Any:
        """The pending copy's event, or ``None``."""
        return self._event

    def copying(self) -> bool:
        """True while the recorded copy has not completed."""
        if self._event is None:
            return False
        if self._event.query():
            self._event = None
            return False
        return True

    def is_free(self) -> bool:
        """Nothing references the buffer and no copy reads it: it may be written again."""
        if self._event is not None and self.copying():
            return False
        if self._handle is not None:
            return bool(_use_count(self._handle) == self._baseline)
        return not self.referenced()


class ReusePool:
    """Up to ``per_key`` reusable buffers per ``(shape, dtype)``, ``keys`` keys at most.

    ``make(shape, dtype)`` creates a buffer; :meth:`take` returns a fresh view of a free one (so
    whoever holds the batch counts as a reference), a new pooled one while there is room, or,
    past ``per_key``, a new unpooled one when ``overflow`` is True (else ``None``).
    """

    def __init__(
        self,
        make: Callable[[tuple[int, ...], torch.dtype], torch.Tensor],
        *,
        per_key: int = 4,
        keys: int = 16,
        overflow: bool = True,
    ) -> None:
        if per_key < 1 or keys < 1:
            raise ValueError(f"{per_key=} and {keys=} should be >= 1")
        self.make = make
        self.per_key = per_key
        self.keys = keys
        self.overflow = overflow
        self._lock = threading.Lock()
        self._bufs: OrderedDict[Key, list[tuple[torch.Tensor, Reusable]]] = OrderedDict()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        key = (shape if type(shape) is tuple else tuple(shape), dtype)
        with self._lock:
            bufs = self._bufs.get(key)
            if bufs is None:
                bufs = self._bufs[key] = []
                if len(self._bufs) > self.keys:
                    self._bufs.popitem(last=False)
            else:
                self._bufs.move_to_end(key)
            for buf, state in bufs:
                if state.is_free():
                    return buf.detach()  # a new tensor over the buffer: one more reference to it
            if len(bufs) >= self.per_key:
                return self.make(key[0], dtype) if self.overflow else None
            buf = self.make(key[0], dtype)
            bufs.append((buf, Reusable([buf])))
            return buf.detach()

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds."""
        with self._lock:
            return sum(b.numel() * b.element_size() for bufs in self._bufs.values() for b, _ in bufs)

    def clear(self) -> None:
        """Forget every buffer (held batches keep theirs alive)."""
        with self._lock:
            self._bufs.clear()
