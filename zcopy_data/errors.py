"""The errors zcopy_data raises, in one small tree.

::

    ZeroCopyError
    ├── SchemaError (ValueError)                  a sample, batch or configuration disagrees with a schema
    │   ├── DtypeDriftError                       ... on a dtype
    │   ├── ShapeMismatchError                    ... on a shape
    │   ├── UnsupportedColumnError                a column with no zero-copy tensor (nulls, strings, ...)
    │   └── CorruptFileError                      unknown format, truncated or undecodable file
    ├── FileChangedError (RuntimeError)           a mapped file was replaced or rewritten under a dataset
    ├── RemoteShardError (OSError)                a shard in object storage could not be listed or fetched
    │   └── CacheFullError                        the local shard cache has no room for a shard
    ├── CopyRequiredError (ValueError)            honouring the request would need a hidden copy
    ├── SampleIndexError (IndexError)             an index outside the dataset
    ├── SharedMemoryExhaustedError (MemoryError)  a worker ran out of shared memory for batches
    ├── DeviceMemoryError (MemoryError)           columns meant to live on a device do not fit its free memory
    └── PoolExhaustedError (RuntimeError)         every pinned buffer is still referenced

    SkippedFileWarning (UserWarning)              one per file left out under ``on_error="skip"``

Every class also inherits a built-in, so ``except ValueError`` keeps working. Each can be
rebuilt from its message string alone: PyTorch re-raises an error from a ``DataLoader`` worker as
``type(err)(message)``, and the type survives that trip.
"""

from __future__ import annotations

import ast
import re

__all__ = [
    "CacheFullError",
    "CopyRequiredError",
    "CorruptFileError",
    "DeviceMemoryError",
    "DtypeDriftError",
    "FileChangedError",
    "PoolExhaustedError",
    "RemoteShardError",
    "ResumeStateError",
    "SampleIndexError",
    "SchemaError",
    "ShapeMismatchError",
    "SharedMemoryExhaustedError",
    "SkippedFileWarning",
    "UnsupportedColumnError",
    "ZeroCopyError",
]


class ZeroCopyError(Exception):
    """Base of every error zcopy_data raises.

    Args:
        message: the whole human-readable message.
        field: the field it concerns, when known.
        index: the dataset index of the offending sample, when known.
    """

    def __init__(self, message: str = "", *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        if field is None and index is None and message:
            field, index = _parse_where(message)  # rebuilt from its message (a worker's error)
        self.field = field
        self.index = index


class SchemaError(ZeroCopyError, ValueError):
    """A sample, a batch or a configuration does not match its declared schema."""


class DtypeDriftError(SchemaError):
    """A field arrived with a different dtype than the schema declares; nothing is cast."""


class ShapeMismatchError(SchemaError):
    """A field arrived with a different shape than the schema declares, or samples differ."""


class CopyRequiredError(ZeroCopyError, ValueError):
    """The strict path was asked for a zero-copy tensor, and only a copy could give it."""


class SampleIndexError(ZeroCopyError, IndexError):
    """A sampler asked for an index that the dataset does not have."""


class UnsupportedColumnError(SchemaError):
    """A column's type or content (nulls, strings, dictionary, compression) has no zero-copy tensor."""


class CorruptFileError(SchemaError):
    """A source file is of an unknown format, truncated, or cannot be decoded; the message names it."""


class FileChangedError(ZeroCopyError, RuntimeError):
    """A file a dataset maps was replaced, truncated or rewritten after the dataset was built."""


class RemoteShardError(ZeroCopyError, OSError):
    """A shard in object storage could not be listed or downloaded; the message names its URL."""


class CacheFullError(RemoteShardError):
    """The local shard cache (its disk, or its ``cache_bytes`` budget) has no room for a shard."""


class SharedMemoryExhaustedError(ZeroCopyError, MemoryError):
    """A worker could not get shared memory for a batch: the pool limit or ``/dev/shm`` is full."""


class DeviceMemoryError(ZeroCopyError, MemoryError):
    """Data meant to live on a device does not fit in its free memory."""


class PoolExhaustedError(ZeroCopyError, RuntimeError):
    """Every buffer of a pool is still referenced; nothing can be reused without corrupting data."""


class ResumeStateError(ZeroCopyError, ValueError):
    """A saved loader or sampler state that does not fit the loader it is loaded into."""


class SkippedFileWarning(UserWarning):
    """A file was left out of a batch because it could not be decoded (``on_error="skip"``)."""


def describe(field: str | None, index: int | None) -> str:
    """The ``field 'x' at index 7`` prefix every message starts with (empty parts left out)."""
    parts = []
    if field is not None:
        parts.append(f"field {field!r}")
    if index is not None:
        parts.append(f"at index {index}")
    return " ".join(parts) if parts else "value"


_WHERE = re.compile(r"field ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?: at index (-?\d+))?|(?<![\w'])at index (-?\d+)")


def _parse_where(message: str) -> tuple[str | None, int | None]:
    """The field and index a message names in :func:`describe`'s words (last error line first)."""
    lines = [ln for ln in message.splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _WHERE.search(line)
        if m is None:
            continue
        field = None
        if m.group(1) is not None:
            try:
                field = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                field = None
        raw = m.group(2) or m.group(3)
        return field, None if raw is None else int(raw)
    return None, None
