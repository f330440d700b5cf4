"""The shards of an ``ArrowDataset``: footers read at construction, files mapped lazily, one gather.

Opening a sharded source reads each shard's schema and record batch sizes from its footer (file
format) or message headers (stream format) through a mapping that is closed at once, so no data
page is read and no descriptor stays open. Each shard is opened as a one-file ``ArrowDataset``
on first use, through a bounded cache (:class:`~zcopy_data.datasets._shards.ShardCache`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from zcopy_data._mapping import FileIdentity, check_unchanged, identity_of
from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets._arrow_bools import UNPACK_REASON
from zcopy_data.datasets._shard_gather import SpanPlanner, plan_gather, span_gather
from zcopy_data.datasets._shards import ChunkTable, ShardCache, check_same
from zcopy_data.errors import CorruptFileError, DtypeDriftError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation
from zcopy_data.ragged import gather_target, segment_rows, segments_output
from zcopy_data.schema import Schema

if TYPE_CHECKING:
    from zcopy_data.datasets._arrow_ragged import RaggedColumn
    from zcopy_data.datasets.arrow import ArrowDataset

__all__ = ["ArrowShards", "ShardInfo", "scan_shard"]


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's footer says: its identity, schema, rows per record batch, and its format."""

    path: str
    identity: FileIdentity | None  # None: a shard fetched on first use, whose file the opener finds
    schema: pa.Schema
    batch_rows: tuple[int, ...]
    stream: bool
    dictionaries: dict[str, tuple[Any, ...]]  # dictionary columns: the first non-empty record batch's


