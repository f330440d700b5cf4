"""``ArrowDataset``: Arrow IPC / Feather v2 files, memory-mapped copy-on-write, served zero-copy.

The file is mapped once per process with a private (copy-on-write) mapping and pyarrow reads its
metadata from that mapping, so every column chunk is a NumPy view of file pages: a batch inside
one record batch is a view, any other batch is exactly one ``index_select`` per field that reads
rows straight out of the mapping, whichever record batch they live in. Writes to a batch touch
private pages only: never the file, never a SIGSEGV, no "non-writable" warning.

Several files (a list, a glob, a folder of shards) are one dataset with global indices: each
shard is mapped on first use through a bounded cache, and a batch across shards is still one
``index_select`` per field (:mod:`zcopy_data.datasets._shards`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zcopy_data._dtypes import to_torch_dtype
from zcopy_data._mapping import FileIdentity, check_unchanged, file_array, identity_of
from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets._arrow_bools import BOOLS, BoolColumn
from zcopy_data.datasets._arrow_columns import (
    ColumnSpec,
    check_names,
    chunk_view,
    column_spec,
    dictionary_of,
    row_source,
)
from zcopy_data.datasets._arrow_images import ImageColumn, image_settings, refuse_undeclared, take_images
from zcopy_data.datasets._arrow_ragged import RaggedColumn
from zcopy_data.datasets._arrow_shards import ArrowShards, ShardInfo, check_schemas, scan_shard
from zcopy_data.datasets._arrow_strings import STRINGS, StringColumn, is_string_type
from zcopy_data.datasets._decode_cache import decoded_cache, default_cache_dir
from zcopy_data.datasets._image_decode import DecodeSpec
from zcopy_data.datasets._shards import DEFAULT_MAX_OPEN, arrow_shard_files
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import CorruptFileError, FileChangedError, SampleIndexError, SchemaError, UnsupportedColumnError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.gather import take_rows
from zcopy_data.memory.policy import Allocation
from zcopy_data.ragged import ragged_settings
from zcopy_data.schema import Field, Schema

__all__ = ["ArrowDataset", "default_cache_dir", "open_ipc"]

_MAGIC = {
    b"PAR1": "a Parquet file; use ArrowDataset.from_parquet(path)",
    b"FEA1": "a Feather v1 file; rewrite it as Feather v2 (pyarrow.feather.write_feather(table, path, version=2))",
    b"\x93NUM": "a .npy file; use NumpyDataset({'name': path})",
}


def _map_file(path: str, identity: FileIdentity | None) -> tuple[np.ndarray[Any, Any], FileIdentity]:
    try:
        found = identity_of(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such Arrow file: {path!r}") from None
    if identity is not None and found != identity:
        check_unchanged(path, identity)  # another file now: FileChangedError, whatever it is
    if os.path.isdir(path):
        raise CorruptFileError(f"{path!r} is a directory, not an Arrow IPC file")
    if not os.path.isfile(path):
        raise CorruptFileError(f"{path!r} is not a regular file (a FIFO, device or socket); only files are read")
    if found.size < 8:
        raise CorruptFileError(f"{path!r}: {found.size} bytes is too short for an Arrow IPC file (truncated?)")
    identity = identity or found
    return file_array(path, 0, (identity.size,), np.dtype(np.uint8), identity=identity, shared=False), identity


def open_ipc(
    path: str, identity: FileIdentity | None = None
) -> tuple[np.ndarray[Any, Any], pa.Schema, list[pa.RecordBatch], FileIdentity]:
    """Map ``path`` copy-on-write and read its record batches (file or stream format) from the mapping.

    ``identity``: the file the dataset was built on (a different one raises ``FileChangedError``).
    """
    mapped, identity = _map_file(path, identity)
    head = bytes(mapped[:6])
    buf = pa.py_buffer(mapped)
    # Native byte order is not forced: a big-endian file stays in the mapping and is refused below,
    # so nothing is swapped (copied) behind the user's back.
    opts = pa.ipc.IpcReadOptions(ensure_native_endian=False, use_threads=False)
    try:
        if head == b"ARROW1":
            reader = pa.ipc.open_file(buf, options=opts)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        elif head[:4] == b"\xff\xff\xff\xff":
            stream = pa.ipc.open_stream(buf, options=opts)
            reader, batches = stream, list(stream)
        else:
            what = _MAGIC.get(head[:4], "not an Arrow IPC file (no ARROW1 magic)")
            raise CorruptFileError(f"{path!r}: {what}")
        for b in batches:
            b.validate()
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, OSError) as err:
        raise CorruptFileError(
            f"{path!r}: cannot read it as an Arrow IPC file ({err}); the file is truncated or corrupt, write it again"
        ) from None
    check_names(repr(path), reader.schema)
    return mapped, reader.schema, batches, identity


def _buffers_outside(batch: pa.RecordBatch, base: int, size: int) -> bool:
    def walk(arr: pa.Array) -> bool:
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        if any(b is not None and b.size and not (base <= b.address < base + size) for b in arr.buffers()):
            return True
        return hasattr(arr, "values") and walk(arr.values)

    return any(walk(col) for col in batch.columns)


def _check_byte_order(path: str, mapped: np.ndarray[Any, Any], batches: list[pa.RecordBatch]) -> None:
    """Refuse a non-native byte order: pyarrow would swap it into new memory (a hidden copy)."""
    pos = next((i for i, b in enumerate(batches) if b.num_rows), None)
    if pos is None:
        return
    base, size = mapped.ctypes.data, mapped.size
    if _buffers_outside(batches[pos], base, size):
        return  # compressed: reported per column, with its own fix
    buf = pa.py_buffer(mapped)
    if bytes(mapped[:6]) == b"ARROW1":
        native = pa.ipc.open_file(buf).get_batch(pos)
    else:
        native = list(pa.ipc.open_stream(buf))[pos]
    if _buffers_outside(native, base, size):
        raise UnsupportedColumnError(
            f"{path!r}: the file is stored in non-native (big-endian) byte order; a zero-copy tensor needs native "
            "order; fix: rewrite it once with pyarrow on a little-endian machine (read it, then write it again)"
        )


def _check_types(schema: pa.Schema, *, strings: str, bools: str = "error", served: set[str] | None = None) -> None:
    """Refuse a column whose type can never be served before spending a decode on it: not one
    read in place, and not one a setting serves (``strings``, ``bools``, and the ``served``
    names of ``images=`` / ``ragged=``, checked by the dataset itself once the cache is built)."""
    for f in schema:
        if strings == "list" and is_string_type(f.type):
            continue
        if (bools == "unpack" and pa.types.is_boolean(f.type)) or f.name in (served or ()):
            continue
        column_spec(f.name, f.type)


def _chunks(
    spec: ColumnSpec, numbered: list[tuple[int, pa.RecordBatch]], mapped: np.ndarray[Any, Any], starts: Any
) -> tuple[list[np.ndarray[Any, Any]], tuple[int, ...]]:
    """The views of one column, one per non-empty record batch, and its per-sample shape."""
    chunks, shape = [], None
    base = mapped.ctypes.data
    for pos, (i, b) in enumerate(numbered):
        view, got = chunk_view(b.column(spec.name), spec, mapped, base, batch=i, row0=int(starts[pos]))
        if shape is not None and got != shape:
            raise UnsupportedColumnError(
                f"field {spec.name!r}: record batch {i} has samples of shape {got}, earlier ones {shape}; "
                "a batch needs one shape; fix: write every list with one length",
                field=spec.name,
            )
        shape = got
        chunks.append(view)
    if shape is None:
        shape = tuple(d or 0 for d in spec.dims)
    return chunks, shape


def _open_shard(
    path: str,
    identity: FileIdentity,
    *,
    columns: list[str],
    copy: bool,
    strings: str,
    bools: str,
    ragged: Mapping[str, Mapping[str, Any]],
    images: Mapping[str, DecodeSpec] | None = None,
    first_rows: Mapping[str, int] | None = None,
) -> ArrowDataset:
    """One shard of a sharded ``ArrowDataset``: a one-file dataset over the file it was scanned as.

    ``first_rows``: each shard's first dataset index (its image errors name dataset indices).
    """
    row0 = (first_rows or {}).get(path, 0)
    return ArrowDataset(
        path, columns, copy=copy, strings=strings, bools=bools, ragged=ragged, images=images, _identity=identity,
        _row0=row0,
    )  # fmt: skip


class ArrowDataset(ZeroCopyDataset):
    """Arrow IPC (file or stream) or Feather v2 files, read zero-copy from private mappings.

    Args:
        path: the ``.arrow`` / ``.arrows`` / ``.feather`` file; or several as one dataset: a list
            of files, a glob (``"data/*.arrow"``, sorted), or a folder -- its
            ``zcopy_index.json`` (shard order, sizes checked), else a Hugging Face
            ``save_to_disk`` folder (``state.json`` order), else its sorted ``*.arrow`` /
            ``*.feather`` / ``*.ipc`` files. Shards must agree on the selected columns' types.
        columns: the fields to serve, in this order (default: every column). Columns left out may
            have any type.
        copy: copy contiguous batches too (counted), so in-place ops never reach the mapping.
        strings: ``"list"`` serves string columns as Python lists of ``str`` (copies, counted in
            the ledger; not part of ``schema``); default ``"error"`` refuses them.
        bools: ``"unpack"`` unpacks bit-packed bool columns into ``torch.bool`` batches (a copy,
            counted, contiguous batches too); default ``"error"`` refuses them.
        max_open: shards mapped at once (each holds a file descriptor); older ones are unmapped
            once no batch views them.
        ragged: ``list`` / ``large_list`` columns whose lists differ in length, served as
            variable-length fields (schema ``(None, *inner)``), by name: ``"packed"`` (values
            plus ``int32`` ``cu_seqlens``), ``"padded"`` or ``"nested"``, or ``{"output": ...,
            "pad_value": ...}`` (:mod:`zcopy_data.ragged`). Offsets are checked once; a batch of
            consecutive samples in one record batch is a view of the values.
        images: encoded-image columns (a Hugging Face ``Image`` column, ``struct<bytes, path>``, or
            ``binary``) decoded into ``uint8`` batches (``uint16`` with ``mode="I;16"``), by name: a
            size (``(H, W)`` or an int) or a mapping of ``ImageFolderDataset``'s decode arguments
            (``size``, ``mode``, ``alpha``, ``decode``, ``resample``, ``decoder``, ``channels_last``,
            ``max_pixels``), with its fidelity rules. Each image's bytes are read in place from the
            mapping and decoded straight into its slot of the batch (counted in the ledger); a row
            with only a ``path`` reads that file (relative: from the Arrow file's folder); a null
            image is refused.

    Raises:
        UnsupportedColumnError: a selected column has no zero-copy tensor (nulls, strings,
            dictionary, ragged lists, compressed IPC, ...); the message gives the fix.
        CorruptFileError: the file is not Arrow IPC, or truncated.

    >>> import pyarrow as pa, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.arrow")
    >>> with pa.ipc.new_file(path, pa.schema([("x", pa.float32())])) as w:
    ...     w.write_table(pa.table({"x": pa.array([1, 2, 3], pa.float32())}))
    >>> ArrowDataset(path).schema
    Schema({'x': float32[]})

    .. note:: The cache of a Parquet or compressed file (``from_parquet``, ``from_compressed``)
       is served the same way; only building the cache decodes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        columns: Sequence[str] | None = None,
        *,
        copy: bool = False,
        strings: str = "error",
        bools: str = "error",
        max_open: int = DEFAULT_MAX_OPEN,
        ragged: Mapping[str, str | Mapping[str, Any]] | None = None,
        images: Mapping[str, Any] | None = None,
        _identity: FileIdentity | None = None,
        _row0: int = 0,
        _streamed: tuple[list[ShardInfo], Callable[[str, FileIdentity | None], ArrowDataset]] | None = None,
    ):
        if strings not in STRINGS:
            raise ValueError(f"{strings=} should be one of {STRINGS}")
        if bools not in BOOLS:
            raise ValueError(f"{bools=} should be one of {BOOLS}")
        if _streamed is not None:
            files, found_as = [i.path for i in _streamed[0]], "fetched on first use"
        elif _identity is None:
            files, found_as = arrow_shard_files(path)
        else:
            files, found_as = [os.fspath(path)], "file"  # type: ignore[arg-type]
        self.path = files[0] if len(files) == 1 else _describe(path)
        self.paths = files
        self.copy = copy
        self.strings = strings
        self.bools = bools
        self.ragged = ragged_settings(ragged)
        self.images = image_settings(images)
        self._row0 = _row0
        self._views_of_runs = not any(out == "padded" for out, _ in self.ragged.values())  # padded is built
        self.categories: dict[str, tuple[Any, ...]] = {}  # dictionary columns: their dictionaries
        self._selected = None if columns is None else list(columns)
        self.origin = "IPC file"
        self.source = self.path
        self.cache_reused: bool | None = None
        self._identity: FileIdentity | None = _identity  # taken once, at the first open: every process serves it
        self._reopen_error: FileChangedError | None = None  # a worker's reopen that failed, raised at its first batch
        self._shards: ArrowShards | None = None
        self._ragged: dict[str, RaggedColumn] = {}
        self._ragged_names: list[str] = []  # sharded: the ragged columns each shard serves
        self._images: dict[str, ImageColumn] = {}
        if _streamed is not None:
            self._open_shards(_streamed[0], found_as, max_open, _streamed[1])
        elif len(files) == 1:
            self._open()
        else:
            self._open_shards([scan_shard(f) for f in files], found_as, max_open)

    @classmethod
    def from_parquet(
        cls,
        path: str | os.PathLike[str],
        columns: Sequence[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        copy: bool = False,
        progress: bool | None = None,
        strings: str = "error",
        ragged: Mapping[str, str | Mapping[str, Any]] | None = None,
        bools: str = "error",
        images: Mapping[str, Any] | None = None,
    ) -> ArrowDataset:
        """A Parquet file, decoded once into an IPC cache file and served zero-copy from it.

        The cache (in ``cache_dir``, default :func:`default_cache_dir`) is reused while the
        Parquet file's size and modification time are unchanged; only the chosen ``columns``
        are decoded. Decoding shows a progress bar for large files (``progress`` forces it on
        or off) and is counted once in the ledger (stage ``decode``). ``strings``, ``ragged``,
        ``bools`` and ``images`` mean what they mean for the dataset itself: a Hugging Face
        ``Image`` column of a Parquet export (``images={"image": {"size": (H, W)}}``) keeps its
        encoded bytes in the cache and is decoded into each batch.
        """
        return cls._from_cache(path, "parquet", columns, cache_dir, copy, progress, strings, ragged, bools, images)

    @classmethod
    def from_compressed(
        cls,
        path: str | os.PathLike[str],
        columns: Sequence[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        copy: bool = False,
        progress: bool | None = None,
        strings: str = "error",
        ragged: Mapping[str, str | Mapping[str, Any]] | None = None,
        bools: str = "error",
        images: Mapping[str, Any] | None = None,
    ) -> ArrowDataset:
        """A compressed IPC / Feather file (lz4, zstd), decompressed once into a cache; see :meth:`from_parquet`."""
        return cls._from_cache(path, "ipc", columns, cache_dir, copy, progress, strings, ragged, bools, images)

    @classmethod
    def _from_cache(
        cls,
        path: str | os.PathLike[str],
        kind: str,
        columns: Sequence[str] | None,
        cache_dir: str | os.PathLike[str] | None,
        copy: bool,
        progress: bool | None,
        strings: str,
        ragged: Mapping[str, str | Mapping[str, Any]] | None = None,
        bools: str = "error",
        images: Mapping[str, Any] | None = None,
    ) -> ArrowDataset:
        """Decode ``path`` once into an IPC cache (``kind`` "parquet" or "ipc") and serve it zero-copy."""
        cache, reused = decoded_cache(
            path,
            kind=kind,
            cache_dir=cache_dir,
            columns=columns,
            progress=progress,
            check=partial(_check_types, strings=strings, bools=bools, served=set(images or ()) | set(ragged or ())),
        )
        ds = cls(cache, columns, copy=copy, strings=strings, ragged=ragged, bools=bools, images=images)
        what = "a Parquet file" if kind == "parquet" else "a compressed file"
        ds.source, ds.cache_reused, ds.origin = os.fspath(path), reused, f"IPC cache of {what}"
        return ds

    # -- opening ----------------------------------------------------------------------------
    def _open_shards(
        self,
        infos: list[ShardInfo],
        found_as: str,
        max_open: int,
        fetch: Callable[[str, FileIdentity | None], ArrowDataset] | None = None,
    ) -> None:
        """Check the shards' schemas (from their footers) agree, and open the first shard.

        ``fetch``: opens a shard that is not a local file yet (a download cache), in place of
        mapping ``info.path``; such shards are verified when fetched, not checked every batch.
        """
        files = [i.path for i in infos]
        names = infos[0].schema.names
        wanted = names if self._selected is None else self._selected
        missing = [c for c in wanted if c not in names]
        if missing or not wanted:
            raise SchemaError(
                f"shard 0 {files[0]!r}: columns {missing or wanted} not found; the file has {names}",
                field=(missing or [None])[0],
            )
        check_schemas(infos, wanted)
        first_schema = infos[0].schema
        text = [n for n in wanted if self.strings == "list" and is_string_type(first_schema.field(n).type)]
        bits = [n for n in wanted if self.bools == "unpack" and pa.types.is_boolean(first_schema.field(n).type)]
        ragged = {n: {"output": out, "pad_value": pad} for n, (out, pad) in self.ragged.items()}
        first_rows = {}
        if self.images:
            rows = np.cumsum([0] + [sum(i.batch_rows) for i in infos])
            first_rows = {i.path: int(r) for i, r in zip(infos, rows.tolist(), strict=False)}
        opener = fetch or partial(
            _open_shard, columns=list(wanted), copy=self.copy, strings=self.strings, bools=self.bools, ragged=ragged,
            images=self.images, first_rows=first_rows,
        )  # fmt: skip
        tensors = [n for n in wanted if n not in text and n not in bits and n not in ragged and n not in self.images]
        shards = ArrowShards(infos, opener, tensors, max_open, check_files=fetch is None)
        first = next((s for s, info in enumerate(infos) if sum(info.batch_rows)), 0)
        reader = shards.shard(first)
        shards.expected = reader.schema
        self._shards = shards
        self._text: dict[str, StringColumn] = dict(reader._text)
        self._text_names = list(self._text)
        self._bools: dict[str, BoolColumn] = {}
        self._bool_names = bits
        self._ragged_names = list(ragged)
        self.categories = {n: max((i.dictionaries.get(n, ()) for i in infos), key=len) for n in reader.categories}
        self._order = list(wanted)
        self._n = len(shards)
        self.num_record_batches = sum(len(i.batch_rows) for i in infos)
        self.origin = f"{found_as}, {len(files)} shards"
        self.schema = reader.schema

    def _open(self) -> None:
        mapped, schema, batches, self._identity = open_ipc(self.path, self._identity)
        if self.origin == "IPC file" and bytes(mapped[:6]) != b"ARROW1":
            self.origin = "IPC stream"
        names = schema.names
        wanted = names if self._selected is None else self._selected
        missing = [c for c in wanted if c not in names]
        if missing or not wanted:
            raise SchemaError(
                f"{self.path!r}: columns {missing or wanted} not found; the file has {names}",
                field=(missing or [None])[0],
            )
        if len(set(wanted)) != len(wanted):
            raise SchemaError(f"{self.path!r}: columns {wanted} name a column twice")
        _check_declared(repr(self.path), wanted, self.ragged, self.images)
        text = [n for n in wanted if self.strings == "list" and is_string_type(schema.field(n).type)]
        bits = [n for n in wanted if self.bools == "unpack" and pa.types.is_boolean(schema.field(n).type)]
        lists = {
            n: RaggedColumn(n, schema.field(n).type, *self.ragged[n], where=repr(self.path)) for n in self.ragged
        }
        tensors = [n for n in wanted if n not in text and n not in bits and n not in lists and n not in self.images]
        refuse_undeclared(schema, tensors)
        specs = [column_spec(n, schema.field(n).type) for n in tensors]
        _check_byte_order(self.path, mapped, batches)
        numbered = [(i, b) for i, b in enumerate(batches) if b.num_rows]  # empty record batches hold no rows
        folder = os.path.dirname(os.path.abspath(self.path))
        self._images = {
            n: ImageColumn(n, numbered, schema, spec, where=repr(self.path), folder=folder, mapped=mapped,
                           row0=self._row0)
            for n, spec in self.images.items()
        }  # fmt: skip
        starts = np.zeros(len(numbered) + 1, dtype=np.int64)
        np.cumsum([b.num_rows for _, b in numbered], out=starts[1:])
        views: dict[str, list[np.ndarray[Any, Any]]] = {}
        fields = {}
        for spec in specs:
            views[spec.name], shape = _chunks(spec, numbered, mapped, starts)
            fields[spec.name] = Field(to_torch_dtype(spec.dtype), shape)
        base = mapped.ctypes.data
        for name, col in lists.items():
            for pos, (i, b) in enumerate(numbered):
                col.add_chunk(b.column(name), mapped, base, batch=i, row0=int(starts[pos]))
            fields[name] = col.field
        self._ragged = lists
        self._text = {n: StringColumn(n, numbered, schema.field(n).type) for n in text}
        self._text_names = list(self._text)
        self._bools = {n: BoolColumn(n, numbered, repr(self.path)) for n in bits}
        self._bool_names = bits
        fields.update((n, Field(torch.bool, ())) for n in bits)
        fields.update((n, col.field) for n, col in self._images.items())
        fields = {n: fields[n] for n in wanted if n in fields}
        self.categories = {
            spec.name: dictionary_of(spec.name, [b.column(spec.name) for _, b in numbered], repr(self.path))
            for spec in specs
            if pa.types.is_dictionary(schema.field(spec.name).type)
        }
        self._order = list(wanted)
        self._mapped = mapped
        self._views = views
        self._starts = starts
        self._n = int(starts[-1])
        self._sources: dict[str, tuple[torch.Tensor, np.ndarray[Any, Any], int]] | None = None
        self.num_record_batches = len(batches)
        self.schema = Schema(fields)

    def _gather_sources(self) -> dict[str, tuple[torch.Tensor, np.ndarray[Any, Any], int]]:
        """Per field: one row source over the whole mapping, each chunk's first row in it, and the row step.

        One ``index_select`` over it gathers a batch across record batches (:func:`row_source`).
        """
        if self._sources is not None:
            return self._sources
        out = {}
        for name, chunks in self._views.items():
            field = self.schema[name]
            dims = tuple(d or 0 for d in field.shape)  # always fixed here
            if not math.prod(dims):  # every sample holds no values (all lists empty): a zero-byte source
                src = torch.empty((self._n, *dims), dtype=field.dtype)
                out[name] = (src, self._starts[:-1].copy(), 1)
                continue
            out[name] = row_source(name, self._mapped, field.dtype, dims, chunks)
        self._sources = out
        return out

    def ragged_lengths(self, name: str) -> np.ndarray[Any, Any]:
        """The length of every sample of the ragged column ``name`` (from its offsets, no value read)."""
        col = self._ragged.get(name)
        if col is None:
            raise KeyError(f"{name!r} is not a ragged column of this dataset; those are {list(self._ragged)}")
        return col.lengths()

    # -- Dataset ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def threads_suffice(self) -> bool:
        """Views and ``index_select`` over the mapping release the GIL; string lists and image decodes do not."""
        return not self._text and not self.images

    def check_sources(self) -> None:
        """The files are still the ones the dataset was built on (one ``stat`` per mapped file and batch)."""
        if self._reopen_error is not None:
            raise self._reopen_error
        if self._shards is not None:
            self._shards.check_unchanged()
        elif self._identity is not None:
            check_unchanged(self.path, self._identity)

    @property
    def splits_by_rows(self) -> bool:
        """Fixed-shape tensor columns only: strings are lists, ragged columns carry offsets."""
        if self._text or self.images or self._ragged or self._ragged_names:
            return False
        return all(f.is_fixed for f in self.schema.values())

    def batch_is_view(self, run: Run | None) -> bool:
        """A contiguous run inside one record batch, with no string or bool column, is a view."""
        if run is None or self.copy or self._text or self._bool_names or self.images or run[0] >= run[1]:
            return False
        if not self._views_of_runs:
            return False  # a padded ragged column is built, not viewed
        if self._shards is not None:
            c, _ = self._shards.table.chunk_of(run[0])
            return run[1] <= int(self._shards.table.starts[c + 1])
        c, _ = self._locate(run[0])
        return run[1] <= int(self._starts[c + 1])

    def _locate(self, i: int) -> tuple[int, int]:
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        return c, i - int(self._starts[c])

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = as_index(index)
        if not -self._n <= i < self._n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {self._n} samples", index=i)
        i %= self._n
        if self._shards is not None:
            return self._shards.item(i)
        c, k = self._locate(i)
        out: dict[str, Any] = {name: chunks[c][k] for name, chunks in self._views.items()}
        out.update((name, col.item(c, k)) for name, col in self._ragged.items())
        out.update((name, col.item(i)) for name, col in self._text.items())
        out.update((name, col.item(i)) for name, col in self._bools.items())
        out.update((name, col.item(i)) for name, col in self._images.items())
        return {name: out[name] for name in self._order}

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        """One view when ``run`` lies inside one record batch, else one gather per field."""
        self.check_sources()
        if self._shards is not None:
            out = self._gather_shards(indices, run, allocation)
            if self._text:
                out.update((n, self._shards.take_text(n, indices, self.origin)) for n in self._text)
            out.update((n, self._shards.take_bools(n, indices, allocation, self.origin)) for n in self._bool_names)
            view = None if self.copy else run
            out.update((n, self._shards.take_ragged(n, indices, view, allocation)) for n in self._ragged_names)
            shards = self._shards
            out.update(
                (n, take_images(shards, n, spec, indices, allocation, self.origin)) for n, spec in self.images.items()
            )
        else:
            out = self._gather_tensors(indices, run, allocation)
            if self._ragged:
                out.update(self._gather_ragged(indices, run, allocation))
            if self._text:
                out.update((name, col.take(indices, COLLATE, self.origin)) for name, col in self._text.items())
            out.update((n, col.take(indices, allocation, self.origin)) for n, col in self._bools.items())
            out.update((n, col.take(indices, allocation, self.origin)) for n, col in self._images.items())
        reorder = self._text or self._bools or self._ragged or self._ragged_names or self.images
        return {name: out[name] for name in self._order} if reorder else out

    def _gather_ragged(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        """Each ragged column's batch: a view of its values for a run inside one record batch, else one gather."""
        inside = None
        if run is not None and not self.copy and run[0] < run[1]:
            c, k = self._locate(run[0])
            inside = (c, k, k + run[1] - run[0]) if run[1] <= int(self._starts[c + 1]) else None
        out = {}
        for name, col in self._ragged.items():
            if inside is not None and col.output != "padded":
                out[name] = col.view(*inside, allocation)
            else:
                out[name] = col.gather(self._mapped, indices, allocation)
        return out

    def _gather_shards(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        shards = self._shards
        assert shards is not None
        if indices.size == 0:
            return {n: torch.empty((0, *(d or 0 for d in f.shape)), dtype=f.dtype) for n, f in self.schema.items()}
        if run is not None and not self.copy:
            found = shards.view_chunk(run)
            if found is not None:
                reader, c, k = found
                shard = os.path.basename(reader.path)
                why = f"view: indices contiguous in one record batch of shard {shard!r} ({self.origin})"
                out = {}
                for name in reader._views:
                    t = torch.from_numpy(reader._views[name][c][k : k + run[1] - run[0]])
                    record(COLLATE, name, why, viewed=nbytes(t))
                    out[name] = t
                return out
        if self.copy and run is not None:
            why = f"gather: copy=True ({self.origin})"
        elif run is not None:
            why = f"gather: contiguous indices span record batches or shards ({self.origin})"
        else:
            why = f"gather: indices not contiguous ({self.origin})"
        return shards.gather(indices, allocation, why)

    def _gather_tensors(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        starts = self._starts
        out = {}
        if indices.size == 0:
            return {n: torch.empty((0, *(d or 0 for d in f.shape)), dtype=f.dtype) for n, f in self.schema.items()}
        if run is not None and not self.copy:
            c, k = self._locate(run[0])
            if run[1] <= int(starts[c + 1]):
                why = f"view: indices contiguous in one record batch of the {self.origin}"
                for name, chunks in self._views.items():
                    t = torch.from_numpy(chunks[c][k : k + run[1] - run[0]])
                    record(COLLATE, name, why, viewed=nbytes(t))
                    out[name] = t
                return out
        if self.copy and run is not None:
            why = f"gather: copy=True ({self.origin})"
        elif run is not None:
            why = f"gather: contiguous indices span record batches ({self.origin})"
        else:
            why = f"gather: indices not contiguous ({self.origin})"
        chunk = np.searchsorted(starts, indices, side="right") - 1 if len(starts) > 2 else None
        local = indices if chunk is None else indices - starts[chunk]
        for name, (src, first, step) in self._gather_sources().items():
            rows = local * step if step != 1 else local.copy()
            rows += first[0] if chunk is None else first[chunk]
            buf = take_rows(src, torch.from_numpy(rows), allocation)
            record(COLLATE, name, why, copied=nbytes(buf))
            out[name] = buf
        return out

    # -- pickling: workers map the file themselves ----------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in ("_mapped", "_views", "_sources", "_starts", "_text", "_bools", "_ragged", "_images"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reopen_error = None
        if self._shards is not None:
            # shards are mapped on first use, each checked against the file it was scanned as
            self._text = dict.fromkeys(self._text_names)  # type: ignore[assignment]
            self._bools = {}
            self._ragged = {}
            self._images = {}
            return
        try:
            self._open()
        except FileChangedError as err:
            # raised at the first batch, where a DataLoader worker reports it to the main process
            # (raised here, it would end the worker before its loop: "exited unexpectedly")
            self._reopen_error = err

    def __repr__(self) -> str:
        shards = "" if self._shards is None else f", {len(self.paths)} shards"
        return f"ArrowDataset({Path(self.path).name!r}{shards}, {self._n} samples, {self.schema})"


def _check_declared(where: str, wanted: Sequence[str], ragged: Mapping[str, Any], images: Mapping[str, Any]) -> None:
    """``ragged=`` and ``images=`` name columns served, each at most one of them."""
    for option, names in (("ragged", ragged), ("images", images)):
        stray = [n for n in names if n not in wanted]
        if stray:
            raise SchemaError(f"{where}: {option}= names {stray}, not among the columns served {list(wanted)}",
                              field=stray[0])  # fmt: skip
    both = [n for n in ragged if n in images]
    if both:
        raise SchemaError(f"{where}: {both} named in both ragged= and images=; a column is one of them", field=both[0])


def _describe(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> str:
    """The folder or glob a sharded dataset was given, or its first file for a list."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return os.fspath(source[0])
