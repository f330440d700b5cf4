"""Declared schemas and the configuration checks that keep dtypes from drifting.

A :class:`Schema` maps field names to :class:`Field` (dtype and per-sample shape). Datasets
declare one (or freeze one from sample 0); batches and configurations that disagree with it are
rejected with :class:`~zcopy_data.DtypeDriftError` or :class:`~zcopy_data.ShapeMismatchError`.
Nothing is ever cast to make them agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from zcopy_data._dtypes import dtype_name, to_torch_dtype
from zcopy_data.errors import DtypeDriftError, SchemaError, ShapeMismatchError, describe

__all__ = ["Field", "Schema", "schema_of", "value_spec"]

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Field:
    """One field of a sample: its dtype and per-sample shape (``None`` = variable dimension).

    >>> Field("uint8", (3, 64, 64))
    Field(dtype=torch.uint8, shape=(3, 64, 64))
    """

    dtype: torch.dtype
    shape: Shape = ()

    def __init__(self, dtype: Any, shape: tuple[int | None, ...] | list[int | None] = ()) -> None:
        try:
            norm = to_torch_dtype(dtype)
        except TypeError as err:
            raise SchemaError(f"Field dtype: {err}") from None
        dims = tuple(shape)
        for d in dims:
            if d is not None and (not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0):
                raise SchemaError(f"Field shape {dims!r}: each dimension must be an int >= 0 or None")
        object.__setattr__(self, "dtype", norm)
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in dims))

    @property
    def is_fixed(self) -> bool:
        """True when every dimension is known, so a batch of it can be allocated up front."""
        return None not in self.shape

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape, strict=False)
        )

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{dtype_name(self.dtype)}[{dims}]"


def value_spec(value: Any) -> tuple[torch.dtype, tuple[int, ...]] | None:
    """dtype and shape of one sample's value, as ``default_collate`` would batch it.

    Python floats are float64 and ints int64, as in ``default_collate``. ``None`` for values
    that are not numeric (strings, bytes, containers).
    """
    if isinstance(value, torch.Tensor):
        return value.dtype, tuple(value.shape)
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind in "OUSVMm":
            return None
        return to_torch_dtype(value.dtype), tuple(value.shape)
    if isinstance(value, bool):
        return torch.bool, ()
    if isinstance(value, int):
        return torch.int64, ()
    if isinstance(value, float):
        return torch.float64, ()
    return None


class Schema(Mapping[str, Field]):
    """An ordered, immutable mapping of field name to :class:`Field`.

    >>> s = Schema({"image": Field(torch.uint8, (3, 64, 64)), "label": Field(torch.int64)})
    >>> s["label"]
    Field(dtype=torch.int64, shape=())
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Field | Any]) -> None:
        norm: dict[str, Field] = {}
        for name, f in fields.items():
            if not isinstance(name, str):
                raise SchemaError(f"Schema field names must be str, found {name!r}")
            norm[name] = f if isinstance(f, Field) else Field(f)
        self._fields = norm

    @classmethod
    def from_sample(cls, sample: Any) -> Schema:
        """Freeze a schema from one sample: a dict (keys are names) or a tuple (names "0", "1", ...)."""
        items = sample_items(sample)
        fields = {}
        for name, value in items:
            spec = value_spec(value)
            if spec is None:
                raise SchemaError(
                    f"field {name!r}: cannot derive a schema from a {type(value).__name__}; "
                    "fields must be tensors, NumPy arrays or numbers. Declare the schema explicitly."
                )
            fields[name] = Field(*spec)
        return cls(fields)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> Schema:
        """A schema from columns whose first axis is the sample index."""
        fields = {}
        for name, col in columns.items():
            ragged = getattr(col, "ragged_spec", None)  # a variable-length column (zcopy_data.ragged)
            if ragged is not None:
                fields[name] = Field(*ragged)
                continue
            spec = value_spec(col)
            if spec is None or not spec[1]:
                raise SchemaError(
                    f"field {name!r}: a column must be a numeric array with a sample axis, "
                    f"found {type(col).__name__} {getattr(col, 'dtype', '')}".rstrip()
                )
            fields[name] = Field(spec[0], spec[1][1:])
        return cls(fields)

    def __getitem__(self, name: str) -> Field:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Schema):
            return list(self._fields.items()) == list(other._fields.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._fields.items()))

    def __repr__(self) -> str:
        return "Schema({" + ", ".join(f"{k!r}: {v}" for k, v in self._fields.items()) + "})"

    def check(self, name: str, dtype: torch.dtype, shape: tuple[int, ...], *, index: int | None = None) -> None:
        """Raise unless one sample's field ``name`` has this dtype and per-sample shape."""
        try:
            want = self._fields[name]
        except KeyError:
            raise SchemaError(
                f"{describe(name, index)}: not in the schema {list(self._fields)}; "
                "declare it in the schema or drop it from the sample",
                field=name,
                index=index,
            ) from None
        if dtype != want.dtype:
            raise DtypeDriftError(
                f"{describe(name, index)}: expected {dtype_name(want.dtype)}, found {dtype_name(dtype)}; "
                f"store it as {dtype_name(want.dtype)} or declare Field(torch.{dtype_name(dtype)}, ...). "
                "Nothing is cast on the host; casts belong on the device.",
                field=name,
                index=index,
            )
        if not want.accepts_shape(shape):
            raise ShapeMismatchError(
                f"{describe(name, index)}: expected shape {want.shape}, found {shape}; "
                "resize or pad it to the declared shape, or declare the varying dimension as None",
                field=name,
                index=index,
            )

    def check_sample(self, sample: Any, *, index: int | None = None) -> None:
        """Raise unless one sample has exactly this schema's fields, dtypes and shapes."""
        items = sample_items(sample)
        names = [n for n, _ in items]
        if names != list(self._fields):
            raise SchemaError(
                f"sample at index {index}: expected fields {list(self._fields)}, found {names}",
                index=index,
            )
        for name, value in items:
            spec = value_spec(value)
            if spec is None:
                raise SchemaError(
                    f"{describe(name, index)}: expected {self._fields[name]}, found a {type(value).__name__}",
                    field=name,
                    index=index,
                )
            self.check(name, *spec, index=index)

    def check_compatible(self, other: Schema, *, ours: str = "dataset", theirs: str = "model") -> None:
        """Configuration check: every field ``other`` needs exists here with its dtype and shape.

        The message shows both sides, so the drift can be fixed before the first batch.
        """
        for name, need in other.items():
            have = self._fields.get(name)
            if have is None:
                raise SchemaError(
                    f"field {name!r}: the {theirs} expects {need}, the {ours} has no such field "
                    f"(it has {list(self._fields)})",
                    field=name,
                )
            if have.dtype != need.dtype:
                raise DtypeDriftError(
                    f"field {name!r}: the {ours} gives {have}, the {theirs} expects {need}; "
                    f"change one side, or cast on the device with cast={{{name!r}: torch.{dtype_name(need.dtype)}}}",
                    field=name,
                )
            if len(have.shape) != len(need.shape) or any(
                a is not None and b is not None and a != b for a, b in zip(have.shape, need.shape, strict=False)
            ):
                raise ShapeMismatchError(
                    f"field {name!r}: the {ours} gives {have}, the {theirs} expects {need}",
                    field=name,
                )


