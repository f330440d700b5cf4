"""The error tree: every error is also a built-in, and keeps its field and index from its message alone.

PyTorch re-raises an error from a ``DataLoader`` worker as ``type(message)``: the field and index
must come back from the message, or they arrive as ``None``.
"""

from __future__ import annotations

import pickle

import pytest

from zcopy_data import errors
from zcopy_data.errors import (
    CopyRequiredError,
    DtypeDriftError,
    FileChangedError,
    SampleIndexError,
    SchemaError,
    ZeroCopyError,
    describe,
)


def test_every_error_is_also_a_builtin() -> None:
    assert issubclass(SchemaError, ValueError) and issubclass(DtypeDriftError, ValueError)
    assert issubclass(CopyRequiredError, ValueError) and issubclass(SampleIndexError, IndexError)
    assert issubclass(FileChangedError, RuntimeError) and issubclass(FileChangedError, ZeroCopyError)
    assert errors.__all__ == sorted(errors.__all__)


@pytest.mark.parametrize(
    ("message", "field", "index"),
    [
        ("field 'x' at index 7: expected float32, found float64", "x", 7),
        (
            "Caught DtypeDriftError in DataLoader worker process 0.\nTraceback...\nfield 'img.r' at index 12: bad",
            "img.r",
            12,
        ),
        ("field 'a b' : no index here", "a b", None),
        ("at index 3: out of range", None, 3),
        ("nothing to see", None, None),
        ('field "it\'s" at index -1: quoted', "it's", -1),
    ],
)
def test_field_and_index_come_back_from_the_message(message: str, field: str | None, index: int | None) -> None:
    err = DtypeDriftError(message)  # what PyTorch does with an error from a worker
    assert (err.field, err.index) == (field, index)


def test_explicit_field_and_index_win_and_survive_pickling() -> None:
    err = SchemaError(f"{describe('y', 4)}: missing", field="y", index=4)
    assert str(err).startswith("field 'y' at index 4")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is SchemaError and (again.field, again.index) == ("y", 4)
    assert describe(None, None) == "value" and describe("z", None) == "field 'z'"
