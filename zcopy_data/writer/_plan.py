"""How many rows go in each shard and each record batch, fixed before the first byte is written.

Rows per record batch are a power of two, so a loader reading aligned power-of-two batches
(``batch_size`` 256 from index 0, ...) never straddles two record batches and every contiguous
batch is a view; rows per shard are a multiple of them. Both follow from the sample size alone,
so every worker process knows which rows each shard holds without asking the others, and the
output is the same however many workers write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zcopy_data.writer._layout import Layout

__all__ = ["Plan"]

FORMAT = "zcopy-shards"
VERSION = 1


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


@dataclass(frozen=True)
class Plan:
    """Rows per shard and per record batch, and the total (``None`` for an iterable, until its end)."""

    rows: int | None
    shard_rows: int
    batch_rows: int

    @classmethod
    def for_layout(cls, layout: Layout, rows: int | None, *, shard_size: int, batch_size: int) -> Plan:
        """``shard_size`` and ``batch_size`` are byte targets, turned into rows of ``layout``."""
        for name, v in (("shard_size", shard_size), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} should be a number of bytes >= 1")
        per = layout.row_bytes
        shard_rows = max(1, shard_size // per)
        batch_rows = _floor_pow2(min(max(1, batch_size // per), shard_rows))
        return cls(rows, max(batch_rows, shard_rows // batch_rows * batch_rows), batch_rows)

    @property
    def num_shards(self) -> int:
        assert self.rows is not None  # only asked of map-style sources
        return -(-self.rows // self.shard_rows)

    def shard_range(self, k: int) -> tuple[int, int]:
        lo = k * self.shard_rows
        hi = lo + self.shard_rows
        return lo, hi if self.rows is None else min(hi, self.rows)

    def fingerprint(self, layout: Layout) -> dict[str, Any]:
        """What a complete shard from an earlier run must match to be kept (same arguments, same schema)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "schema": layout.to_json(),
            "shard_rows": self.shard_rows,
            "record_batch_rows": self.batch_rows,
        }
