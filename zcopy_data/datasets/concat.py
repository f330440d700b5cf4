"""``concat(*datasets)``: zero-copy datasets end to end as one, still a view or one gather per batch.

``torch.utils.data.ConcatDataset`` has no ``__getitems__``, so a ``DataLoader`` over it fetches
sample by sample. :func:`concat` keeps the batched path: a batch inside one member is that
member's batch (a view when the member gives one); any other batch is one ``index_select`` per
field into one buffer when every member it touches is an in-memory / ``.npy`` column or a
one-file ``ArrowDataset`` (rows are read straight out of each member's memory); other members
build their part and it is placed into the buffer (one more copy, counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from zcopy_data._requests import Indices, Run, as_index, contiguous_run
from zcopy_data._storage import nbytes
from zcopy_data.datasets._shard_gather import span_gather
from zcopy_data.datasets.base import ZeroCopyDataset
from zcopy_data.errors import SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation

__all__ = ["ConcatZeroCopyDataset", "concat"]


def concat(*datasets: ZeroCopyDataset | ConcatDataset[Any]) -> ConcatZeroCopyDataset:
    """The datasets one after another, as one zero-copy dataset (a ``ConcatDataset`` is unpacked).

    >>> import numpy as np
    >>> from zcopy_data.datasets import NumpyDataset
    >>> ds = concat(NumpyDataset({"x": np.arange(3)}), NumpyDataset({"x": np.arange(3, 5)}))
    >>> len(ds), int(ds[4]["x"])
    (5, 4)
    """
    members: list[ZeroCopyDataset] = []
    for d in datasets:
        inner = d.datasets if isinstance(d, ConcatDataset) else [d]
        for m in inner:
            if isinstance(m, ConcatDataset):
                members += concat(m).members
            elif isinstance(m, ConcatZeroCopyDataset):
                members += m.members
            elif isinstance(m, ZeroCopyDataset):
                members.append(m)
            else:
                raise SchemaError(
                    f"concat: member {len(members)} is a {type(m).__name__}, not a ZeroCopyDataset; "
                    "wrap it in a ZeroCopyDataset (or use torch's ConcatDataset, sample by sample)"
                )
    return ConcatZeroCopyDataset(members)


def _row_views(member: ZeroCopyDataset, field: str, local: Indices) -> tuple[list[np.ndarray[Any, Any]], Any] | None:
    """The C-contiguous arrays a member's rows of ``field`` live in, and each index's array; else ``None``."""
    from zcopy_data.datasets.arrow import ArrowDataset

    if isinstance(member, ArrowDataset):
        if member._shards is not None or member._reopen_error is not None:
            return None
        starts = member._starts
        chunk = np.searchsorted(starts, local, side="right") - 1 if len(starts) > 2 else np.zeros_like(local)
        return member._views[field], chunk
    if member.is_columnar and not member.gathers_batches:
        col = member._zc_columns()[field]
        if isinstance(col, np.ndarray) and col.flags.c_contiguous and col.flags.writeable:
            return [col], np.zeros_like(local)
    return None


class ConcatZeroCopyDataset(ZeroCopyDataset):
    """Several zero-copy datasets with one schema, indexed end to end (see :func:`concat`)."""

    def __init__(self, members: Sequence[ZeroCopyDataset]) -> None:
        if not members:
            raise SchemaError("concat needs at least one dataset")
        self.members = list(members)
        for i, m in enumerate(self.members):
            if getattr(m, "_text_names", None):
                raise SchemaError(
                    f"concat: member {i} serves string columns as lists ({m._text_names}); concat serves tensor "  # type: ignore[attr-defined]
                    "fields only; leave those columns out with columns=[...]"
                )
        first = self.members[0].schema
        for i, m in enumerate(self.members[1:], start=1):
            if list(m.schema) != list(first):
                raise SchemaError(f"concat: member {i} has fields {list(m.schema)}, member 0 has {list(first)}")
            m.schema.check_compatible(first, ours=f"member {i}", theirs="member 0")
        self.schema = first
        self.starts = np.zeros(len(self.members) + 1, dtype=np.int64)
        np.cumsum([len(m) for m in self.members], out=self.starts[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def threads_suffice(self) -> bool:
        return all(m.threads_suffice for m in self.members)

    def _member(self, i: int) -> tuple[int, int]:
        m = int(np.searchsorted(self.starts, i, side="right")) - 1
        return m, i - int(self.starts[m])

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        i = as_index(index)
        if not -n <= i < n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {n} samples", index=i)
        m, k = self._member(i % n)
        return self.members[m][k]

    def batch_is_view(self, run: Run | None) -> bool:
        if run is None or run[0] >= run[1]:
            return False
        m, k = self._member(run[0])
        return run[1] <= int(self.starts[m + 1]) and self.members[m].batch_is_view((k, k + run[1] - run[0]))

    def check_sources(self) -> None:
        for m in self.members:
            m.check_sources()

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        """A member's own batch inside one member, else one gather per field across members."""
        if indices.size and run is not None:
            m, k = self._member(run[0])
            if run[1] <= int(self.starts[m + 1]):
                local = indices - self.starts[m]
                return self.members[m].build_batch(local, (k, k + run[1] - run[0]), allocation)
        if indices.size == 0:
            return {n: torch.empty((0, *(d or 0 for d in f.shape)), dtype=f.dtype) for n, f in self.schema.items()}
        self.check_sources()
        member = np.searchsorted(self.starts, indices, side="right") - 1
        local = indices - self.starts[member]
        used = np.unique(member)
        out = {}
        for name in self.schema:
            placed = self._one_gather(name, member, local, used, allocation)
            out[name] = placed if placed is not None else self._placed(name, member, local, used, allocation)
        return out

    def _one_gather(
        self, name: str, member: Indices, local: Indices, used: Indices, allocation: Allocation
    ) -> torch.Tensor | None:
        views: list[np.ndarray[Any, Any]] = []
        view_of = np.empty_like(local)
        for m in used.tolist():
            pos = member == m
            found = _row_views(self.members[m], name, local[pos])
            if found is None:
                return None
            arrays, which = found
            view_of[pos] = which + len(views)
            views += arrays
        addresses = np.asarray([v.ctypes.data for v in views], dtype=np.int64)
        within = local - self._view_starts(views, member, local, view_of)
        row_addr = addresses[view_of]
        base = views[int(view_of[int(np.argmin(row_addr))])]
        buf = span_gather(name, row_addr, within, base, allocation)
        record(COLLATE, name, "gather: indices span concatenated datasets", copied=nbytes(buf))
        return buf

    def _view_starts(
        self, views: list[np.ndarray[Any, Any]], member: Indices, local: Indices, view_of: Indices
    ) -> Indices:
        """Per index, the member-local row where its view starts (0 for columns, the chunk start for Arrow)."""
        from zcopy_data.datasets.arrow import ArrowDataset

        starts = np.zeros_like(local)
        offset = 0
        for m in np.unique(member).tolist():
            ds = self.members[m]
            pos = member == m
            if isinstance(ds, ArrowDataset):
                starts[pos] = ds._starts[view_of[pos] - offset]
                offset += len(ds._starts) - 1
            else:
                offset += 1
        del views
        return starts

    def _placed(
        self, name: str, member: Indices, local: Indices, used: Indices, allocation: Allocation
    ) -> torch.Tensor:
        """Members with no row view build their part; it is placed into one buffer (a second copy)."""
        f = self.schema[name]
        out = allocation((local.size, *(d or 0 for d in f.shape)), f.dtype)
        for m in used.tolist():
            pos = np.flatnonzero(member == m)
            part_idx = local[pos]
            part = self.members[m].build_batch(part_idx, contiguous_run(part_idx), allocation)[name]
            out.index_copy_(0, torch.from_numpy(pos), part)
            record(COLLATE, name, "copy: a member's part placed into the concatenated batch", copied=nbytes(part))
        return out

    def __repr__(self) -> str:
        return f"concat({len(self.members)} datasets, {len(self)} samples, {self.schema})"
