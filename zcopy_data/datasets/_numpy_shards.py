"""A ``NumpyDataset`` whose fields are sharded over several ``.npy`` files (a list or a glob per field).

Each shard's header is read at construction (dtype, shape, data offset; the file is closed again),
shards are checked against each other, and mapped copy-on-write on first use through a bounded
cache. Fields may be cut into shards at different rows: each field has its own global index. A
batch inside one shard of a field is a view of it, any other one ``index_select`` into one buffer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zcopy_data._dtypes import dtype_name, to_torch_dtype
from zcopy_data._mapping import FileIdentity, check_unchanged
from zcopy_data._requests import Indices, Run, as_index
from zcopy_data._storage import nbytes
from zcopy_data.datasets._npy_files import load_npy, read_npy_header
from zcopy_data.datasets._shard_gather import SpanPlanner, plan_gather, span_gather
from zcopy_data.datasets._shards import DEFAULT_MAX_OPEN, ChunkTable, ShardCache, expand_paths
from zcopy_data.errors import DtypeDriftError, SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Field, Schema

__all__ = ["NpyShard", "ShardedField", "is_sharded", "shard_paths"]


def is_sharded(src: object) -> bool:
    """Whether a column source names several ``.npy`` files: a list / tuple of paths, or a glob."""
    if isinstance(src, (list, tuple)):  # of paths: a list of numbers is data, refused as before
        return bool(src) and all(isinstance(p, (str, os.PathLike)) for p in src)
    return isinstance(src, (str, os.PathLike)) and expand_paths(src, "NumpyDataset") is not None


def shard_paths(name: str, src: Any) -> list[str]:
    found = expand_paths(src, f"field {name!r}")
    assert found is not None
    return found


@dataclass(frozen=True)
class NpyShard:
    """One ``.npy`` shard as its header describes it."""

    path: str
    identity: FileIdentity
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class ShardedField:
    """One field over its ``.npy`` shards: global rows, a bounded cache of mappings, views and gathers."""

    def __init__(self, name: str, paths: Sequence[str], max_open: int) -> None:

        self.name = name
        self.shards: list[NpyShard] = []
        for i, p in enumerate(paths):
            shape, dtype, identity, fortran = read_npy_header(p, field=name)
            where = f"field {name!r}: shard {i} {p!r}"
            if fortran and len(shape) > 1:
                raise SchemaError(
                    f"{where} is stored in Fortran order; a shard's rows must be contiguous; fix: "
                    "np.save(path, np.ascontiguousarray(np.load(path)))",
                    field=name,
                )
            if not shape:
                raise SchemaError(f"{where} holds a 0-d array; a shard needs a sample axis", field=name)
            if not dtype.isnative:
                raise SchemaError(
                    f"{where} stores non-native byte order {dtype_name(dtype)}; fix: np.save(path, "
                    f"np.load(path).astype({dtype.newbyteorder('=').str!r}))",
                    field=name,
                )
            shard = NpyShard(p, identity, shape, dtype)
            if self.shards and (shard.dtype, shard.shape[1:]) != (self.shards[0].dtype, self.shards[0].shape[1:]):
                first = self.shards[0]
                raise DtypeDriftError(
                    f"{where} holds {dtype_name(dtype)} samples of shape {shape[1:]}, shard 0 {first.path!r} holds "
                    f"{dtype_name(first.dtype)} of shape {first.shape[1:]}; every shard needs one dtype and shape; "
                    "fix: save the drifting shard again with shard 0's dtype and shape",
                    field=name,
                )
            self.shards.append(shard)
        n = len(self.shards)
        self.table = ChunkTable([s.shape[0] for s in self.shards], range(n), [0] * n, [name])
        self.max_open = max_open
        self.cache = self._new_cache()

    def _new_cache(self) -> ShardCache[np.ndarray[Any, Any]]:
        cache: ShardCache[np.ndarray[Any, Any]] = ShardCache(
            self._open,
            self.max_open,
            lambda s, arr: self.table.note_open(s, {self.name: [arr]}),
            path_of=lambda s: self.shards[s].path,
        )
        self.planner = SpanPlanner(self.table, cache, self._views_of)
        return cache

    def _views_of(self, arr: np.ndarray[Any, Any]) -> dict[str, list[np.ndarray[Any, Any]]]:
        return {self.name: [arr]}

    def _open(self, s: int) -> np.ndarray[Any, Any]:

        shard = self.shards[s]
        arr: np.ndarray[Any, Any] = load_npy(shard.path, field=self.name, identity=shard.identity)[0]
        return arr

    @property
    def field(self) -> Field:
        first = self.shards[0]
        return Field(to_torch_dtype(first.dtype), first.shape[1:])

    def __len__(self) -> int:
        return self.table.rows

    def item(self, i: int) -> np.ndarray[Any, Any]:
        c, k = self.table.chunk_of(i)
        row: np.ndarray[Any, Any] = self.cache.get(c)[k]
        return row

    def is_view(self, run: Run) -> bool:
        c, _ = self.table.chunk_of(run[0])
        return run[1] <= int(self.table.starts[c + 1])

    def view(self, run: Run) -> torch.Tensor:
        c, k = self.table.chunk_of(run[0])
        return torch.from_numpy(self.cache.get(c)[k : k + run[1] - run[0]])

    def gather(self, indices: Indices, allocation: Allocation) -> torch.Tensor:
        chunk = self.table.chunks_of(indices)
        plan = self.planner.plan_for(chunk)
        if plan is not None:
            first = self.shards[0]
            spec = {self.name: (to_torch_dtype(first.dtype), first.shape[1:])}
            return plan_gather(plan, chunk, indices, allocation, spec)[self.name]
        within = indices - self.table.starts[chunk]
        with self.cache.lock:  # hold every touched shard, and read addresses consistent with them
            held = {int(s): self.cache.get(int(s)) for s in np.unique(chunk)}
            addr = self.table.addresses[self.name][chunk]
        base = held[int(chunk[int(np.argmin(addr))])]
        return span_gather(self.name, addr, within, base, allocation)

    def check_unchanged(self) -> None:
        """Open shards are still their files: a ``stat`` of each one whose file saw a change (all of
        them where files cannot be watched), every batch."""
        self.cache.check_some(self._check)

    def _check(self, s: int) -> None:
        check_unchanged(self.shards[s].path, self.shards[s].identity)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("cache")
        state.pop("planner")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cache = self._new_cache()


class ShardedColumns:
    """The fields of a sharded ``NumpyDataset``: one :class:`ShardedField` each, one length."""

    def __init__(self, sources: Mapping[str, Any], max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.fields: dict[str, ShardedField] = {}
        for name, src in sources.items():
            if isinstance(src, np.ndarray):
                raise SchemaError(
                    f"field {name!r}: an in-memory array next to sharded fields; save it with np.save and pass "
                    "its path (or pass every field as one array or one path)",
                    field=name,
                )
            paths = shard_paths(name, src) if is_sharded(src) else [os.fspath(src)]
            self.fields[name] = ShardedField(name, paths, max_open)
        lengths = {n: len(f) for n, f in self.fields.items()}
        if len(set(lengths.values())) > 1:
            raise SchemaError(
                f"fields have different numbers of samples {lengths}; every field needs one row per sample"
            )
        self.n = next(iter(lengths.values()))
        self.schema = Schema({n: f.field for n, f in self.fields.items()})

    def item(self, index: int) -> dict[str, np.ndarray[Any, Any]]:
        i = as_index(index)
        if not -self.n <= i < self.n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {self.n} samples", index=i)
        return {n: f.item(i % self.n) for n, f in self.fields.items()}

    def is_view(self, run: Run | None) -> bool:
        return run is not None and run[0] < run[1] and all(f.is_view(run) for f in self.fields.values())

    def build(self, indices: Indices, run: Run | None, allocation: Allocation, copy: bool) -> dict[str, torch.Tensor]:
        out = {}
        for name, f in self.fields.items():
            if indices.size == 0:
                out[name] = torch.empty((0, *(d or 0 for d in f.field.shape)), dtype=f.field.dtype)
                continue
            if run is not None and not copy and f.is_view(run):
                t = f.view(run)
                record(COLLATE, name, "view: indices contiguous in one .npy shard", viewed=nbytes(t))
            else:
                t = f.gather(indices, allocation)
                why = "copy=True" if copy and run is not None else "indices not contiguous or span shards"
                record(COLLATE, name, f"gather: {why} (.npy shards)", copied=nbytes(t))
            out[name] = t
        return out

    def check_unchanged(self) -> None:
        for f in self.fields.values():
            f.check_unchanged()
