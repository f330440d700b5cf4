"""The writer: any dataset of Python objects into a folder of zero-copy Arrow shards.

A dataset of Python objects (dicts, PIL images, strings) is copied page by page into every
``DataLoader`` worker that touches it (reference counts write to the objects). Written once
with :func:`write` into fixed-shape Arrow columns, it is memory-mapped and served as views.

The folder holds ``shard-00000.arrow``, ``shard-00001.arrow``, ... (uncompressed Arrow IPC file
format) and ``zcopy_index.json`` (rows, schema, and each shard's rows, bytes and SHA-256),
written last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zcopy_data.writer._layout import SHAPE_KEY
    from zcopy_data.writer._write import INDEX_NAME, WriteReport, write

__all__ = ["INDEX_NAME", "SHAPE_KEY", "WriteReport", "write"]


def __getattr__(name: str) -> Any:
    # the writer needs pyarrow (extra `zcopy-data[arrow]`): imported on first use, so the CLI starts without it
    if name == "SHAPE_KEY":
        from zcopy_data.writer import _layout

        return _layout.SHAPE_KEY
    if name in ("INDEX_NAME", "WriteReport", "write"):
        from zcopy_data.writer import _write

        return getattr(_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
