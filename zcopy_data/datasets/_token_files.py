"""Open a flat token source: a NumPy array, a ``.npy``, a raw ``.bin`` of a stated dtype, or a
Megatron-LM ``.bin``/``.idx`` pair. Files are mapped copy-on-write and checked, never read."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zcopy_data._mapping import FileIdentity, check_unchanged, file_array, remap_private
from zcopy_data.datasets._megatron import map_megatron_bin, megatron_paths, read_megatron_index
from zcopy_data.datasets._npy_files import load_npy
from zcopy_data.errors import CopyRequiredError, CorruptFileError, SchemaError

__all__ = ["TokenSource", "open_tokens"]

Source = np.ndarray[Any, Any] | str | os.PathLike[str]
_FIELD = "tokens"


@dataclass
class TokenSource:
    """The tokens, where they come from, and the files to check before each batch."""

    tokens: np.ndarray[Any, Any]
    kind: str  # "array", "npy", "bin" or "megatron"
    doc_starts: np.ndarray[Any, np.dtype[np.int64]] | None = None  # token offsets, then the count
    files: dict[str, FileIdentity] = field(default_factory=dict)  # every file read, checked on reopening
    mapped: str | None = None  # the file batches read from, checked before each batch

    def check_unchanged(self) -> None:
        if self.mapped is not None:
            check_unchanged(self.mapped, self.files[self.mapped])


def _regular(path: str) -> FileIdentity:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        raise CorruptFileError(f"{path!r} is a directory, not a token file")
    if not stat.S_ISREG(st.st_mode):
        raise CorruptFileError(f"{path!r} is not a regular file (a FIFO, device or socket); only files are read")
    return FileIdentity.of_stat(st)


def _check_dtype(found: np.dtype[Any], wanted: Any, where: str) -> None:
    if found.kind not in "iu":
        raise SchemaError(f"{where} holds {found.name} values; token ids are integers (store uint16/int32 ids)")
    if wanted is not None and np.dtype(wanted) != found:
        raise SchemaError(
            f"{where} holds {found.name} tokens, dtype={np.dtype(wanted).name} was asked; tokens are never cast "
            f"on the host: pass dtype={found.name} (or none) and widen on the device with Cast(torch.int64)"
        )


def open_tokens(source: Source, dtype: Any, known: dict[str, FileIdentity] | None = None) -> TokenSource:
    """Map ``source`` as a flat 1-D token array. ``known``: the identities the dataset was built
    on (a worker reopening the files); another file there raises ``FileChangedError``."""
    if isinstance(source, np.ndarray):
        return TokenSource(_array(source, dtype), "array")
    if not isinstance(source, (str, os.PathLike)):
        raise SchemaError(
            f"TokenDataset: source must be a NumPy array or a path (.npy, .bin, a Megatron prefix), "
            f"found {type(source).__name__}"
        )
    path = os.fspath(source)
    known = known or {}
    for name, identity in known.items():
        check_unchanged(name, identity)
    pair = megatron_paths(path)
    if pair is not None:
        bin_path, idx_path = pair
        if not os.path.exists(bin_path):
            raise FileNotFoundError(f"{idx_path!r} has no .bin beside it: expected {bin_path!r}")
        ident = known.get(bin_path) or _regular(bin_path)
        idx_ident = known.get(idx_path) or _regular(idx_path)
        index = read_megatron_index(idx_path, bin_path, ident)
        _check_dtype(index.dtype, dtype, f"the Megatron-LM pair {bin_path!r}")
        tokens = map_megatron_bin(bin_path, index, ident) if index.tokens else np.zeros(0, index.dtype)
        return TokenSource(tokens, "megatron", index.doc_starts, {bin_path: ident, idx_path: idx_ident}, bin_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such token file {path!r}")
    _regular(path)  # a FIFO, socket or device is refused before anything opens it for reading
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if is_npy:
        arr, ident = load_npy(path, field=_FIELD, identity=known.get(path))
        if arr.ndim != 1:
            raise SchemaError(f"{path!r} holds shape {arr.shape}; tokens are one flat 1-D array (np.save(path, ids))")
        _check_dtype(arr.dtype, dtype, repr(path))
        return TokenSource(arr, "npy", None, {path: ident}, path)
    ident = known.get(path) or _regular(path)
    if dtype is None:
        raise SchemaError(
            f"{path!r} is a raw token file with no header, so its dtype must be given: pass dtype=np.uint16 "
            "(nanoGPT's prepare.py writes uint16) or the dtype it was written with"
        )
    dt = np.dtype(dtype).newbyteorder("=")
    _check_dtype(dt, None, repr(path))
    if ident.size % dt.itemsize:
        raise CorruptFileError(
            f"{path!r} has {ident.size} bytes, not a multiple of {dt.name}'s {dt.itemsize}: it was written with "
            "another dtype, or it is truncated"
        )
    count = ident.size // dt.itemsize
    tokens = file_array(path, 0, (count,), dt, identity=ident, shared=False) if count else np.zeros(0, dt)
    return TokenSource(tokens, "bin", None, {path: ident}, path)


def _array(arr: np.ndarray[Any, Any], dtype: Any) -> np.ndarray[Any, Any]:
    if arr.ndim != 1:
        raise SchemaError(f"TokenDataset: the token array has shape {arr.shape}; pass one flat 1-D array")
    _check_dtype(arr.dtype, dtype, "the token array")
    if not arr.dtype.isnative:
        raise CopyRequiredError(
            f"the token array is {arr.dtype.str} (non-native byte order); convert it once: "
            f"arr.astype({arr.dtype.newbyteorder('=').str!r})"
        )
    if not arr.flags.c_contiguous:
        raise CopyRequiredError("the token array is not contiguous; pass np.ascontiguousarray(arr) (one copy, once)")
    if not arr.flags.writeable:
        private = remap_private(arr)
        if private is not None:
            return private.view(np.ndarray)
    return arr
