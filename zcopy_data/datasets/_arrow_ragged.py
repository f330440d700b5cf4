"""Arrow ``list`` / ``large_list`` columns whose lists differ in length, served as ragged fields.

Each record batch of such a column is two buffers in the file: the offsets (``n + 1`` integers)
and the child values. Both are read in place from the mapping: the offsets are checked once
(never negative, never decreasing, never past the values) and a null list or value is refused,
then every batch is, as :mod:`zcopy_data.ragged` describes, a view of the values plus ``B + 1``
rebased offsets (a contiguous run inside one record batch) or one gather of exactly its
samples' values, reading them straight out of the mapping whichever record batch they live in.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zcopy_data._dtypes import to_torch_dtype
from zcopy_data.datasets._arrow_columns import ColumnSpec, chunk_view, column_spec, nulls_refused, row_source
from zcopy_data.errors import UnsupportedColumnError
from zcopy_data.memory.policy import Allocation
from zcopy_data.ragged import check_offsets, gather_segments, view_segments
from zcopy_data.schema import Field

__all__ = ["RaggedColumn", "ragged_value_spec"]

_Ints = np.ndarray[Any, np.dtype[np.int64]]


def ragged_value_spec(name: str, typ: pa.DataType) -> ColumnSpec:
    """The spec of one value of a variable-length list column (its inner shape fixed), or an error with the fix."""
    storage = typ.storage_type if isinstance(typ, pa.BaseExtensionType) else typ
    if pa.types.is_fixed_size_list(storage):
        raise UnsupportedColumnError(
            f"field {name!r}: Arrow type {typ} has one length for every list already; "
            "fix: leave it out of ragged= (it is served as a fixed-shape tensor)",
            field=name,
        )
    if not (pa.types.is_list(storage) or pa.types.is_large_list(storage)):
        raise UnsupportedColumnError(
            f"field {name!r}: ragged= names Arrow lists (list or large_list), found {typ}; "
            "fix: leave it out of ragged=",
            field=name,
        )
    return column_spec(name, storage.value_type)


class RaggedColumn:
    """One variable-length list column of an IPC file: per record batch, its values and checked offsets."""

    def __init__(self, name: str, typ: pa.DataType, output: str, pad_value: Any, where: str) -> None:
        self.name = name
        self.output = output
        self.pad_value = pad_value
        self.where = where
        self.spec = ragged_value_spec(name, typ)
        self.values: list[np.ndarray[Any, Any]] = []  # per non-empty record batch: (values, *inner), a view
        self.offsets: list[_Ints] = []  # per non-empty record batch: rows + 1 offsets into its values
        self._segments: tuple[torch.Tensor, _Ints, _Ints, int] | None = None

    def add_chunk(self, arr: pa.Array, mapped: np.ndarray[Any, Any], base: int, *, batch: int, row0: int) -> None:
        """Read record batch ``batch``'s offsets and values in place, with every check a batch relies on."""
        name, rows = self.name, len(arr)
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        nulls_refused(arr, name, batch, row0)
        wide = pa.types.is_large_list(arr.type)
        raw = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)[arr.offset : arr.offset + rows + 1]
        child = arr.values
        values, _ = chunk_view(child, self.spec, mapped, base, batch=batch, row0=row0)
        off = check_offsets(raw, int(values.shape[0]), name, where=f"{self.where} record batch {batch}", row0=row0)
        self.values.append(values)
        self.offsets.append(off)

    @property
    def field(self) -> Field:
        """``Field(dtype, (None, *inner))``: the schema field of one sample."""
        inner = self.values[0].shape[1:] if self.values else tuple(d or 0 for d in self.spec.dims)
        return Field(to_torch_dtype(self.spec.dtype), (None, *inner))

    def lengths(self) -> _Ints:
        """The length of every sample, record batch after record batch (from the offsets; no value read)."""
        return np.concatenate([np.diff(o) for o in self.offsets]) if self.offsets else np.zeros(0, np.int64)

    def item(self, c: int, k: int) -> np.ndarray[Any, Any]:
        """Sample ``k`` of chunk ``c``: a view of its values."""
        off = self.offsets[c]
        return self.values[c][int(off[k]) : int(off[k + 1])]

    def view(self, c: int, k: int, stop: int, allocation: Allocation, where: str = "") -> Any:
        """Samples ``k:stop`` of chunk ``c`` ("packed"/"nested"): a view of the values, ``B + 1`` offsets copied."""
        t = torch.from_numpy(self.values[c])
        return view_segments(self.name, self.output, t, self.offsets[c][k : stop + 1], allocation, where)

    def gather(self, mapped: np.ndarray[Any, Any], indices: _Ints, allocation: Allocation) -> Any:
        """The samples ``indices`` (dataset-wide): one copy of exactly their values."""
        source, begins, lengths, step = self._segments_over(mapped)
        return gather_segments(
            self.name, self.output, self.pad_value, source, begins[indices], lengths[indices], allocation, step
        )

    def _segments_over(self, mapped: np.ndarray[Any, Any]) -> tuple[torch.Tensor, _Ints, _Ints, int]:
        """The mapping as value rows, and each sample's first row in it and length (once per process)."""
        if self._segments is None:
            field = self.field
            inner = tuple(d or 0 for d in field.shape[1:])
            lengths = self.lengths()
            filled = [c for c, v in enumerate(self.values) if v.size]
            if not math.prod(inner) or not filled:  # no value holds a byte: every batch is empty rows
                source = torch.empty((0, *inner), dtype=field.dtype)
                self._segments = (source, np.zeros(lengths.size, np.int64), lengths, 1)
                return self._segments
            source, first, step = row_source(self.name, mapped, field.dtype, inner, [self.values[c] for c in filled])
            starts = np.zeros(len(self.values), dtype=np.int64)
            starts[filled] = first
            begins = np.concatenate([starts[c] + o[:-1] * step for c, o in enumerate(self.offsets)])
            self._segments = (source, begins, lengths, step)
        return self._segments
