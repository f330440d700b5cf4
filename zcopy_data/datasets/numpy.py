"""``NumpyDataset``: named NumPy arrays or ``.npy`` files (or shards of them), memory-mapped copy-on-write."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zcopy_data._dtypes import dtype_name
from zcopy_data._mapping import FileIdentity, check_unchanged, remap_private
from zcopy_data._requests import Indices, Run
from zcopy_data.datasets._npy_files import load_npy
from zcopy_data.datasets._numpy_shards import ShardedColumns, is_sharded
from zcopy_data.datasets._shards import DEFAULT_MAX_OPEN
from zcopy_data.datasets.base import ZeroCopyDataset
from zcopy_data.errors import CopyRequiredError, FileChangedError, SchemaError
from zcopy_data.memory.policy import Allocation
from zcopy_data.ragged import Ragged
from zcopy_data.schema import Schema

__all__ = ["NumpyDataset"]

Source = np.ndarray[Any, Any] | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Ragged


def _check_byte_order(name: str, arr: np.ndarray[Any, Any], what: str, fix: str) -> None:
    """Refuse a non-native column up front: ``copy=True`` cannot help it, so do not suggest it."""
    if arr.dtype.isnative:
        return
    native = repr(arr.dtype.newbyteorder("=").str)
    raise CopyRequiredError(
        f"field {name!r}: {what} {dtype_name(arr.dtype)}; torch has no non-native byte order, so every "
        f"read would need a byte swap. Convert it once: {fix.format(native)}",
        field=name,
    )


class NumpyDataset(ZeroCopyDataset):
    """Named columns, each an ``np.ndarray`` or a path to a ``.npy`` file (first axis = sample).

    Files are memory-mapped copy-on-write: reads are zero-copy, writes never reach the file. A
    read-only ``np.memmap`` is mapped again copy-on-write; other read-only arrays are refused
    (a tensor over them could be written through) unless ``copy=True``.

    Args:
        columns: field name -> array or ``.npy`` path, or the field's shards: a list of ``.npy``
            paths or a glob (sorted), read as one array along the first axis. All fields need
            the same length; shards of different fields may be cut at different rows.
        schema: optional declared schema; the columns must match it exactly.
        copy: copy every batch, contiguous ones included (isolates in-place ops on batches).

    >>> ds = NumpyDataset({"x": np.zeros((4, 2), np.float32), "y": np.arange(4)})
    >>> ds.schema
    Schema({'x': float32[2], 'y': int64[]})

    .. note:: Sharded fields are mapped on first use, at most ``max_open`` files per field at a
       time; a batch inside one shard is a view, any other one gather per field.
    """

    def __new__(cls, columns: Mapping[str, Source] | None = None, **kwargs: Any) -> NumpyDataset:  # noqa: ARG004
        if cls is NumpyDataset and isinstance(columns, Mapping) and any(is_sharded(s) for s in columns.values()):
            cls = ShardedNumpyDataset
        return super().__new__(cls)

    def __init__(
        self,
        columns: Mapping[str, Source],
        *,
        schema: Schema | Mapping[str, Any] | None = None,
        copy: bool = False,
    ) -> None:
        if not isinstance(columns, Mapping) or not columns:
            raise SchemaError("NumpyDataset needs a non-empty mapping of field name -> array or .npy path")
        self.copy = copy
        self._sources: dict[str, Source] = dict(columns)
        self._identities: dict[str, FileIdentity] = {}  # taken once, here: every process serves these files
        self._arrays: dict[str, np.ndarray[Any, Any]] | None = {
            name: self._open(name, src) for name, src in self._sources.items()
        }
        if schema is not None:
            self.schema = schema
        _ = self.schema  # validate lengths, dtypes and the declared schema now, not mid-epoch

    def _open(self, name: str, src: Source | Ragged, *, read_only_ok: bool = False) -> Any:
        if isinstance(src, Ragged):  # a variable-length field: its values and offsets, each an array or a .npy
            return src.opened(
                self._open(f"{name}.values", src.values),
                self._open(f"{name}.offsets", src.offsets, read_only_ok=True),  # only read, never handed out
            )
        if isinstance(src, (str, os.PathLike)):
            self.__dict__.setdefault("_paths", {})[name] = os.fspath(src)
            # A plain ndarray over a registered copy-on-write mapping (no np.memmap and its
            # per-slice Python hook, which costs more than the slice itself).
            arr, self._identities[name] = load_npy(src, field=name, identity=self._identities.get(name))
            _check_byte_order(name, arr, f"{os.fspath(src)!r} stores", "np.save(path, np.load(path).astype({}))")
            return arr
        if not isinstance(src, np.ndarray):
            raise SchemaError(
                f"field {name!r}: expected an np.ndarray or a .npy path, found {type(src).__name__}; "
                "convert once with np.asarray(...)",
                field=name,
            )
        _check_byte_order(name, src, "the array is", "pass arr.astype({}) (one copy, once)")
        if src.dtype.kind == "O":
            raise SchemaError(f"field {name!r}: object arrays cannot be zero-copy; store a numeric dtype", field=name)
        if not src.flags.writeable:
            private = remap_private(src)
            if private is not None:
                return private.view(np.ndarray)
        if not src.flags.writeable and not (self.copy or read_only_ok):
            raise CopyRequiredError(
                f"field {name!r}: the array is read-only, and a zero-copy batch over it could be "
                "written through; pass a writable array, a .npy path, or copy=True",
                field=name,
            )
        return src

    def columns(self) -> dict[str, np.ndarray[Any, Any]]:
        if self._arrays is None:  # a worker could not map the files it was sent: say why, per batch
            raise self._reopen_error
        return self._arrays

    def check_sources(self) -> None:
        """Each ``.npy`` file is still the one the dataset was built on (one ``stat`` per file)."""
        if self._arrays is None:
            raise self._reopen_error
        checks: list[tuple[str, FileIdentity]] | None = self.__dict__.get("_zc_checks")
        if checks is None:  # (path, identity) per file, worked out once per process
            paths: dict[str, str] = self.__dict__.get("_paths", {})
            checks = [
                (paths.get(name) or os.fspath(self._sources[name]), identity)  # type: ignore[arg-type]
                for name, identity in self._identities.items()
            ]
            self.__dict__["_zc_checks"] = checks
        for path, identity in checks:
            check_unchanged(path, identity)

    def __getstate__(self) -> dict[str, Any]:
        # File-backed columns travel as their path (workers map the file themselves);
        # only in-memory arrays are pickled with their data.
        state = super().__getstate__()
        state["_arrays"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        try:
            self._arrays = {name: self._open(name, src) for name, src in self._sources.items()}
        except FileChangedError as err:
            # raised at the first batch, where a DataLoader worker reports it to the main process
            # (raised here, it would end the worker before its loop: "exited unexpectedly")
            self._arrays = None
            self._reopen_error = err

    def __repr__(self) -> str:
        return f"NumpyDataset({len(self)} samples, {self.schema})"


class ShardedNumpyDataset(NumpyDataset):
    """A ``NumpyDataset`` with sharded fields (what ``NumpyDataset`` builds when a field is a list or glob)."""

    def __init__(
        self,
        columns: Mapping[str, Source],
        *,
        schema: Schema | Mapping[str, Any] | None = None,
        copy: bool = False,
        max_open: int = DEFAULT_MAX_OPEN,
    ) -> None:
        self.copy = copy
        self._sharded = ShardedColumns(columns, max_open)
        frozen = self._sharded.schema
        if schema is not None:
            declared = schema if isinstance(schema, Schema) else Schema(schema)
            if list(declared) != list(frozen):
                raise SchemaError(
                    f"NumpyDataset: declared fields {list(declared)} differ from the columns {list(frozen)}"
                )
            frozen.check_compatible(declared, ours="columns", theirs="declared schema")
        self.schema = frozen

    @property
    def is_columnar(self) -> bool:
        return False  # shards are not one array per field: batches come from build_batch

    @property
    def threads_suffice(self) -> bool:
        return True  # views and index_select release the GIL

    def columns(self) -> dict[str, np.ndarray[Any, Any]]:
        raise TypeError("a sharded NumpyDataset has no single array per field; index it or fetch batches")

    @property
    def splits_by_rows(self) -> bool:
        return all(f.is_fixed for f in self.schema.values())

    def batch_is_view(self, run: Run | None) -> bool:
        return not self.copy and self._sharded.is_view(run)

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, Any]:
        """A view per field when ``run`` lies in one of its shards, else one gather into one buffer."""
        self.check_sources()
        return self._sharded.build(indices, run, allocation, self.copy)

    def check_sources(self) -> None:
        """Each mapped shard is still the file it was when the dataset was built (one ``stat`` each)."""
        self._sharded.check_unchanged()

    def __len__(self) -> int:
        return self._sharded.n

    def __getitem__(self, index: int) -> dict[str, np.ndarray[Any, Any]]:
        return self._sharded.item(index)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # shards are mapped on first use in this process

    def __repr__(self) -> str:
        shards = sum(len(f.shards) for f in self._sharded.fields.values())
        return f"NumpyDataset({len(self)} samples in {shards} shards, {self.schema})"
