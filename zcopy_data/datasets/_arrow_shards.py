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
from zcopy_data.datasets._shards import ChunkTable, ShardCache, check_same, span_gather
from zcopy_data.errors import CorruptFileError, DtypeDriftError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Schema

if TYPE_CHECKING:
    from zcopy_data.datasets.arrow import ArrowDataset

__all__ = ["ArrowShards", "ShardInfo", "scan_shard"]


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's footer says: its identity, schema, rows per record batch, and its format."""

    path: str
    identity: FileIdentity
    schema: pa.Schema
    batch_rows: tuple[int, ...]
    stream: bool


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
                rows = tuple(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
                schema, stream = reader.schema, False
            elif head[:4] == b"\xff\xff\xff\xff":
                sreader = pa.ipc.open_stream(source)
                rows = tuple(b.num_rows for b in sreader)
                schema, stream = sreader.schema, True
            else:
                raise CorruptFileError(f"{path!r}: not an Arrow IPC file (no ARROW1 magic); a shard is Arrow IPC")
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise CorruptFileError(
            f"{path!r}: cannot read it as an Arrow IPC file ({err}); the shard is truncated or corrupt, write it again"
        ) from None
    return ShardInfo(path, identity, schema, rows, stream)


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


class ArrowShards:
    """Global indices over several Arrow shards, each a one-file ``ArrowDataset`` opened on demand.

    Args:
        infos: the shards, in dataset order (from :func:`scan_shard`).
        open_one: opens shard ``path`` with the identity it was scanned with.
        fields: the tensor fields of the dataset (strings excluded).
        max_open: shards mapped at once.
    """

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        open_one: Callable[[str, FileIdentity], ArrowDataset],
        fields: Sequence[str],
        max_open: int,
    ) -> None:
        self.infos = list(infos)
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

    def _new_cache(self) -> ShardCache[ArrowDataset]:
        return ShardCache(self._open, self.max_open, lambda s, r: self.table.note_open(s, r._views))

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
        return reader

    def __len__(self) -> int:
        return self.table.rows

    def shard(self, s: int) -> ArrowDataset:
        return self.cache.get(s)

    def check_unchanged(self) -> None:
        """Every shard opened in this process is still the file it was scanned as (one ``stat`` each)."""
        for s, info in enumerate(self.infos):
            if self.cache.is_open(s):
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
        chunk, within = self.table.locate(indices)
        touched = np.unique(self.table.shard_of[chunk])
        with self.cache.lock:  # hold every touched shard, and read addresses consistent with them
            held = {int(s): self.shard(int(s)) for s in touched}
            addresses = {f: self.table.addresses[f][chunk] for f in self.fields}
        out = {}
        for name in self.fields:
            addr = addresses[name]
            low = int(np.argmin(addr))
            c = int(chunk[low])
            base_view = held[int(self.table.shard_of[c])]._views[name][int(self.table.local[c])]
            buf = span_gather(name, addr, within, base_view, allocation)
            record(COLLATE, name, why, copied=nbytes(buf))
            out[name] = buf
        del held  # the shards may be unmapped from here on: the batch owns its bytes
        return out

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
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cache = self._new_cache()
