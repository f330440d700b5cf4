"""Which Arrow columns can be a zero-copy tensor, and the NumPy view of one column chunk.

A column is zero-copy when every sample is a fixed number of fixed-width values laid out back to
back in one data buffer: primitive integers and floats, ``FixedSizeList`` (nested for more
dimensions), the ``arrow.fixed_shape_tensor`` extension type, and variable ``list`` columns whose
lists all have one length (checked once, from the offsets). Anything else gets an
:class:`UnsupportedColumnError` naming the column, the reason and the fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zcopy_data.errors import CorruptFileError, UnsupportedColumnError

__all__ = [
    "ColumnSpec",
    "check_names",
    "chunk_view",
    "column_spec",
    "dictionary_of",
    "nulls_refused",
    "row_source",
    "unsupported_reason",
]

_SKIP_FIX = "or leave the column out with columns=[...]"
_POLARS_FIX = "from polars, df.write_ipc(path, compat_level=pl.CompatLevel.oldest())"
# Hugging Face ``datasets`` Array2D ... Array5D: a nested list whose shape is in the type's metadata
_HF_ARRAY = re.compile(r"(^|\.)Array[2-5]DExtensionType$")


def hf_array_shape(typ: pa.DataType) -> tuple[int | None, ...] | None:
    """The fixed shape of a Hugging Face ``ArrayND`` extension column (``None`` dims stay variable)."""
    if not isinstance(typ, pa.ExtensionType) or not _HF_ARRAY.search(typ.extension_name):
        return None
    try:
        shape = json.loads(typ.__arrow_ext_serialize__())[0]
        return tuple(None if d is None else int(d) for d in shape)
    except (ValueError, TypeError, IndexError, KeyError):
        return None


@dataclass(frozen=True)
class ColumnSpec:
    """A supported column: element dtype, the list sizes met on the way down (``None`` = from data)."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[int | None, ...]


def check_names(where: str, schema: pa.Schema) -> None:
    """Every field name, nested ones included, is UTF-8 (the Arrow and Parquet formats require it).

    pyarrow decodes names lazily and raises a bare ``UnicodeDecodeError`` wherever one is first
    read; this reads them all once and turns a bad one into a :class:`CorruptFileError` naming
    ``where`` (the file) and the column's position.
    """

    def check(f: pa.Field, what: str) -> None:
        try:
            f.name  # noqa: B018  # decoding the name is the check
        except UnicodeDecodeError as err:
            raise CorruptFileError(
                f"{where}: the name of {what} is not valid UTF-8 (bytes {err.object!r}); Arrow and Parquet names "
                "are UTF-8, so the file is corrupt or its writer broken; fix: write it again with UTF-8 names "
                "(table.rename_columns([...]))"
            ) from None
        typ = f.type.storage_type if isinstance(f.type, pa.BaseExtensionType) else f.type
        for j in range(typ.num_fields):
            check(typ.field(j), f"{what}, child {j}")

    for i in range(len(schema)):
        check(schema.field(i), f"column {i}")


