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

Key = tuple[tuple[int, ...], torch.dtype]


class Reusable:
    """The reuse state of one buffer: its storages' baselines and the copy event still pending."""

    __slots__ = ("_baselines", "_event", "_storages")

    def __init__(self, tensors: Sequence[torch.Tensor | torch.UntypedStorage]) -> None:
        self._storages = [t.untyped_storage() if isinstance(t, torch.Tensor) else t for t in tensors]
        self._baselines = [use_count(s) for s in self._storages]
        self._event: Any = None

    def referenced(self) -> bool:
        """True while a tensor, view or array other than the pool's own references the buffer."""
        # a plain loop: this runs for every buffer a pool looks at, once per batch and field
        for s, b in zip(self._storages, self._baselines, strict=True):
            if use_count(s) != b:
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
        return (self._event is None or not self.copying()) and not self.referenced()


def _alias(buf: torch.Tensor) -> torch.Tensor:
    """A new tensor over ``buf``'s storage (one more reference to it); ``detach`` is the cheapest."""
    return buf.detach()


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
        key = (tuple(shape), dtype)
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
                    return _alias(buf)
            if len(bufs) >= self.per_key:
                return self.make(key[0], dtype) if self.overflow else None
            buf = self.make(key[0], dtype)
            bufs.append((buf, Reusable([buf])))
            return _alias(buf)

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds."""
        with self._lock:
            return sum(b.numel() * b.element_size() for bufs in self._bufs.values() for b, _ in bufs)

    def clear(self) -> None:
        """Forget every buffer (held batches keep theirs alive)."""
        with self._lock:
            self._bufs.clear()
