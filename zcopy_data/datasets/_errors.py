"""Errors and warnings of the file-backed sources, placed under the core tree.

::

    SchemaError (ValueError)
    ├── UnsupportedColumnError     a column that cannot become a zero-copy tensor
    └── CorruptFileError           a file that is missing its format, truncated or undecodable

    SkippedFileWarning (UserWarning)   one per file left out under ``on_error="skip"``

Both errors rebuild from their message alone, like every error in :mod:`zcopy_data.errors`.
"""

from __future__ import annotations

from zcopy_data.errors import SchemaError

__all__ = ["CorruptFileError", "SkippedFileWarning", "UnsupportedColumnError"]


class UnsupportedColumnError(SchemaError):
    """A column's Arrow type or content (nulls, strings, dictionary, compression) has no zero-copy tensor."""


class CorruptFileError(SchemaError):
    """A source file is of an unknown format, truncated, or cannot be decoded; the message names it."""


class SkippedFileWarning(UserWarning):
    """A file was left out of a batch because it could not be decoded (``on_error="skip"``)."""