def unsupported_reason(typ: pa.DataType) -> tuple[str, str] | None:
    """``(reason, fix)`` when no chunk of a column of this type can be zero-copy, else ``None``."""
    if isinstance(typ, pa.FixedShapeTensorType):
        if typ.permutation is not None and list(typ.permutation) != sorted(typ.permutation):
            return (
                f"a fixed_shape_tensor with permutation {list(typ.permutation)} is not row-major",
                "write it without a permutation (np.ascontiguousarray of the logical tensor)",
            )
        return unsupported_reason(typ.storage_type)
    if hf_array_shape(typ) is not None:
        return unsupported_reason(typ.storage_type)
    if isinstance(typ, pa.BaseExtensionType):
        return (f"extension type {typ.extension_name!r} is not known", "store its storage type instead")
    t = pa.types
    if t.is_integer(typ) or t.is_floating(typ):
        return None
    if t.is_fixed_size_list(typ) or t.is_list(typ) or t.is_large_list(typ):
        if t.is_dictionary(typ.value_type) or t.is_boolean(typ.value_type):
            return (
                f"lists of {typ.value_type} have no fixed-width tensor layout",
                f"store the values as a plain integer type {_SKIP_FIX}",
            )
        return unsupported_reason(typ.value_type)
    if t.is_boolean(typ):
        return (
            "booleans are bit-packed in Arrow (8 per byte)",
            "pass bools='unpack' to unpack them into a torch.bool batch (a copy, counted), "
            f"or store them as uint8 (pc.cast(col, pa.uint8())) {_SKIP_FIX}",
        )
    if t.is_string(typ) or t.is_large_string(typ) or t.is_binary(typ) or t.is_large_binary(typ):
        return (
            "strings and binaries are variable-length",
            f"encode them as integer ids, pass strings='list' (strings only) for Python lists, copied and counted, "
            f"{_SKIP_FIX}",
        )
    if _is("string_view", typ):
        return (
            "string_view (polars' default for strings) is variable-length",
            f"pass strings='list' for Python lists of str (copied, counted), encode them as integer ids, "
            f"{_SKIP_FIX}",
        )
    if any(_is(kind, typ) for kind in ("binary_view", "list_view", "large_list_view")):
        return (
            "view types are variable-length",
            f"encode them as integer ids, write plain lists ({_POLARS_FIX}), {_SKIP_FIX}",
        )
    if t.is_dictionary(typ):
        return None  # served as its integer indices; the dictionary is ArrowDataset.categories
    if t.is_temporal(typ):
        return f"{typ} has units, not a plain number", f"cast it once to int64 (pc.cast(col, pa.int64())) {_SKIP_FIX}"
    if t.is_null(typ):
        return "the column holds only nulls", _SKIP_FIX.removeprefix("or ")
    if t.is_struct(typ):
        if {typ.field(i).name for i in range(typ.num_fields)} == {"bytes", "path"}:  # a Hugging Face Image
            return (
                "it holds encoded images (a Hugging Face Image column: bytes and path)",
                f"decode them into each batch with images={{<this field>: {{'size': (H, W)}}}} {_SKIP_FIX}",
            )
        return "struct columns hold several fields", f"flatten them (table.flatten()) {_SKIP_FIX}"
    return f"type {typ} has no fixed-width tensor layout", _SKIP_FIX.removeprefix("or ")


def _is(kind: str, typ: pa.DataType) -> bool:
    """``pa.types.is_<kind>(typ)``, False on a pyarrow too old to have that type."""
    check = getattr(pa.types, f"is_{kind}", None)
    return bool(check is not None and check(typ))


def column_spec(name: str, typ: pa.DataType) -> ColumnSpec:
    """The spec of a supported column, or :class:`UnsupportedColumnError` naming the fix."""
    why = unsupported_reason(typ)
    if why is not None:
        reason, fix = why
        raise UnsupportedColumnError(
            f"field {name!r}: Arrow type {typ} cannot be a zero-copy tensor: {reason}; fix: {fix}", field=name
        )
    dims: list[int | None] = []
    if pa.types.is_dictionary(typ):
        return ColumnSpec(name, np.dtype(typ.index_type.to_pandas_dtype()), ())
    if isinstance(typ, pa.FixedShapeTensorType):
        return ColumnSpec(name, np.dtype(typ.value_type.to_pandas_dtype()), tuple(typ.shape))
    hf = hf_array_shape(typ)
    if hf is not None:
        inner = column_spec(name, typ.storage_type)
        return ColumnSpec(name, inner.dtype, hf if len(hf) == len(inner.dims) else inner.dims)
    while not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        dims.append(typ.list_size if pa.types.is_fixed_size_list(typ) else None)
        typ = typ.value_type
    return ColumnSpec(name, np.dtype(typ.to_pandas_dtype()), tuple(dims))


def nulls_refused(arr: pa.Array, name: str, batch: int, row0: int) -> None:
    """A clear error when a column chunk holds nulls: a tensor has none."""
    if arr.null_count:
        bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0]) if arr.offset == 0 else 0
        raise UnsupportedColumnError(
            f"field {name!r}: record batch {batch} holds {arr.null_count} nulls (first near row {row0 + bad}); "
            "a tensor has no nulls; fix: fill them once (pc.fill_null) or drop those rows",
            field=name,
        )


