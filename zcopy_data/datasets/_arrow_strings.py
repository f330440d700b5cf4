"""The opt-in for string columns of an ``ArrowDataset``: Python lists of ``str``, copies counted.

Strings are variable-length, so no tensor can view them; with ``strings="list"`` a batch carries
them the way ``default_collate`` does (a list of ``str``), and the ledger counts the bytes that
became Python objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from zcopy_data.datasets._errors import UnsupportedColumnError
from zcopy_data.ledger import record

__all__ = ["STRINGS", "StringColumn", "is_string_type"]

STRINGS = ("error", "list")


def is_string_type(typ: pa.DataType) -> bool:
    return bool(pa.types.is_string(typ) or pa.types.is_large_string(typ))


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
        picked = self.column.take(pa.array(indices, type=pa.int64()))
        record(stage, self.name, f"copy: strings become Python str (strings='list', {origin})", copied=picked.nbytes)
        return picked.to_pylist()  # type: ignore[no-any-return]