def scan_shard(path: str) -> ShardInfo:
    """Read one shard's schema and record batch sizes, touching its metadata only."""
    try:
        identity = identity_of(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such Arrow shard: {path!r}") from None
    if not os.path.isfile(path):
        raise CorruptFileError(f"{path!r} is not a regular file; a shard is an Arrow IPC file")
    try:
        with pa.memory_map(path) as source:
            head = source.read(6)
            source.seek(0)
            if head == b"ARROW1":
                reader = pa.ipc.open_file(source)
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
                schema, stream = reader.schema, False
            elif head[:4] == b"\xff\xff\xff\xff":
                sreader = pa.ipc.open_stream(source)
                batches = list(sreader)
                schema, stream = sreader.schema, True
            else:
                raise CorruptFileError(f"{path!r}: not an Arrow IPC file (no ARROW1 magic); a shard is Arrow IPC")
            rows = tuple(b.num_rows for b in batches)
            first = next((b for b in batches if b.num_rows), None)
            dictionaries = {  # read while the file is mapped: the batches view it
                f.name: tuple(first.column(f.name).dictionary.to_pylist())
                for f in schema
                if first is not None and pa.types.is_dictionary(f.type)
            }
            del batches, first
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise CorruptFileError(
            f"{path!r}: cannot read it as an Arrow IPC file ({err}); the shard is truncated or corrupt, write it again"
        ) from None
    return ShardInfo(path, identity, schema, rows, stream, dictionaries)


def check_schemas(infos: Sequence[ShardInfo], wanted: Sequence[str]) -> None:
    """Every shard has the wanted columns with the first shard's Arrow types; a drifting one is named."""
    first = infos[0].schema
    for i, info in enumerate(infos[1:], start=1):
        where = f"shard {i} {info.path!r}"
        names = info.schema.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise SchemaError(
                f"{where}: columns {missing} not found (it has {names}); the first shard has them; "
                "every shard needs one schema",
                field=missing[0],
            )
        for c in wanted:
            check_same(where, c, first.field(c).type, info.schema.field(c).type)
            _check_dictionary(where, c, infos[0], info)


def _check_dictionary(where: str, name: str, first: ShardInfo, info: ShardInfo) -> None:
    """A dictionary column's indices mean one thing in every shard: one dictionary (or an extension of it).

    Remapping another shard's indices would cost a copy of every batch from it, so it is refused.
    """
    if name not in first.dictionaries or name not in info.dictionaries:
        return
    ours, theirs = first.dictionaries[name], info.dictionaries[name]
    short, long = sorted((ours, theirs), key=len)
    if long[: len(short)] != short:
        raise SchemaError(
            f"{where}: field {name!r} has the dictionary {list(theirs)[:6]}, the first shard {list(ours)[:6]}; the "
            "same index would mean different values; fix: write every shard with one dictionary (a polars "
            "Enum, or pyarrow's unify_dictionaries before splitting), or leave the column out",
            field=name,
        )


def _views_of(reader: ArrowDataset) -> dict[str, list[np.ndarray[Any, Any]]]:
    return reader._views


_NAMED_SHARDS = 3
"""A copy's ledger reason names the shards its rows came from up to this many."""
_MANY_SHARDS = f"rows from more than {_NAMED_SHARDS} shards"


class ArrowShards:
    """Global indices over several Arrow shards, each a one-file ``ArrowDataset`` opened on demand.

    Args:
        infos: the shards, in dataset order (from :func:`scan_shard`).
        open_one: opens shard ``path`` with the identity it was scanned with.
        fields: the tensor fields of the dataset (strings excluded).
        max_open: shards mapped at once.
        check_files: check the open shards' files against their identities every batch; off for
            shards in a download cache, verified when fetched and safe to unlink while mapped.
    """

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        open_one: Callable[[str, FileIdentity | None], ArrowDataset],
        fields: Sequence[str],
        max_open: int,
        *,
        check_files: bool = True,
    ) -> None:
        self.infos = list(infos)
        self.check_files = check_files
        self._open_one = open_one  # picklable: workers open their shards themselves
        self.fields = list(fields)
        rows: list[int] = []
        shard_of: list[int] = []
        local: list[int] = []
        for s, info in enumerate(self.infos):
            nonempty = [r for r in info.batch_rows if r]
            rows += nonempty
            shard_of += [s] * len(nonempty)
            local += range(len(nonempty))
        self.table = ChunkTable(rows, shard_of, local, self.fields)
        self.max_open = max_open
        self.cache = self._new_cache()
        self.expected: Schema | None = None  # the first shard's schema, once it is open
        self._spec_cache: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None
        self._reasons: dict[tuple[int, ...], str] = {}  # rows_from's, by the shards touched

    def _new_cache(self) -> ShardCache[ArrowDataset]:
        cache: ShardCache[ArrowDataset] = ShardCache(
            self._open,
            self.max_open,
            lambda s, r: self.table.note_open(s, r._views),
            path_of=(lambda s: self.infos[s].path) if self.check_files else None,
        )
        self.planner = SpanPlanner(self.table, cache, _views_of)
        return cache

    def _open(self, s: int) -> ArrowDataset:
        info = self.infos[s]
        reader = self._open_one(info.path, info.identity)
        if self.expected is not None and reader.schema != self.expected:
            for name, f in self.expected.items():
                got = reader.schema[name]
                if got != f:
                    raise DtypeDriftError(
                        f"shard {s} {info.path!r}: field {name!r} has samples of {got}, the first shard {f}; "
                        "every shard needs one dtype and shape; fix: write the shard again with the first one's",
                        field=name,
                    )
        want = sum(info.batch_rows)
        if len(reader) != want:
            raise CorruptFileError(f"shard {s} {info.path!r}: {len(reader)} rows, its footer said {want}")
        found = np.diff(reader._starts).tolist()
        if found != [r for r in info.batch_rows if r]:  # chunk numbers would point at other rows
            raise CorruptFileError(
                f"shard {s} {info.path!r}: record batches of {found[:8]} rows, the shard was listed with "
                f"{[r for r in info.batch_rows if r][:8]}; the index does not describe this file; fix: write the "
                "index again (zcopy_data.write), or remove it so the shards' footers are read"
            )
        return reader

    def __len__(self) -> int:
        return self.table.rows

    def shard(self, s: int) -> ArrowDataset:
        return self.cache.get(s)

    def check_unchanged(self) -> None:
        """The shards opened in this process are still the files they were scanned as.

        Every batch: a ``stat`` of each open shard whose file saw a change since the last batch
        (of every open shard where files cannot be watched); a shard is also checked when opened.
        """
        if self.check_files:
            self.cache.check_some(self._check)

    def _check(self, s: int) -> None:
        info = self.infos[s]
        if info.identity is not None:
            check_unchanged(info.path, info.identity)

    def item(self, i: int) -> dict[str, Any]:
        c, k = self.table.chunk_of(i)
        s = int(self.table.shard_of[c])
        reader = self.shard(s)
        return reader[int(self.table.starts[c] - self.table.starts[self.table.first_chunk[s]]) + k]

    def view_chunk(self, run: Run) -> tuple[ArrowDataset, int, int] | None:
        """``(reader, chunk in it, row in chunk)`` when ``run`` lies inside one chunk."""
        c, k = self.table.chunk_of(run[0])
        if run[1] > int(self.table.starts[c + 1]):
            return None
        return self.shard(int(self.table.shard_of[c])), int(self.table.local[c]), k

    def gather(self, indices: Indices, allocation: Allocation, why: str) -> dict[str, torch.Tensor]:
        """One ``index_select`` per field into one buffer, whichever shards the rows live in."""
        chunk = self.table.chunks_of(indices)
        why = f"{why}; {self.rows_from(chunk)}"
        plan = self.planner.plan_for(chunk)
        if plan is None:  # more shards than may be open at once: each touched one held for this batch
            return self._gather_held(chunk, indices - self.table.starts[chunk], allocation, why)
        out = plan_gather(plan, chunk, indices, allocation, self._specs())
        for name, buf in out.items():
            record(COLLATE, name, why, copied=nbytes(buf))
        return out

    def rows_from(self, chunk: Indices) -> str:
        """The shards a copy's rows came from, for its ledger reason: named up to 3, else counted
        as "more than 3" (one reason, so a shuffled epoch over many shards stays one ledger row).

        Runs once per batch: two reductions and a lookup of the reason already formatted.
        """
        shards = self.table.shard_of[chunk]
        if shards.size == 0:
            return "no rows"
        lo, hi = int(shards.min()), int(shards.max())
        if lo == hi:
            key: tuple[int, ...] = (lo,)
        else:
            flags = np.zeros(hi - lo + 1, dtype=bool)
            flags[shards - lo] = True
            touched = np.flatnonzero(flags)
            if touched.size > _NAMED_SHARDS:
                return _MANY_SHARDS
            key = tuple((touched + lo).tolist())
        found = self._reasons.get(key)
        if found is None:
            names = ", ".join(repr(os.path.basename(self.infos[s].path.rstrip("/"))) for s in key)
            found = self._reasons[key] = f"rows from shard{'s' if len(key) > 1 else ''} {names}"
        return found

    def _specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Each tensor field's dtype and per-sample shape (the first open shard's, every shard's)."""
        if self._spec_cache is None:
            assert self.expected is not None  # set once the first shard is open, before any batch
            shapes = {n: tuple(d or 0 for d in f.shape) for n, f in self.expected.items()}
            self._spec_cache = {n: (self.expected[n].dtype, shapes[n]) for n in self.fields}
        return self._spec_cache

    def _gather_held(
        self, chunk: Indices, within: Indices, allocation: Allocation, why: str
    ) -> dict[str, torch.Tensor]:
        touched = np.unique(self.table.shard_of[chunk])
        with self.cache.lock:  # hold every touched shard, and read addresses consistent with them
            held = {int(s): self.shard(int(s)) for s in touched}
            addresses = {f: self.table.addresses[f][chunk] for f in self.fields}
        out = {}
        for name in self.fields:
            addr = addresses[name]
            c = int(chunk[int(np.argmin(addr))])
            base_view = held[int(self.table.shard_of[c])]._views[name][int(self.table.local[c])]
            buf = span_gather(name, addr, within, base_view, allocation)
            record(COLLATE, name, why, copied=nbytes(buf))
            out[name] = buf
        del held  # the shards may be unmapped from here on: the batch owns its bytes
        return out

    def take_ragged(self, name: str, indices: Indices, run: Run | None, allocation: Allocation) -> Any:
        """A ragged column of a batch: a view for a run inside one chunk, else one gather of exactly its values.

        Each picked sample's values lie in its chunk's values buffer; every touched shard is held
        while the rows are read, through one strided source over their mappings (:func:`span_gather`).
        """
        if run is not None and run[0] < run[1]:
            found = self.view_chunk(run)
            if found is not None and found[0]._ragged[name].output != "padded":
                reader, c, k = found
                where = f"; rows from shard {os.path.basename(reader.path.rstrip('/'))!r}"
                return reader._ragged[name].view(c, k, k + run[1] - run[0], allocation, where)
        chunk, within = self.table.locate(indices)
        begins = np.zeros(indices.size, dtype=np.int64)
        lengths = np.zeros(indices.size, dtype=np.int64)
        addresses = np.zeros(indices.size, dtype=np.int64)
        with self.cache.lock:  # hold every touched shard while its rows are read
            held = {int(s): self.shard(int(s)) for s in np.unique(self.table.shard_of[chunk])}
        base_view: np.ndarray[Any, Any] | None = None
        col: RaggedColumn | None = None
        for c in np.unique(chunk).tolist():
            col = held[int(self.table.shard_of[c])]._ragged[name]
            local = int(self.table.local[c])
            pos = np.flatnonzero(chunk == c)
            off, values = col.offsets[local], col.values[local]
            begins[pos] = off[within[pos]]
            lengths[pos] = off[within[pos] + 1] - begins[pos]
            addresses[pos] = values.ctypes.data
            if values.size and (base_view is None or values.ctypes.data < base_view.ctypes.data):
                base_view = values
        if col is None:  # an empty batch: its column of the first open shard says the dtype and shape
            col = self.shard(int(self.table.shard_of[0]) if self.table.shard_of.size else 0)._ragged[name]
        cu, rows = segment_rows(begins, lengths)
        target = gather_target(col.output, allocation)
        if base_view is None:  # no picked sample holds a value
            field = col.field
            seg = target((0, *(d or 0 for d in field.shape[1:])), field.dtype)
        else:
            seg = span_gather(name, np.repeat(addresses, lengths), rows, base_view, target)
        del held  # the shards may be unmapped from here on: the batch owns its bytes
        where = f"; {self.rows_from(chunk)}"
        return segments_output(name, col.output, col.pad_value, seg, lengths, cu, allocation, where)

    def take_bools(self, name: str, indices: Indices, allocation: Allocation, origin: str) -> torch.Tensor:
        """A bool column of a batch across shards, unpacked into one ``torch.bool`` buffer (counted once)."""
        chunk = self.table.chunks_of(indices)
        shards = self.table.shard_of[chunk]
        buf = allocation((indices.size,), torch.bool)
        out = buf.numpy().view(np.uint8)
        for s in np.unique(shards).tolist():
            pos = np.flatnonzero(shards == s)
            base = int(self.table.starts[self.table.first_chunk[s]])
            self.shard(s)._bools[name].unpack_into(out, pos, indices[pos] - base)
        why = f"{UNPACK_REASON} (bools='unpack', {origin}); {self.rows_from(chunk)}"
        record(COLLATE, name, why, copied=buf.numel())
        return buf

    def take_text(self, name: str, indices: Indices, origin: str) -> list[str]:
        """A string column of a batch across shards, each shard's rows taken once (counted there)."""
        chunk, _ = self.table.locate(indices)
        shards = self.table.shard_of[chunk]
        out: list[str] = [""] * indices.size
        for s in np.unique(shards):
            pos = np.flatnonzero(shards == s)
            base = int(self.table.starts[self.table.first_chunk[s]])
            got = self.shard(int(s))._text[name].take(indices[pos] - base, COLLATE, origin)
            for p, v in zip(pos.tolist(), got, strict=True):
                out[p] = v
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("cache")
        state.pop("planner")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cache = self._new_cache()