def chunk_view(
    arr: pa.Array, spec: ColumnSpec, file_bytes: np.ndarray[Any, Any], base: int, *, batch: int, row0: int
) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    """A writable NumPy view over ``file_bytes`` of one column chunk, and its per-sample shape.

    Args:
        arr: the chunk, read by pyarrow from a buffer over ``file_bytes``.
        spec: its column's spec (from :func:`column_spec`).
        file_bytes: the whole file, mapped copy-on-write (``uint8``).
        base: address of ``file_bytes[0]``.
        batch: the record batch number, for messages.
        row0: the dataset row of the chunk's first sample, for messages.
    """
    name = spec.name
    rows = len(arr)
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    nulls_refused(arr, name, batch, row0)
    if isinstance(arr, pa.DictionaryArray):
        arr = arr.indices  # the dictionary itself is read once, by dictionary_of
    start, count, shape = arr.offset, rows, []
    while not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        child = arr.values
        if pa.types.is_fixed_size_list(arr.type):
            k = arr.type.list_size
        else:
            off_dtype = np.int64 if pa.types.is_large_list(arr.type) else np.int32
            offsets = np.frombuffer(arr.buffers()[1], dtype=off_dtype)[start : start + count + 1]
            steps = np.diff(offsets)
            k = int(steps[0]) if steps.size else 0
            if steps.size and not bool((steps == k).all()):
                bad = int(np.flatnonzero(steps != k)[0])
                raise UnsupportedColumnError(
                    f"field {name!r}: a variable-length list column whose lists differ in length "
                    f"(row {row0} has {k} values, row {row0 + bad} has {int(steps[bad])}); a batch needs one shape; "
                    f"fix: serve it as a variable-length field (ArrowDataset(path, ragged={{{name!r}: 'packed'}}), "
                    "or 'padded' / 'nested'), pad or crop every list to one length (pa.list_(type, n) or a "
                    f"fixed_shape_tensor), {_SKIP_FIX}",
                    field=name,
                )
            # List offsets index the child's elements directly; the child's own offset comes on top.
            first = int(offsets[0]) if offsets.size else 0
            shape.append(k)
            nulls_refused(child, name, batch, row0)
            start, count, arr = first + child.offset, count * k, child
            continue
        shape.append(k)
        nulls_refused(child, name, batch, row0)
        start, count, arr = start * k + child.offset, count * k, child
    dtype = spec.dtype
    if len(spec.dims) == len(shape):
        for level, (d, g) in enumerate(zip(spec.dims, shape, strict=True)):
            if d is not None and g != d and rows:
                raise UnsupportedColumnError(
                    f"field {name!r}: record batch {batch} (rows from {row0}) has {g} values at level {level}, "
                    f"its type declares {d} (shape {spec.dims}); fix: write the column again with that shape",
                    field=name,
                )
        final = tuple(g if d is None else d for d, g in zip(spec.dims, shape, strict=True))
    else:  # a fixed_shape_tensor: one flat list of prod(shape) values per sample
        final = tuple(d or 0 for d in spec.dims)
    if count == 0:
        # Every list is empty: there is no byte to read, and Arrow points the empty data buffer at
        # a static address outside the file. A zero-byte view of the mapping is the same column.
        return file_bytes[:0].view(dtype).reshape(rows, *final), final
    data = arr.buffers()[1]
    if data is None:
        raise CorruptFileError(
            f"field {name!r}: record batch {batch} declares {count} values but has no data buffer; "
            "the file is corrupt, write it again",
            field=name,
        )
    lo = data.address + start * dtype.itemsize
    nbytes = count * dtype.itemsize
    if start * dtype.itemsize + nbytes > data.size:
        raise CorruptFileError(
            f"field {name!r}: record batch {batch} declares {count} values but its buffer holds {data.size} bytes; "
            "the file is truncated or corrupt, write it again",
            field=name,
        )
    if not (base <= lo and lo + nbytes <= base + file_bytes.size):
        raise _outside_mapping(name, batch)
    view = file_bytes[lo - base : lo - base + nbytes].view(dtype)
    return view.reshape(rows, *final), final


