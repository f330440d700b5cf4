"""``NumpyDataset``: named NumPy arrays or ``.npy`` files, memory-mapped copy-on-write."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from zcopy_data._dtypes import dtype_name
from zcopy_data._mapping import FileIdentity, check_unchanged, file_array, remap_private
from zcopy_data.datasets.base import ZeroCopyDataset
from zcopy_data.errors import CopyRequiredError, FileChangedError, SchemaError
from zcopy_data.schema import Schema

__all__ = ["NumpyDataset"]

Source = np.ndarray[Any, Any] | str | os.PathLike[str]


_MAGIC = b"\x93NUMPY"
_OTHER_FORMATS = {b"PK\x03\x04": "a .npz (zip) archive; pass each of its arrays as its own .npy file"}


def load_npy(
    path: str | os.PathLike[str], *, field: str, identity: FileIdentity | None = None
) -> tuple[np.ndarray[Any, Any], FileIdentity]:
    """Map a ``.npy`` file copy-on-write (never unpickling anything) with a clear error.

    The magic bytes are checked first, so anything that is not a ``.npy`` file (empty, an
    ``.npz`` archive, a pickle) is refused before NumPy looks at it. Returns the array and the
    identity of the file it maps; given ``identity`` (the file the dataset was built on), a
    different file raises :class:`~zcopy_data.errors.FileChangedError`.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if identity is not None and FileIdentity.of_stat(st) != identity:
                check_unchanged(name, identity)  # another file now: FileChangedError, whatever it is
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(st.st_mode):
                raise SchemaError(
                    f"field {field!r}: {name!r} is not a regular file (a FIFO, device or socket); "
                    "only regular .npy files are read",
                    field=field,
                )
            found = FileIdentity.of_stat(st)
            shape, fortran, dtype, offset = _check_header(f, name, field)
    except FileNotFoundError:
        raise FileNotFoundError(f"field {field!r}: no such file {name!r}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"field {field!r}: {name!r} is a directory, not a .npy file") from None
    arr = file_array(
        name, offset, shape, dtype, order="F" if fortran else "C", identity=identity or found, shared=False
    )
    return arr, identity or found


def _check_header(f: BinaryIO, name: str, field: str) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Refuse a file that is not a ``.npy``, stores Python objects, or is smaller than its header says.

    Sizes are computed with Python ints, so a header declaring an absurd shape is refused here
    instead of overflowing inside ``np.memmap``.
    """

    def refuse(why: str) -> SchemaError:
        return SchemaError(f"field {field!r}: {name!r} {why}; write it with np.save(path, array)", field=field)

    head = f.read(len(_MAGIC))
    if head != _MAGIC:
        what = next((v for k, v in _OTHER_FORMATS.items() if head.startswith(k)), None)
        raise refuse(f"is not a readable .npy file ({what or (f'it starts with {head!r}' if head else 'it is empty')})")
    version = f.read(2)
    if len(version) < 2 or (version[0], version[1]) not in ((1, 0), (2, 0), (3, 0)):
        raise refuse(f"is not a readable .npy file (unknown format version {tuple(version)})")
    read = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = read(f)
    except (ValueError, EOFError) as err:
        raise refuse(f"has an unreadable .npy header ({err})") from None
    if dtype.hasobject:
        raise refuse("stores Python objects (pickled data), which are never loaded; store a numeric dtype")
    declared = math.prod(int(d) for d in shape) * dtype.itemsize
    size = os.fstat(f.fileno()).st_size
    if f.tell() + declared > size:
        raise refuse(
            f"is truncated: its header declares shape {tuple(shape)} of {dtype.str} = {declared} bytes "
            f"after a {f.tell()}-byte header, the file has {size} bytes"
        )
    return tuple(int(d) for d in shape), bool(fortran), dtype, f.tell()


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
        columns: field name -> array or ``.npy`` path. All fields need the same length.
        schema: optional declared schema; the columns must match it exactly.
        copy: copy every batch, contiguous ones included (isolates in-place ops on batches).

    >>> ds = NumpyDataset({"x": np.zeros((4, 2), np.float32), "y": np.arange(4)})
    >>> ds.schema
    Schema({'x': float32[2], 'y': int64[]})
    """

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

    def _open(self, name: str, src: Source) -> np.ndarray[Any, Any]:
        if isinstance(src, (str, os.PathLike)):
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
        if not src.flags.writeable and not self.copy:
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
        for name, identity in self._identities.items():
            check_unchanged(os.fspath(self._sources[name]), identity)  # type: ignore[arg-type]

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
