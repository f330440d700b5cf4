"""Sources as column batches: rows ``lo:hi`` of a dataset as one array (or list of ``str``) per field.

Three kinds of map-style source, fastest first:

* a :class:`~zcopy_data.ZeroCopyDataset` (NumPy, Arrow, an image folder decoded and resized here):
  one batch request per record batch, built by the dataset itself (views, or one decode per image
  straight into the batch);
* a Hugging Face ``datasets.Dataset``: rows read a slice at a time, each column in its feature's dtype;
* anything with ``__len__`` and ``__getitem__``: samples converted one by one into one buffer per field.

An iterable without ``__len__`` is read in order by :class:`SampleStream`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from zcopy_data.errors import SchemaError
from zcopy_data.ledger import DECODE, record
from zcopy_data.schema import Schema, sample_items
from zcopy_data.writer._hf import hf_columns, is_hf_dataset
from zcopy_data.writer._layout import Column, Layout, column_of
from zcopy_data.writer._values import to_value

__all__ = ["ColumnBatch", "MapReader", "SampleStream", "encode_samples", "freeze", "freeze_items", "map_reader"]

ColumnBatch = dict[str, "np.ndarray[Any, Any] | list[str]"]


class MapReader(Protocol):
    """Rows of a map-style source, as column batches."""

    def __len__(self) -> int: ...

    def read(self, lo: int, hi: int, layout: Layout | None) -> ColumnBatch: ...


def freeze(reader: MapReader, schema: Schema | None) -> Layout:
    """The layout of ``reader``'s rows, from ``schema`` and its first row."""
    items = [(name, col[0]) for name, col in reader.read(0, 1, None).items()]
    return freeze_items(items, schema)


def freeze_items(items: list[tuple[str, Any]], schema: Schema | None) -> Layout:
    """The layout of sample 0 (its raw ``(name, value)`` pairs), or ``schema`` checked against it."""
    if schema is not None:
        return Layout.from_schema(schema, items, index=0)
    return Layout([column_of(name, to_value(value, name, 0, None), index=0) for name, value in items])


def _check_columns(batch: ColumnBatch, lo: int, hi: int, layout: Layout | None) -> ColumnBatch:
    if layout is None:
        return batch
    layout.check_names(list(batch), lo)
    for name, col in batch.items():
        if len(col) != hi - lo:
            raise SchemaError(
                f"field {name!r}: rows {lo}:{hi} gave {len(col)} samples instead of {hi - lo}; the source must "
                "give one sample per index (an image folder with on_error='skip' cannot be written: use 'raise')",
                field=name,
                index=lo,
            )
        layout.check_batch(name, col, lo)
    return batch


class _ZeroCopyReader:
    """A :class:`~zcopy_data.ZeroCopyDataset`: one batch request per record batch, built by the dataset."""

    def __init__(self, source: Any) -> None:
        from zcopy_data.memory.policy import HostAllocation

        self.source = source
        self.allocation = HostAllocation(per_shape=2)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, lo: int, hi: int, layout: Layout | None) -> ColumnBatch:
        from zcopy_data.collate import zero_copy_collate

        batch = zero_copy_collate(self.source.__getitems__(list(range(lo, hi))), allocation=self.allocation)
        out: ColumnBatch = {}
        for name, col in sample_items(batch):
            if isinstance(col, torch.Tensor):
                out[name] = col.numpy()
            elif isinstance(col, list) and all(isinstance(v, str) for v in col):
                out[name] = col
            else:
                raise SchemaError(
                    f"field {name!r}: the dataset's batch holds a {type(col).__name__}; only tensors and str "
                    "can be written",
                    field=name,
                    index=lo,
                )
        return _check_columns(out, lo, hi, layout)


class _HFReader:
    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def read(self, lo: int, hi: int, layout: Layout | None) -> ColumnBatch:
        return _check_columns(hf_columns(self.source, lo, hi), lo, hi, layout)


class _SampleReader:
    """Any ``__len__`` + ``__getitem__`` source: samples converted one by one."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def read(self, lo: int, hi: int, layout: Layout | None) -> ColumnBatch:
        samples = [self.source[i] for i in range(lo, hi)]
        if layout is None:  # freezing: the first sample as it is, unconverted
            return {name: [v] for name, v in sample_items(samples[0])}
        return encode_samples(samples, lo, layout)


def map_reader(source: Any) -> MapReader:
    """The fastest reader for a map-style ``source``."""
    from zcopy_data.datasets.base import ZeroCopyDataset

    if isinstance(source, ZeroCopyDataset):
        return _ZeroCopyReader(source)
    if is_hf_dataset(source):
        return _HFReader(source)
    return _SampleReader(source)


def encode_samples(samples: list[Any], first: int, layout: Layout) -> ColumnBatch:
    """Samples ``first, first + 1, ...`` checked against ``layout`` and copied into one buffer per field."""
    n = len(samples)
    bufs: list[np.ndarray[Any, Any] | list[str]] = [
        [] if c.dtype is None else np.empty((n, *c.shape), dtype=c.dtype) for c in layout.columns
    ]
    cols: list[Column] = layout.columns
    for k, sample in enumerate(samples):
        index = first + k
        items = sample_items(sample)
        if len(items) != len(cols) or any(name != c.name for (name, _), c in zip(items, cols, strict=False)):
            layout.check_names([name for name, _ in items], index)
        for (name, raw), col, buf in zip(items, cols, bufs, strict=True):
            value = to_value(raw, name, index, col)
            layout.check_value(col, value, index)
            if isinstance(buf, list):
                buf.append(value)  # type: ignore[arg-type]
            else:
                buf[k] = value
    for col, buf in zip(cols, bufs, strict=True):
        if not isinstance(buf, list):
            record(DECODE, col.name, "write: samples copied into one column buffer", copied=buf.nbytes)
    return dict(zip(layout.names, bufs, strict=True))


class SampleStream:
    """An iterable without ``__len__``, read once in order; ``first()`` peeks at sample 0."""

    def __init__(self, source: Iterable[Any]) -> None:
        self._it: Iterator[Any] = iter(source)
        self._head: list[Any] = []

    def first(self) -> Any:
        if not self._head:
            try:
                self._head.append(next(self._it))
            except StopIteration:
                raise SchemaError("the source is empty; there is nothing to write") from None
        return self._head[0]

    def take(self, n: int) -> list[Any]:
        """The next ``n`` samples (fewer at the end)."""
        head, self._head = self._head, []
        return head + list(itertools.islice(self._it, n - len(head)))
