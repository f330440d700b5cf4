"""Fixed-address batch buffers: every batch written into one of ``slots`` sets of the same tensors.

A model step captured with ``torch.cuda.graph`` reads its inputs at the addresses it was captured
with, so users copy every batch into a ``static_input`` first: one more device pass per batch.
:class:`StaticRing` removes it: the host -> device copy (and the device cast) writes straight into
a ring of buffer sets allocated once, at the first batch, and every delivered batch *is* one of
them (the same tensor objects, the same data pointers, every epoch). Capture one graph per slot
and replay the one a batch names (:meth:`StaticRing.slot_of`).

Reuse is the consumer's schedule, guarded on the device: slot ``s`` is rewritten for a new batch
only after an event the prefetcher records on the consumer's stream when the consumer asks for
the batch after the one ``s`` held, so the work queued on a batch before asking for the next one
always reads it unchanged. On the CPU the same schedule runs synchronously: the same batches and
the same reuse rule on every build.
"""

from __future__ import annotations

from typing import Any

import torch

from zcopy_data._dtypes import dtype_name
from zcopy_data._storage import nbytes
from zcopy_data._tree import ROOT, leaves, map_tensors
from zcopy_data.errors import ShapeMismatchError
from zcopy_data.ledger import CAST, TRANSFER, record
from zcopy_data.transfer.cast import DeviceCast, cast_into

__all__ = ["StaticRing"]


def _fix(name: str) -> str:
    return (
        f"every batch is written into buffers shaped like the first one; keep field {name!r} one shape "
        "(a fixed batch size, drop_last=True for graph replay), or use DevicePrefetcher(static=False)"
    )


class StaticRing:
    """``slots`` sets of buffers on ``device``, one tensor per batch field, allocated at the first batch.

    Args:
        slots: buffer sets in the ring (>= 1).
        device: where they live.
        cast: the device casts; a cast field's buffer has the cast's dtype, and the cast writes into
            it (through one raw buffer per slot holding the copied bytes).
    """

    def __init__(self, slots: int, device: torch.device, cast: DeviceCast) -> None:
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"slots={slots!r} should be an int >= 1")
        self.slots = slots
        self.device = device
        self.cast = cast
        self.buffers: list[dict[str, torch.Tensor]] = []  # per slot: field -> what the consumer reads
        self._raw: list[dict[str, torch.Tensor]] = []  # per slot: field -> the copied bytes of a cast field
        self._owner: dict[int, int] = {}  # data pointer of a slot's buffer -> slot

    def _allocate(self, batch: Any) -> None:
        fields = list(leaves(batch))
        for _ in range(self.slots):
            out: dict[str, torch.Tensor] = {}
            raw: dict[str, torch.Tensor] = {}
            for name, t in fields:
                cast = self._cast_of(name)
                dtype = t.dtype if cast is None else cast.dtype
                out[name] = torch.empty(tuple(t.shape), dtype=dtype, device=self.device)
                if cast is not None:
                    raw[name] = torch.empty(tuple(t.shape), dtype=t.dtype, device=self.device)
            self.buffers.append(out)
            self._raw.append(raw)
        for s, out in enumerate(self.buffers):
            for t in out.values():
                if t.numel():  # an empty buffer has no address of its own to tell slots apart by
                    self._owner[t.data_ptr()] = s

    def _cast_of(self, name: str) -> Any:
        return self.cast.get("0" if name == ROOT else name)  # a lone tensor is field "0" to a cast map

    def _check(self, name: str, t: torch.Tensor) -> None:
        first = self.buffers[0].get(name)
        src = self._raw[0].get(name, first)
        if first is None or src is None:
            known = sorted(self.buffers[0])
            raise ShapeMismatchError(
                f"field {name!r}: not in the first batch (it had {known}); {_fix(name)}", field=name
            )
        if t.dtype != src.dtype or t.dim() != src.dim() or tuple(t.shape[1:]) != tuple(src.shape[1:]):
            raise ShapeMismatchError(
                f"field {name!r}: expected {src.dtype} rows of shape {tuple(src.shape[1:])} (as in the first batch), "
                f"found {t.dtype} {tuple(t.shape)}; {_fix(name)}",
                field=name,
            )
        if t.dim() and t.shape[0] > src.shape[0]:
            raise ShapeMismatchError(
                f"field {name!r}: {t.shape[0]} rows, more than the {src.shape[0]} of the first batch; {_fix(name)}",
                field=name,
            )

    def fill(self, slot: int, batch: Any, *, non_blocking: bool) -> Any:
        """``batch`` written into slot ``slot`` (on the current stream); the batch of its buffers.

        A batch with fewer rows than the first (an epoch's last) is a prefix view of the slot's
        buffers: the same addresses, fewer rows. Non-tensor leaves pass through.
        """
        if not self.buffers:
            self._allocate(batch)
        if len(self.cast) and not self.cast.is_checked:
            self.cast.check_batch(batch)
        out, raw = self.buffers[slot], self._raw[slot]

        def write(name: str, t: torch.Tensor) -> torch.Tensor:
            self._check(name, t)
            rows = t.shape[0] if t.dim() else None
            dst = out[name] if rows is None else out[name][:rows]
            cast = self._cast_of(name)
            target = dst if cast is None else (raw[name] if rows is None else raw[name][:rows])
            pinned = t.device.type == "cpu" and t.is_pinned()
            target.copy_(t, non_blocking=non_blocking and (pinned or t.device.type != "cpu"))
            if t.device.type == "cpu" and self.device.type == "cpu":
                why = "into its static slot (host copy: device is cpu)"
            elif t.device.type == "cpu":
                why = (
                    "DMA from pinned memory into its static slot"
                    if pinned
                    else "pageable memory: synchronous copy into its static slot"
                )
            else:
                why = f"from {t.device} into its static slot"
            record(TRANSFER, name, why, copied=nbytes(t))
            if cast is not None:
                cast_into(target, cast, dst)
                why = f"{dtype_name(t.dtype)} -> {cast} on {self.device.type}, into its static slot"
                record(CAST, name, why, copied=nbytes(dst))
            return dst

        return map_tensors(batch, write)

    def slot_of(self, batch: Any) -> int:
        """The slot whose buffers ``batch`` (a delivered batch, or one of its tensors) lives in."""
        for _, t in leaves(batch):
            slot = self._owner.get(t.data_ptr()) if t.numel() else None
            if slot is not None:
                return slot
        raise ValueError("not a batch of this ring: its tensors live in none of the slots' buffers")
