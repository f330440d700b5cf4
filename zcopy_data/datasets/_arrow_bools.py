"""The opt-in for bool columns of an ``ArrowDataset``: bit-packed values unpacked into ``torch.bool``.

Arrow stores booleans 8 to a byte, so no tensor can view them; with ``bools="unpack"`` a batch
unpacks the bits it needs straight into a ``torch.bool`` buffer of the allocation handed down
(contiguous batches too), and the ledger counts that copy (``"unpack: bit-packed bools"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zcopy_data.errors import CorruptFileError, UnsupportedColumnError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation

__all__ = ["BOOLS", "UNPACK_REASON", "BoolColumn"]

BOOLS = ("error", "unpack")
UNPACK_REASON = "unpack: bit-packed bools"


class BoolColumn:
    """One bool column's record batches: each one's bitmap (a view of the file) and bit offset."""

    def __init__(self, name: str, numbered: list[tuple[int, pa.RecordBatch]], where: str) -> None:
        self.name = name
        self._bits: list[np.ndarray[Any, Any]] = []
        self._offsets: list[int] = []
        rows = [0]
        for i, b in numbered:
            col = b.column(name)
            if col.null_count:
                raise UnsupportedColumnError(
                    f"field {name!r}: {where} record batch {i} holds {col.null_count} null bools; a tensor has no "
                    "nulls; fix: fill them once (pc.fill_null(col, False)) or drop those rows",
                    field=name,
                )
            data = col.buffers()[1]
            if data is None or data.size * 8 < col.offset + len(col):
                raise CorruptFileError(
                    f"field {name!r}: {where} record batch {i} holds {len(col)} bools but a bitmap of "
                    f"{0 if data is None else data.size} bytes; the file is truncated or corrupt, write it again",
                    field=name,
                )
            self._bits.append(np.frombuffer(data, dtype=np.uint8))
            self._offsets.append(col.offset)
            rows.append(rows[-1] + len(col))
        self._starts = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def item(self, i: int) -> np.bool_:
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        bit = i - int(self._starts[c]) + self._offsets[c]
        return np.bool_((self._bits[c][bit >> 3] >> (bit & 7)) & 1)

    def unpack_into(self, out: np.ndarray[Any, Any], at: np.ndarray[Any, Any], indices: np.ndarray[Any, Any]) -> None:
        """``out[at[j]] = row indices[j]`` (``out``: a ``uint8`` view of a ``torch.bool`` buffer)."""
        chunk = self._starts.searchsorted(indices, side="right") - 1
        for c in np.unique(chunk).tolist():  # record batches, not samples
            pos = np.flatnonzero(chunk == c)
            bit = indices[pos] - self._starts[c] + self._offsets[c]
            out[at[pos]] = (self._bits[c][bit >> 3] >> (bit & 7).astype(np.uint8)) & 1

    def take(self, indices: np.ndarray[Any, Any], allocation: Allocation, origin: str) -> torch.Tensor:
        """Rows ``indices`` unpacked into one ``torch.bool`` buffer of ``allocation`` (counted)."""
        buf = allocation((indices.size,), torch.bool)
        self.unpack_into(buf.numpy().view(np.uint8), np.arange(indices.size), indices)
        record(COLLATE, self.name, f"{UNPACK_REASON} (bools='unpack', {origin})", copied=buf.numel())
        return buf
