"""The opt-in for string columns of an ``ArrowDataset``: Python lists of ``str``, copies counted.

Strings are variable-length, so no tensor can view them; with ``strings="list"`` a batch carries
them the way ``default_collate`` does (a list of ``str``), and the ledger counts the bytes that
became Python objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from zcopy_data.errors import UnsupportedColumnError
from zcopy_data.ledger import record

__all__ = ["STRINGS", "StringColumn", "is_string_type"]

STRINGS = ("error", "list")


def is_string_type(typ: pa.DataType) -> bool:
    """``string``, ``large_string`` and ``string_view`` (polars' default): all served by ``strings="list"``."""
    view = getattr(pa.types, "is_string_view", None)
    return bool(pa.types.is_string(typ) or pa.types.is_large_string(typ) or (view is not None and view(typ)))


class StringColumn:
    """One string column's record batches (Arrow arrays over the mapping), served as Python lists."""

    def __init__(self, name: str, numbered: list[tuple[int, pa.RecordBatch]], typ: pa.DataType) -> None:
        chunks = []
        for i, b in numbered:
            col = b.column(name)
            if col.null_count:
                raise UnsupportedColumnError(
                    f"field {name!r}: record batch {i} holds {col.null_count} null strings; a batch of str has no "
                    "nulls; fix: fill them once (pc.fill_null(col, '')) or drop those rows",
                    field=name,
                )
            chunks.append(col)
        self.name = name
        self.column = pa.chunked_array(chunks, type=typ)

    def item(self, i: int) -> str:
        return str(self.column[i].as_py())

    def take(self, indices: np.ndarray[Any, Any], stage: str, origin: str) -> list[str]:
        if not (pa.types.is_string(self.column.type) or pa.types.is_large_string(self.column.type)):
            # string_view has no take kernel: each str is made from its view (what a list of str costs anyway)
            out = [str(self.column[i].as_py()) for i in indices.tolist()]
            copied = sum(len(v.encode()) for v in out)
            record(stage, self.name, f"copy: strings become Python str (strings='list', {origin})", copied=copied)
            return out
        picked = self.column.take(pa.array(indices, type=pa.int64()))
        record(stage, self.name, f"copy: strings become Python str (strings='list', {origin})", copied=picked.nbytes)
        return picked.to_pylist()  # type: ignore[no-any-return]
