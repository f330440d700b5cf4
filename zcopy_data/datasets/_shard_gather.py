"""The gather of a sharded source: one ``index_select`` per field, whichever shards the rows live in.

Every row is a fixed number of bytes at a known address, so the address range from the lowest
open chunk to the highest, seen as rows ``g`` bytes apart (``g`` the greatest common divisor of
the row size and the chunks' distances), is one strided tensor that holds every row of every open
chunk. ``index_select`` copies each row with one ``memcpy`` whatever the row step, so a batch is
one copy per byte. The tensor (a :class:`SpanPlan`) is rebuilt only when the set of open shards
changes, so a batch does no per-shard Python work; only the touched rows are read, and the plan
holds the mappings it reads while a batch uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from zcopy_data.datasets._shards import ChunkTable, ShardCache
from zcopy_data.errors import CorruptFileError
from zcopy_data.memory.gather import take_rows
from zcopy_data.memory.policy import Allocation

__all__ = ["SpanPlan", "SpanPlanner", "plan_gather", "span_gather"]

R = TypeVar("R")


def span_gather(
    name: str,
    chunk_addresses: np.ndarray[Any, Any],
    within: np.ndarray[Any, Any],
    base_view: np.ndarray[Any, Any],
    allocation: Allocation,
) -> torch.Tensor:
    """One ``index_select`` of rows that lie in several mappings, into one buffer of ``allocation``.

    Args:
        name: the field, for messages.
        chunk_addresses: per output row, the address of its chunk's first row (every one mapped
            and held by the caller for the duration of the call).
        within: per output row, its row number inside that chunk.
        base_view: a chunk view (``(rows, *shape)``, C-contiguous) that starts at the lowest
            address in ``chunk_addresses``; the strided source is laid over it.
        allocation: makes the output buffer.
    """
    dtype = base_view.dtype
    dims = base_view.shape[1:]
    itemsize = dtype.itemsize
    row = itemsize * math.prod(dims)
    n = within.size
    if row == 0:
        return allocation((n, *dims), torch.from_numpy(base_view[:0]).dtype)
    base = base_view.ctypes.data
    rel = chunk_addresses - base
    if rel.size and int(rel.min()) < 0:
        raise AssertionError("base_view must start at the lowest chunk address")
    g = _row_unit(name, np.unique(rel), row, itemsize)
    step = row // g
    rows = rel // g + within * step
    span = int(rows.max()) + 1 if n else 1
    inner = tuple(itemsize * math.prod(dims[i + 1 :]) for i in range(len(dims)))
    flat = base_view.reshape(-1)
    source = np.lib.stride_tricks.as_strided(flat, shape=(span, *dims), strides=(g, *inner))
    return take_rows(torch.from_numpy(source), torch.from_numpy(rows), allocation)


@dataclass(frozen=True)
class SpanPlan:
    """Every open chunk's rows of each field as one strided tensor, for one set of open shards.

    ``sources[field]`` is ``(source, offset, step)``: global row ``i`` of chunk ``c`` is
    ``source[offset[c] + i * step]`` (``source`` is ``None`` for a field whose rows hold no bytes);
    ``is_open[c]`` says whether chunk ``c`` is in the plan. ``held`` keeps the
    mappings those rows live in alive while a batch uses the plan, even if the cache lets them go.
    """

    generation: int
    is_open: np.ndarray[Any, Any]
    sources: dict[str, tuple[torch.Tensor | None, np.ndarray[Any, Any], int]]
    held: tuple[object, ...]


class SpanPlanner(Generic[R]):
    """The :class:`SpanPlan` of a cache's open shards, rebuilt only when that set changes.

    A batch then costs one ``searchsorted``, one lookup of the open mask and one ``index_select``
    per field: no per-shard Python work, however many shards its rows come from.

    Args:
        table: the chunks.
        cache: the open shards.
        views: a reader's chunk views per field (``(rows, *shape)``, C-contiguous, in ``table.local`` order).
    """

    def __init__(
        self, table: ChunkTable, cache: ShardCache[R], views: Callable[[R], dict[str, list[np.ndarray[Any, Any]]]]
    ) -> None:
        self.table = table
        self.cache = cache
        self.views = views
        self._plan: SpanPlan | None = None

    def plan_for(self, chunk: np.ndarray[Any, Any]) -> SpanPlan | None:
        """A plan covering the shards of every chunk in ``chunk`` (opened now if needed); ``None``
        when they are more than the cache may hold at once."""
        with self.cache.lock:
            plan = self._plan
            current = plan is not None and plan.generation == self.cache.generation
            if current and plan is not None and bool(plan.is_open[chunk].all()):
                return plan
            touched = np.unique(self.table.shard_of[chunk])
            if touched.size > self.cache.max_open:
                return None
            for s in touched.tolist():
                self.cache.get(s)
            self._plan = plan = self._build()
            return plan

    def _build(self) -> SpanPlan:
        opened = self.cache.opened()
        first_chunk = self.table.first_chunk
        chunks = np.concatenate(
            [np.arange(first_chunk[s], first_chunk[s + 1]) for s, _ in opened] or [np.zeros(0, np.int64)]
        )
        is_open = np.zeros(len(self.table.shard_of), dtype=bool)
        is_open[chunks] = True
        readers = dict(opened)
        sources = {}
        for name, addresses in self.table.addresses.items():
            if chunks.size == 0:
                continue
            addr = addresses[chunks]
            c = int(chunks[int(np.argmin(addr))])
            base_view = self.views(readers[int(self.table.shard_of[c])])[name][int(self.table.local[c])]
            sources[name] = _span_source(name, addresses, chunks, self.table.starts, base_view)
        return SpanPlan(self.cache.generation, is_open, sources, tuple(readers.values()))


def _row_unit(name: str, rel: np.ndarray[Any, Any], row: int, itemsize: int) -> int:
    """The strided source's row step in bytes: the gcd of every chunk's offset and the row size.

    It must be a whole number of elements; otherwise the chunks cannot share one strided view.
    """
    g = int(np.gcd.reduce(rel, initial=row))
    if g % itemsize:
        raise CorruptFileError(
            f"field {name!r}: the shards' values are not aligned to {itemsize} bytes; a gather needs aligned rows; "
            "fix: write the shards again with pyarrow or np.save (both align buffers)",
            field=name,
        )
    return g


def _span_source(
    name: str,
    addresses: np.ndarray[Any, Any],
    chunks: np.ndarray[Any, Any],
    starts: np.ndarray[Any, Any],
    base_view: np.ndarray[Any, Any],
) -> tuple[torch.Tensor | None, np.ndarray[Any, Any], int]:
    """The strided source over ``chunks`` (first rows at ``addresses``) laid over ``base_view``, the lowest."""
    dtype, dims = base_view.dtype, base_view.shape[1:]
    itemsize = dtype.itemsize
    row = itemsize * math.prod(dims)
    if row == 0:
        return None, np.zeros(0, np.int64), 1
    base = base_view.ctypes.data
    rel = addresses[chunks] - base
    g = _row_unit(name, rel, row, itemsize)
    step = row // g
    # chunks not open are never read (the plan's mask says which are): their offsets are left as they come
    offset = (addresses - base) // g - starts[:-1] * step
    last = offset[chunks] + (starts[chunks + 1] - 1) * step
    inner = tuple(itemsize * math.prod(dims[i + 1 :]) for i in range(len(dims)))
    flat = base_view.reshape(-1)
    source = np.lib.stride_tricks.as_strided(flat, shape=(int(last.max()) + 1, *dims), strides=(g, *inner))
    return torch.from_numpy(source), offset, step


def plan_gather(
    plan: SpanPlan,
    chunk: np.ndarray[Any, Any],
    indices: np.ndarray[Any, Any],
    allocation: Allocation,
    fields: dict[str, tuple[torch.dtype, tuple[int, ...]]],
) -> dict[str, torch.Tensor]:
    """Each field's global rows ``indices`` (in chunks ``chunk``) by one ``index_select`` from ``plan``."""
    out = {}
    for name, (dtype, dims) in fields.items():
        source, offset, step = plan.sources.get(name, (None, np.zeros(0, np.int64), 1))
        if source is None:
            out[name] = allocation((chunk.size, *dims), dtype)
            continue
        rows = offset[chunk]
        rows += indices * step if step != 1 else indices
        out[name] = take_rows(source, torch.from_numpy(rows), allocation)
    return out