def dictionary_of(name: str, chunks: list[pa.Array], where: str) -> tuple[Any, ...]:
    """The dictionary of a dictionary column's record batches, as Python values (checked to agree).

    A later record batch may extend the dictionary (an IPC delta): earlier indices keep their
    meaning, so the longest one serves them all. Any other difference is an error naming the batch.
    """
    found: tuple[Any, ...] = ()
    for i, arr in enumerate(chunks):
        values = tuple(arr.dictionary.to_pylist())
        short, long = sorted((found, values), key=len)
        if long[: len(short)] != short:
            raise UnsupportedColumnError(
                f"field {name!r}: {where} record batch {i} has the dictionary {list(values)[:6]}, earlier ones "
                f"{list(found)[:6]}; one column needs one dictionary for its indices to mean one thing; fix: "
                "write it with one dictionary (pa.chunked_array(...).unify_dictionaries(), or a polars Enum)",
                field=name,
            )
        found = long
    return found


def _outside_mapping(name: str, batch: int) -> UnsupportedColumnError:
    return UnsupportedColumnError(
        f"field {name!r}: record batch {batch} is not stored as plain bytes in the file (the IPC file is compressed, "
        "e.g. with Feather's default lz4), so reading it means decoding it; fix: write it "
        "uncompressed (pyarrow.feather.write_feather(table, path, compression='uncompressed') or "
        "pa.ipc.new_file(path, schema, options=pa.ipc.IpcWriteOptions(compression=None)); from polars, "
        "df.write_ipc(path, compression='uncompressed')), or decode it once into "
        "a cache with ArrowDataset.from_compressed(path)",
        field=name,
    )


def row_source(
    name: str,
    mapped: np.ndarray[Any, Any],
    dtype: torch.dtype,
    dims: tuple[int, ...],
    chunks: list[np.ndarray[Any, Any]],
) -> tuple[torch.Tensor, np.ndarray[Any, Any], int]:
    """One tensor over the whole mapping holding the rows of every chunk, each chunk's first row in it, the row step.

    Rows of chunk ``c`` sit at ``offset_c + k * row_bytes`` in the file. When every offset has
    the same remainder modulo ``row_bytes`` (always true for one record batch), the mapping seen
    from that remainder on is one plain contiguous array holding every row. Otherwise, with
    ``g`` the greatest common divisor of the row size and the offsets, the mapping seen as
    overlapping rows ``g`` bytes apart holds them all. Either way one ``index_select`` gathers
    rows across record batches, reading them straight out of the mapping. Rows must not be empty.
    """
    base, size = mapped.ctypes.data, mapped.size
    itemsize = chunks[0].itemsize if chunks else 1
    row = itemsize * math.prod(dims)
    offsets = [c.ctypes.data - base for c in chunks]
    if any(o % itemsize for o in offsets):
        raise CorruptFileError(
            f"field {name!r}: a record batch's values are not aligned to {itemsize} bytes in the file; "
            "a gather needs aligned rows; fix: write the file again with pyarrow (it aligns buffers)",
            field=name,
        )
    inner = tuple(math.prod(dims[i + 1 :]) for i in range(len(dims)))
    residues = {o % row for o in offsets}
    if len(residues) <= 1:
        r = residues.pop() if residues else 0
        shape, strides, start, g = ((size - r) // row, *dims), (row // itemsize, *inner), r, row
    else:
        g = math.gcd(row, *offsets)
        shape, strides, start = ((size - row) // g + 1, *dims), (g // itemsize, *inner), 0
    storage = torch.from_numpy(mapped).untyped_storage()
    src = torch.empty(0, dtype=dtype).set_(storage, start // itemsize, shape, strides)
    first = np.asarray([(o - start) // g for o in offsets], dtype=np.int64)
    return src, first, row // g
