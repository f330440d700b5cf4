"""One shared-memory segment's layout and the hand-off protocol both processes follow.

A segment is a header of int64 cells, then the batch data (64-byte aligned for every dtype)::

    [ SENT | RELEASED | ACKED | DROPPED | unused ... ][ data ............ ]
      worker  main      main    worker

Each cell has a single writer, so no cross-process lock is needed:

* the worker counts hand-offs (``SENT``) and marks a segment it dropped from its pool
  (``DROPPED``: the main process may unmap its copy);
* the main process counts releases (``RELEASED``: every tensor built from one hand-off, views
  included, has been freed) and acknowledges that it holds the mapping (``ACKED``: the worker
  stops sending the storage itself and sends only ``(segment, offset, shape, ...)``).

The segment is free on the main process's side when ``SENT == RELEASED``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["HEADER_BYTES", "Header", "tensor_over"]

HEADER_BYTES = 64
_SENT, _RELEASED, _ACKED, _DROPPED = 0, 1, 2, 3


def tensor_over(
    storage: torch.UntypedStorage, byte_offset: int, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """A contiguous tensor of ``shape``/``dtype`` over ``storage`` from ``byte_offset`` (no copy)."""
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return torch.empty(0, dtype=dtype).set_(storage, byte_offset // dtype.itemsize, shape, stride[::-1])


class Header:
    """The header cells of one segment, as seen by either process."""

    __slots__ = ("cells",)

    def __init__(self, cells: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        self.cells = cells

    @classmethod
    def of(cls, storage: torch.UntypedStorage) -> Header:
        """The header at the start of ``storage``."""
        return cls(tensor_over(storage, 0, (HEADER_BYTES // 8,), torch.int64).numpy())

    @classmethod
    def over(cls, segment: np.ndarray[Any, Any]) -> Header:
        """The header at the start of a segment's bytes."""
        return cls(segment[:HEADER_BYTES].view(np.int64))

    # -- the worker's side ----------------------------------------------------------------
    def mark_sent(self) -> None:
        """Count one hand-off, before the worker drops its reference."""
        self.cells[_SENT] += 1

    def received_all(self) -> bool:
        """Every hand-off has been released by the main process."""
        return bool(self.cells[_SENT] == self.cells[_RELEASED])

    @property
    def acked(self) -> bool:
        """The main process holds a mapping: send the segment's index, not its storage."""
        return bool(self.cells[_ACKED])

    def mark_dropped(self) -> None:
        """The worker's pool let the segment go: the main process may unmap it."""
        self.cells[_DROPPED] = 1

    # -- the main process's side ----------------------------------------------------------
    def mark_released(self) -> None:
        """Every tensor of one hand-off has been freed."""
        self.cells[_RELEASED] += 1

    def ack(self) -> None:
        self.cells[_ACKED] = 1

    @property
    def dropped(self) -> bool:
        return bool(self.cells[_DROPPED])
