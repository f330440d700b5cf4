"""The errors zcopy_data raises, in one small tree.

::

    ZeroCopyError
    ├── SchemaError (ValueError)             a sample, batch or configuration disagrees with a schema
    │   ├── DtypeDriftError                  ... on a dtype
    │   └── ShapeMismatchError               ... on a shape
    ├── CopyRequiredError (ValueError)       honouring the request would need a hidden copy
    └── SampleIndexError (IndexError)        an index outside the dataset

Every class also inherits a built-in, so ``except ValueError`` keeps working. Each can be
rebuilt from its message string alone: PyTorch re-raises an error from a ``DataLoader`` worker as
``type(err)(message)``, and the type survives that trip.
"""

from __future__ import annotations

__all__ = [
    "CopyRequiredError",
    "DtypeDriftError",
    "SampleIndexError",
    "SchemaError",
    "ShapeMismatchError",
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


def describe(field: str | None, index: int | None) -> str:
    """The ``field 'x' at index 7`` prefix every message starts with (empty parts left out)."""
    parts = []
    if field is not None:
        parts.append(f"field {field!r}")
    if index is not None:
        parts.append(f"at index {index}")
    return " ".join(parts) if parts else "value"
