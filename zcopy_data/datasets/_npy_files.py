"""``.npy`` files read safely: magic checked, never unpickled, sizes checked, mapped copy-on-write."""

from __future__ import annotations

import math
import os
import stat
from typing import Any, BinaryIO

import numpy as np

from zcopy_data._mapping import FileIdentity, check_unchanged, file_array
from zcopy_data.errors import SchemaError

__all__ = ["load_npy", "read_npy_header"]


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


def read_npy_header(
    path: str | os.PathLike[str], *, field: str
) -> tuple[tuple[int, ...], np.dtype[Any], FileIdentity, bool]:
    """Shape, dtype, identity and Fortran order of a ``.npy`` file, read from its header only (then closed)."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"field {field!r}: no such file {name!r}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"field {field!r}: {name!r} is a directory, not a .npy file") from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SchemaError(f"field {field!r}: {name!r} is not a regular .npy file", field=field)
        shape, fortran, dtype, _ = _check_header(f, name, field)
    return shape, dtype, FileIdentity.of_stat(st), fortran


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