def sample_items(sample: Any) -> list[tuple[str, Any]]:
    """A sample's ``(name, value)`` pairs: dict keys, or "0", "1", ... for a tuple or list."""
    if isinstance(sample, Mapping):
        return [(str(k), v) for k, v in sample.items()]
    if isinstance(sample, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(sample)]
    return [("0", sample)]


def schema_of(obj: Any, *, from_sample: bool = True) -> Schema | None:
    """The schema of a loader (its dataset's), a dataset, or a schema; ``None`` when unknowable.

    A dataset's own ``schema`` (a :class:`~zcopy_data.ZeroCopyDataset` declares or freezes one)
    comes first. A loader -- anything with a ``dataset`` that is not itself indexable, or a
    wrapper with a ``loader`` -- gives its dataset's. Any other map-style dataset gives a schema
    frozen from sample 0 when ``from_sample`` (dict keys, or ``"0"``, ``"1"``, ... for tuples).
    Iterable datasets, and samples that are not arrays or numbers, have none that can be known
    up front.

    >>> import numpy as np
    >>> from zcopy_data import NumpyDataset
    >>> schema_of(NumpyDataset({"x": np.zeros((4, 2), np.float32)}))
    Schema({'x': float32[2]})
    """
    if obj is None or isinstance(obj, Schema):
        return obj
    if isinstance(obj, IterableDataset):
        return None
    try:
        declared = getattr(obj, "schema", None)
    except SchemaError:
        return None  # a dataset that says it cannot know its schema
    if isinstance(declared, Schema):
        return declared
    indexable = hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
    if not indexable:
        for inner in ("dataset", "loader"):
            if hasattr(obj, inner):
                return schema_of(getattr(obj, inner), from_sample=from_sample)
        return None
    if not from_sample:
        return None
    try:
        if len(obj) == 0:
            return None
        return Schema.from_sample(obj[0])
    except (SchemaError, TypeError, NotImplementedError, KeyError, IndexError):
        return None
