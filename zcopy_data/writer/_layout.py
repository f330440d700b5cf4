"""The frozen column layout of a write: each field's dtype and fixed shape, or a string column.

A layout is frozen once (from the first sample, the first batch or a declared
:class:`~zcopy_data.Schema`) and every later sample is checked against it: a write never casts,
pads or guesses. It also knows the Arrow type of each column (``fixed_size_list``, nested for
more dimensions, with the shape in the field metadata key ``b"zcopy.shape"``) and how the index
file spells it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from zcopy_data._dtypes import dtype_name, numpy_dtype
from zcopy_data.errors import DtypeDriftError, SchemaError, ShapeMismatchError, describe
from zcopy_data.schema import Schema

__all__ = ["SHAPE_KEY", "STRING", "Column", "Layout"]

SHAPE_KEY = b"zcopy.shape"
"""Field metadata key holding a column's per-sample shape as JSON (``[32, 32, 3]``, ``[]``)."""

STRING = "string"
"""The dtype name the index gives a string column."""


@dataclass(frozen=True)
class Column:
    """One column: a fixed-shape tensor of ``dtype`` (``None`` for a string column)."""

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int, ...] = ()

    @property
    def is_string(self) -> bool:
        return self.dtype is None

    @property
    def row_bytes(self) -> int:
        """Bytes one sample takes in the file (a string column counts its offset only)."""
        return 4 if self.dtype is None else self.dtype.itemsize * math.prod(self.shape)

    def describe(self) -> str:
        return "str" if self.dtype is None else f"{dtype_name(self.dtype)}{list(self.shape)}"

    def arrow_field(self) -> pa.Field:
        if self.dtype is None:
            return pa.field(self.name, pa.string(), nullable=False)
        typ = pa.from_numpy_dtype(self.dtype)
        for d in reversed(self.shape):
            typ = pa.list_(pa.field("item", typ, nullable=False), d)
        return pa.field(self.name, typ, nullable=False, metadata={SHAPE_KEY: json.dumps(list(self.shape)).encode()})

    def to_json(self) -> dict[str, Any]:
        return {"dtype": STRING if self.dtype is None else self.dtype.name, "shape": list(self.shape)}


def column_of(name: str, value: Any, *, index: int | None) -> Column:
    """The column a converted value (an ``ndarray`` or a ``str``) freezes."""
    if isinstance(value, str):
        return Column(name, None)
    arr: np.ndarray[Any, Any] = value
    _check_storable(name, arr.dtype, index)
    return Column(name, arr.dtype, tuple(int(d) for d in arr.shape))


def _check_storable(name: str, dtype: np.dtype[Any], index: int | None) -> None:
    if dtype.kind == "b":
        raise SchemaError(
            f"{describe(name, index)}: booleans are bit-packed in Arrow, so no tensor can view them; "
            "store them as uint8 (np.asarray(v, np.uint8)) and compare with != 0 after loading",
            field=name,
            index=index,
        )
    if dtype.kind not in "iuf" or dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian):
        raise SchemaError(
            f"{describe(name, index)}: dtype {dtype_name(dtype)} cannot be written as a zero-copy column; "
            "store it as a little-endian integer or float array (complex: two float columns)",
            field=name,
            index=index,
        )


