"""The copy ledger: every byte a stage viewed or copied, per stage and field, and why.

Stages call :func:`record` once per batch and field (never per sample). Records go to the
process-wide :data:`LEDGER` and to every open :func:`capture`, which is how
:func:`zcopy_data.explain` collects exact counts from worker processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "CAST",
    "COLLATE",
    "CROSS",
    "DECODE",
    "LEDGER",
    "PIN",
    "TRANSFER",
    "CopyLedger",
    "LedgerRow",
    "capture",
    "held",
    "record",
    "record_all",
]

# The stages of a batch's path, in order: the only stage names records use.
DECODE = "decode"
"""A file's bytes decoded (Parquet / compressed IPC into a cache, images into a batch)."""
COLLATE = "collate"
"""A batch assembled: views, one gather, or one stack."""
CROSS = "worker->main"
"""A batch sent from a worker process (or thread) to the main process."""
PIN = "pin"
"""A batch moved into pinned (page-locked) host memory."""
TRANSFER = "host->device"
"""A batch copied to the accelerator."""
CAST = "cast"
"""A field's dtype changed, on the device."""

Record = tuple[str, str, str, int, int]  # stage, field, reason, bytes_viewed, bytes_copied


@dataclass
class LedgerRow:
    """Totals for one (stage, field, reason)."""

    stage: str
    field: str
    reason: str
    events: int = 0
    bytes_viewed: int = 0
    bytes_copied: int = 0


class CopyLedger:
    """Aggregated copy accounting; ``str()`` prints it like a query plan.

    Attributes:
        batches: how many batches the figures cover (set by ``explain``).
    """

    def __init__(self) -> None:
        # (stage, field, reason) -> [events, bytes viewed, bytes copied]: the rows, kept as small
        # lists so that a record is one dict lookup and three integer additions
        self._totals: dict[tuple[str, str, str], list[int]] = {}
        self._lock = threading.Lock()
        self.batches = 0

    def add(self, stage: str, field: str, reason: str, viewed: int = 0, copied: int = 0) -> None:
        self._add((stage, field, reason), viewed, copied)

    def _add(self, key: tuple[str, str, str], viewed: int, copied: int) -> None:
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                self._totals[key] = [1, viewed, copied]
            else:
                totals[0] += 1
                totals[1] += viewed
                totals[2] += copied

    def extend(self, records: Iterable[Record]) -> None:
        batch = list(records)  # drawn before the lock: a generator may record itself
        with self._lock:
            rows = self._totals
            for stage, field, reason, viewed, copied in batch:
                key = (stage, field, reason)
                totals = rows.get(key)
                if totals is None:
                    rows[key] = [1, viewed, copied]
                else:
                    totals[0] += 1
                    totals[1] += viewed
                    totals[2] += copied

    @property
    def rows(self) -> list[LedgerRow]:
        with self._lock:
            return [LedgerRow(s, f, r, e, v, c) for (s, f, r), (e, v, c) in self._totals.items()]

    @property
    def bytes_copied(self) -> int:
        return sum(r.bytes_copied for r in self.rows)

    @property
    def bytes_viewed(self) -> int:
        return sum(r.bytes_viewed for r in self.rows)

    def copied(self, stage: str) -> int:
        """Bytes copied by one stage."""
        return sum(r.bytes_copied for r in self.rows if r.stage == stage)

    def reset(self) -> None:
        with self._lock:
            self._totals.clear()
            self.batches = 0

    def __str__(self) -> str:
        rows = self.rows
        head = ("stage", "field", "events", "viewed", "copied", "why")
        body = [(r.stage, r.field, str(r.events), _size(r.bytes_viewed), _size(r.bytes_copied), r.reason) for r in rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 5) else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
        lines += [fmt.format(*b).rstrip() for b in body]
        per = f", {_size(self.bytes_copied // self.batches)} per batch" if self.batches else ""
        lines.append(
            f"total over {self.batches} batches: viewed {_size(self.bytes_viewed)}, "
            f"copied {_size(self.bytes_copied)}{per}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CopyLedger batches={self.batches} viewed={self.bytes_viewed} copied={self.bytes_copied}>"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


LEDGER = CopyLedger()
"""This process's ledger since start (or the last ``LEDGER.reset()``)."""

_local = threading.local()
_open_captures = 0  # captures open in any thread: while none is, a record looks for none
_open_holds = 0  # the same for held blocks
_captures_lock = threading.Lock()


def record(stage: str, field: str, reason: str, *, viewed: int = 0, copied: int = 0) -> None:
    """Count one stage's work on one field of one batch."""
    if _open_holds:
        hold: list[Record] | None = getattr(_local, "hold", None)
        if hold is not None:
            hold.append((stage, field, reason, viewed, copied))
            return
    LEDGER._add((stage, field, reason), viewed, copied)
    if _open_captures:
        captures: list[list[Record]] | None = getattr(_local, "captures", None)
        if captures:
            rec = (stage, field, reason, viewed, copied)
            for sink in captures:
                sink.append(rec)


def record_all(records: Sequence[Record]) -> None:
    """:func:`record` for each of ``records`` ``(stage, field, reason, viewed, copied)``, in order."""
    if _open_holds:
        hold: list[Record] | None = getattr(_local, "hold", None)
        if hold is not None:
            hold.extend(records)
            return
    LEDGER.extend(records)
    if _open_captures:
        captures: list[list[Record]] | None = getattr(_local, "captures", None)
        if captures:
            for sink in captures:
                sink.extend(records)


@contextmanager
def capture() -> Iterator[list[Record]]:
    """Collect the records made by this thread inside the block."""
    global _open_captures
    sink: list[Record] = []
    captures = getattr(_local, "captures", None)
    if captures is None:
        captures = _local.captures = []
    captures.append(sink)
    with _captures_lock:
        _open_captures += 1
    try:
        yield sink
    finally:
        with _captures_lock:
            _open_captures -= 1
        # by identity: list.remove compares by value, and nested sinks may hold equal records
        del captures[next(i for i, c in enumerate(captures) if c is sink)]


@contextmanager
def held() -> Iterator[list[Record]]:
    """Keep the records this thread makes inside the block out of the ledger and every capture.

    For work done ahead for several batches at once: the caller records its share for each
    batch with :func:`record_all` when that batch is handed out, so the ledger counts batches
    delivered, not batches built. Not nested: a block inside another raises.
    """
    global _open_holds
    if getattr(_local, "hold", None) is not None:
        raise RuntimeError("ledger.held() blocks do not nest")
    sink: list[Record] = []
    _local.hold = sink
    with _captures_lock:
        _open_holds += 1
    try:
        yield sink
    finally:
        with _captures_lock:
            _open_holds -= 1
        _local.hold = None