class Layout:
    """The ordered columns of a write, and the checks every sample goes through."""

    def __init__(self, columns: list[Column]) -> None:
        if not columns:
            raise SchemaError("a sample with no fields cannot be written; give each sample at least one field")
        self.columns = columns
        self.names = [c.name for c in columns]
        self._by_name = {c.name: c for c in columns}

    @classmethod
    def from_items(cls, items: list[tuple[str, Any]], *, index: int) -> Layout:
        return cls([column_of(name, value, index=index) for name, value in items])

    @classmethod
    def from_schema(cls, schema: Schema, first: list[tuple[str, Any]], *, index: int) -> Layout:
        """The declared tensor fields, plus the first sample's string fields the schema cannot name."""
        cols = []
        declared = dict(schema.items())
        for name, value in first:
            if name in declared:
                f = declared.pop(name)
                if not f.is_fixed:
                    raise SchemaError(
                        f"field {name!r}: declared shape {f.shape} has a variable dimension; the writer stores "
                        "fixed shapes only; resize or pad the field and declare every dimension",
                        field=name,
                    )
                try:
                    dt = numpy_dtype(f.dtype)
                except TypeError:
                    raise SchemaError(
                        f"field {name!r}: {f.dtype} has no Arrow type; declare float32 or view it as int16",
                        field=name,
                    ) from None
                _check_storable(name, dt, None)
                cols.append(Column(name, dt, tuple(int(d) for d in f.shape if d is not None)))
            elif isinstance(value, str):
                cols.append(Column(name, None))
            else:
                raise SchemaError(
                    f"{describe(name, index)}: not in the declared schema {list(schema)}; declare it or drop it "
                    "from the samples (only string fields may be left undeclared)",
                    field=name,
                    index=index,
                )
        if declared:
            missing = next(iter(declared))
            raise SchemaError(
                f"{describe(missing, index)}: declared in the schema but missing from the sample (it has "
                f"{[n for n, _ in first]}); add it to every sample or drop it from the schema",
                field=missing,
                index=index,
            )
        return cls(cols)

    def check_names(self, names: list[str], index: int) -> None:
        if names != self.names:
            raise SchemaError(
                f"sample at index {index}: expected fields {self.names}, found {names}; every sample needs the "
                "fields of the first one, in the same order",
                index=index,
            )

    def check_value(self, col: Column, value: Any, index: int) -> None:
        """Raise unless one converted value fits its column (no cast, no reshape)."""
        if col.dtype is None:
            if not isinstance(value, str):
                raise DtypeDriftError(
                    f"{describe(col.name, index)}: expected str, found {_found(value)}; make the field a str in "
                    "every sample (or a number in every sample)",
                    field=col.name,
                    index=index,
                )
            return
        if isinstance(value, str):
            raise DtypeDriftError(
                f"{describe(col.name, index)}: expected {col.describe()}, found str; make the field the same kind "
                "in every sample",
                field=col.name,
                index=index,
            )
        if value.dtype != col.dtype:
            raise DtypeDriftError(
                f"{describe(col.name, index)}: expected {dtype_name(col.dtype)}, found {dtype_name(value.dtype)}; "
                f"convert it to {dtype_name(col.dtype)} in the dataset, or pass "
                f"schema=Schema({{{col.name!r}: Field('{dtype_name(value.dtype)}', {col.shape})}}) if that is "
                "the dtype every sample has; nothing is cast",
                field=col.name,
                index=index,
            )
        if value.shape != col.shape:
            raise ShapeMismatchError(
                f"{describe(col.name, index)}: expected shape {col.shape}, found {tuple(value.shape)}; the writer "
                "stores fixed shapes: resize, pad or crop every sample to one shape before writing",
                field=col.name,
                index=index,
            )

    def check_batch(self, name: str, value: np.ndarray[Any, Any] | list[str], first: int) -> None:
        """Raise unless a whole column batch (sample axis first) fits its column.

        Readers hand string columns over as lists of ``str`` and every other column as one array.
        """
        col = self._by_name[name]
        if isinstance(value, list):
            if col.dtype is not None:
                self.check_value(col, "", first)  # a str where the column holds numbers
            return
        self.check_value(col, np.empty(value.shape[1:], value.dtype), first)

    @property
    def row_bytes(self) -> int:
        return max(1, sum(c.row_bytes for c in self.columns))

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([c.arrow_field() for c in self.columns])

    def to_json(self) -> dict[str, Any]:
        return {c.name: c.to_json() for c in self.columns}


def _found(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{dtype_name(value.dtype)}{list(value.shape)}"
    return type(value).__name__

