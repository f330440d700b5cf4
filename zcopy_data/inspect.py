"""``zcopy-data inspect PATH``: what a data source holds and, per field, whether it can be zero-copy.

Understands ``.npy`` files (and folders of them), Arrow IPC / Feather v2, Parquet, and image
folders (``root/<class>/<file>``). Formats are recognised by their magic bytes, not their names.
Nothing is unpickled and no sample is decoded except a few image headers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from zcopy_data._dtypes import dtype_name
from zcopy_data._mapping import identity_of
from zcopy_data.errors import ZeroCopyError

__all__ = ["FieldReport", "SourceReport", "add_inspect_parser", "format_report", "inspect_path"]


@dataclass
class FieldReport:
    """One field: dtype, per-sample shape, and whether batches of it can be zero-copy, and why."""

    name: str
    dtype: str
    shape: str
    zero_copy: bool
    why: str


@dataclass
class SourceReport:
    """A data source as ``inspect`` sees it."""

    path: str
    format: str
    samples: int | None
    fields: list[FieldReport]
    notes: list[str] = field(default_factory=list)


def _corrupt(message: str) -> Exception:
    from zcopy_data.errors import CorruptFileError

    return CorruptFileError(message)


# -- .npy ------------------------------------------------------------------------------------
def _npy_field(path: str, name: str) -> tuple[FieldReport, int]:
    fmt = np.lib.format
    if not os.path.isfile(path):  # a FIFO named .npy would block the read forever
        raise _corrupt(f"{path!r} is not a regular file (a FIFO, device or socket); only files are read")
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
        except (ValueError, OSError, EOFError) as err:
            raise _corrupt(f"{path!r}: not a readable .npy header ({err}); the file is truncated or corrupt") from None
        header = f.tell()
    size = os.path.getsize(path)
    if dtype.hasobject:
        return FieldReport(name, "object", "?", False, "object arrays hold pickled Python objects; never unpickled"), 0
    need = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise _corrupt(f"{path!r}: the header promises {need} bytes but the file has {size}; it is truncated")
    if not shape:
        return FieldReport(name, dtype_name(dtype), "()", False, "a 0-d array has no sample axis"), 0
    per = str(tuple(shape[1:]))
    if not dtype.isnative:
        why = f"byte order {dtype.str} is not native; rewrite once with arr.astype({dtype.newbyteorder('=').str!r})"
        return FieldReport(name, dtype_name(dtype), per, False, why), shape[0]
    if dtype.kind in "USVMm":
        return FieldReport(name, dtype_name(dtype), per, False, f"{dtype_name(dtype)} cannot be a tensor"), shape[0]
    why = "memory-mapped copy-on-write: contiguous batches are views, shuffled ones one gather"
    if fortran and len(shape) > 1:
        why += " (Fortran order: rows are strided; np.ascontiguousarray once makes gathers faster)"
    return FieldReport(name, dtype_name(dtype), per, True, why), shape[0]


def _inspect_npy(paths: dict[str, str], where: str) -> SourceReport:
    fields, counts = [], {}
    for name, p in paths.items():
        rep, n = _npy_field(p, name)
        fields.append(rep)
        counts[name] = n
    notes = []
    if len(set(counts.values())) > 1:
        notes.append(f"fields differ in length {counts}; NumpyDataset needs one row per sample in every field")
    fmt = ".npy file" if len(paths) == 1 else "folder of .npy files (NumpyDataset columns)"
    return SourceReport(where, fmt, min(counts.values()) if counts else 0, fields, notes)


# -- Arrow and Parquet -------------------------------------------------------------------------
def _inspect_arrow(path: str) -> SourceReport:
    from zcopy_data.datasets.arrow import ArrowDataset, open_ipc
    from zcopy_data.errors import UnsupportedColumnError

    _, schema, batches, _ = open_ipc(path)
    fields = []
    for name in schema.names:
        typ = schema.field(name).type
        try:
            f = ArrowDataset(path, [name]).schema[name]
        except UnsupportedColumnError as err:
            ragged = _ragged_report(path, name)
            if ragged is not None:
                fields.append(ragged)
                continue
            why = str(err).split(": ", 1)[-1]
            fields.append(FieldReport(name, _leaf_name(typ), _arrow_shape(typ), False, why))
            continue
        why = "memory-mapped copy-on-write: a batch inside one record batch is a view, any other one gather"
        fields.append(FieldReport(name, dtype_name(f.dtype), str(f.shape), True, why))
    with open(path, "rb") as fh:
        kind = "Arrow IPC file" if fh.read(6) == b"ARROW1" else "Arrow IPC stream"
    return SourceReport(path, f"{kind} ({len(batches)} record batches)", sum(b.num_rows for b in batches), fields)


def _ragged_report(path: str, name: str) -> FieldReport | None:
    """A list column whose lists differ in length, as a ragged field: its lengths, and how to serve it."""
    from zcopy_data.datasets.arrow import ArrowDataset
    from zcopy_data.errors import SchemaError, UnsupportedColumnError
    from zcopy_data.ragged import length_histogram

    try:
        ds = ArrowDataset(path, [name], ragged={name: "packed"})
    except (UnsupportedColumnError, SchemaError):
        return None
    f = ds.schema[name]
    lengths = ds.ragged_lengths(name)
    why = (
        f"variable length, zero-copy with ragged={{{name!r}: 'packed'}} (or 'padded', 'nested'); "
        f"lengths {length_histogram(lengths)}"
    )
    return FieldReport(name, dtype_name(f.dtype), str(f.shape), True, why)


def _inspect_arrow_shards(path: str) -> SourceReport:
    """A folder of Arrow shards (zcopy index, Hugging Face ``save_to_disk``, or ``*.arrow`` files): its layout."""
    from zcopy_data.datasets._arrow_shards import scan_shard
    from zcopy_data.datasets._shards import arrow_shard_files

    files, found_as = arrow_shard_files(path)
    infos = [scan_shard(f) for f in files]
    rows = [sum(i.batch_rows) for i in infos]
    report = _inspect_arrow(files[0])
    shown = ", ".join(f"{os.path.basename(f)}: {n}" for f, n in list(zip(files, rows, strict=True))[:8])
    more = f", ... ({len(files) - 8} more; {min(rows)} to {max(rows)} rows each)" if len(files) > 8 else ""
    notes = [f"rows per shard: {shown}{more}"]
    kinds = {"stream" if i.stream else "file" for i in infos}
    fmt = f"{found_as}, {len(files)} Arrow IPC {'/'.join(sorted(kinds))} shards"
    return SourceReport(path, fmt, sum(rows), report.fields, notes)


def _is_arrow_folder(entries: list[str]) -> bool:
    from zcopy_data.datasets._shards import INDEX_NAME

    arrow = (".arrow", ".feather", ".ipc", ".arrows")
    return INDEX_NAME in entries or "state.json" in entries or any(e.endswith(arrow) for e in entries)


def _arrow_shape(typ: Any) -> str:
    import pyarrow as pa

    dims: list[str] = []
    if pa.types.is_string(typ) or pa.types.is_binary(typ) or pa.types.is_dictionary(typ):
        return "?"
    if isinstance(typ, pa.FixedShapeTensorType):
        return str(tuple(typ.shape))
    while pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        dims.append(str(typ.list_size) if pa.types.is_fixed_size_list(typ) else "?")
        typ = typ.value_type
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _leaf_name(typ: Any) -> str:
    """``float32`` for a float32 column or a list / tensor of float32; the Arrow type name otherwise."""
    import pyarrow as pa

    leaf = typ.value_type if isinstance(typ, pa.FixedShapeTensorType) else typ
    while pa.types.is_fixed_size_list(leaf) or pa.types.is_list(leaf) or pa.types.is_large_list(leaf):
        leaf = leaf.value_type
    if pa.types.is_integer(leaf) or pa.types.is_floating(leaf):
        return dtype_name(np.dtype(leaf.to_pandas_dtype()))
    return str(typ)


def _inspect_parquet(path: str, cache_dir: str | None) -> SourceReport:
    from zcopy_data.datasets._arrow_columns import unsupported_reason
    from zcopy_data.datasets._decode_cache import cache_status, open_parquet

    pf, schema = open_parquet(path)  # the footer is read in a child first: a corrupt one can abort pyarrow
    meta = pf.metadata
    nulls: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            st = rg.column(c).statistics
            top = rg.column(c).path_in_schema.split(".")[0]
            if st is not None and st.has_null_count:
                nulls[top] = nulls.get(top, 0) + st.null_count
    fields = []
    for name in schema.names:
        typ = schema.field(name).type
        bad = unsupported_reason(typ)
        if bad is not None:
            fields.append(FieldReport(name, str(typ), _arrow_shape(typ), False, f"{bad[0]}; fix: {bad[1]}"))
        elif nulls.get(name):
            why = f"{nulls[name]} nulls; fill them once (pc.fill_null) or drop those rows"
            fields.append(FieldReport(name, _leaf_name(typ), _arrow_shape(typ), False, why))
        else:
            why = "Parquet is encoded: decoded once into an IPC cache (from_parquet), then views / one gather"
            fields.append(FieldReport(name, _leaf_name(typ), _arrow_shape(typ), False, why))
    usable = [f.name for f in fields if f.why.startswith("Parquet is encoded")]
    cols = None if len(usable) == len(fields) else usable
    cache, fresh = cache_status(path, kind="parquet", cache_dir=cache_dir, columns=cols)
    call = "ArrowDataset.from_parquet(path" + ("" if cols is None else f", columns={cols}") + ")"
    note = f"{call} caches in {cache} ({'fresh, reused' if fresh else 'not built yet'})"
    fmt = f"Parquet ({meta.num_row_groups} row groups)"
    return SourceReport(path, fmt, meta.num_rows, fields, [note])


# -- image folders -----------------------------------------------------------------------------
def _followable(why: str) -> bool:
    """An exclusion ``follow_symlinks=True`` undoes: a link out of the root or into another class."""
    return why.startswith("symbolic link") and "the root or one of its ancestors" not in why


def _image_mode_note(mode: str, alpha: bool, files: int) -> str:
    """What the default declared format (``mode='RGB'``, ``alpha='refuse'``) does with files of one mode."""
    from zcopy_data.datasets._image_modes import PixelFormat

    try:
        conversion = PixelFormat().conversion(mode, "unknown" if alpha else "none")
    except ZeroCopyError as err:
        opaque = " unless every pixel is opaque" if alpha and "transparency" in str(err) else ""
        return f"mode {mode} (x{files}): refused with the default mode='RGB'{opaque}: {err}"
    return f"mode {mode} (x{files}): " + ("RGB as is" if conversion == "none" else f"to RGB: {conversion}")


def _jpeg_decoder() -> str:
    from zcopy_data.datasets._jpeg_simple import HAS_SIMPLEJPEG, INSTALL_HINT, matches_pillow

    if matches_pillow():
        return "simplejpeg (decodes exactly Pillow's pixels here)"
    if HAS_SIMPLEJPEG:
        return "Pillow (simplejpeg is installed but does not match Pillow's pixels here)"
    return f"Pillow (faster: {INSTALL_HINT})"


def _inspect_images(path: str) -> SourceReport:
    from PIL import Image

    from zcopy_data.datasets._image_files import scan_folder
    from zcopy_data.datasets._image_modes import carries_alpha, source_mode

    scan = scan_folder(path, allow_empty=True)
    seen: dict[str, int] = {}
    modes: dict[tuple[str, bool], int] = {}  # (the file's real mode, may carry transparency) -> files
    for f in scan.files[:32]:
        try:
            with Image.open(f) as im:
                key = f"{im.format} {im.mode} {im.width}x{im.height}"
                mode = source_mode(im)
                modes[mode, carries_alpha(im, mode)] = modes.get((mode, carries_alpha(im, mode)), 0) + 1
        except (OSError, ValueError, SyntaxError) as err:
            key = f"unreadable ({type(err).__name__}: {err})"
        seen[key] = seen.get(key, 0) + 1
    sample = ", ".join(f"{k} x{v}" for k, v in seen.items())
    notes = [f"{len(scan.classes)} classes: {scan.classes[:10]}{' ...' if len(scan.classes) > 10 else ''}"]
    notes.append(f"first {min(32, len(scan.files))} files: {sample}")
    notes += [_image_mode_note(mode, alpha, n) for (mode, alpha), n in modes.items()]
    notes.append(
        "decode='exact' (default): Pillow's open + convert + resize, bit for bit; decode='fast': JPEGs decoded "
        f"at 1/2..1/8 scale first (draft mode); JPEG decoder with decoder='auto': {_jpeg_decoder()}"
    )
    notes += [
        f"left out {p}: {why}" + (" (follow_symlinks=True follows it)" if _followable(why) else "")
        for p, why in scan.excluded
    ]
    why = "compressed pixels: decoded, converted to the declared mode and resized, then one copy into the batch slot"
    fields = [
        FieldReport("image", "uint8", "(3, H, W) at size=(H, W), mode='RGB' (uint16 with mode='I;16')", False, why),
        FieldReport("label", "int64", "()", True, "in memory: contiguous batches are views, others one gather"),
    ]
    return SourceReport(path, "image folder (root/<class>/<file>)", len(scan.files), fields, notes)


# -- token files -------------------------------------------------------------------------------
def _inspect_tokens(path: str) -> SourceReport | None:
    """A Megatron-LM pair (tokens, dtype, documents, a length histogram) or a raw ``.bin``; else None."""
    from zcopy_data.datasets._megatron import megatron_paths, read_megatron_index

    pair = megatron_paths(path)
    if pair is not None:
        bin_path, idx_path = pair
        if not os.path.isfile(bin_path):
            raise _corrupt(f"{idx_path!r} has no .bin beside it: expected {bin_path!r}")
        index = read_megatron_index(idx_path, bin_path, identity_of(bin_path))
        lengths = np.diff(index.doc_starts)
        notes = [f"{index.tokens} {index.dtype.name} tokens in {lengths.size} documents ({index.sequences} sequences)"]
        if lengths.size:
            edges = np.quantile(lengths, [0, 0.5, 0.9, 0.99, 1]).astype(np.int64)
            notes.append("document lengths: min / median / p90 / p99 / max = " + " / ".join(map(str, edges)))
        why = "TokenDataset(prefix, seq_len): windows are views or one gather"
        rep = FieldReport("tokens", index.dtype.name, "[N]", True, why)
        return SourceReport(path, "Megatron-LM indexed dataset (.bin + .idx)", index.tokens, [rep], notes)
    if path.endswith(".bin") and os.path.isfile(path):
        size = os.path.getsize(path)
        guesses = ", ".join(f"{size // k} as {n}" for n, k in (("uint16", 2), ("int32", 4)) if size % k == 0)
        why = "a raw token file has no header: TokenDataset(path, seq_len, dtype=...)"
        rep = FieldReport("tokens", "?", "[N]", True, why)
        note = f"{size} bytes: {guesses or 'not a multiple of 2 bytes'} tokens (nanoGPT's prepare.py writes uint16)"
        return SourceReport(path, "raw token file (.bin, no header)", None, [rep], [note])
    return None


# -- entry points --------------------------------------------------------------------------------
def inspect_path(path: str | os.PathLike[str], *, cache_dir: str | None = None) -> SourceReport:
    """Describe the data source at ``path``; raises ``FileNotFoundError`` or a ``ZeroCopyError`` subclass."""
    path = os.fspath(path)
    tokens = _inspect_tokens(path) if not os.path.isdir(path) else None
    if tokens is not None:
        return tokens
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    if os.path.isdir(path):
        entries = sorted(os.listdir(path))
        npys = {e[:-4]: os.path.join(path, e) for e in entries if e.endswith(".npy")}
        if npys and not any(os.path.isdir(os.path.join(path, e)) for e in entries):
            return _inspect_npy(npys, path)
        if _is_arrow_folder(entries):
            return _inspect_arrow_shards(path)
        return _inspect_images(path)
    if not os.path.isfile(path):  # a FIFO, device or socket: reading it could block forever
        raise _corrupt(f"{path!r} is not a regular file (a FIFO, device or socket); only files are read")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x93NUMPY"):
        return _inspect_npy({os.path.basename(path).removesuffix(".npy"): path}, path)
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return _inspect_arrow(path)
    if head.startswith(b"PAR1"):
        return _inspect_parquet(path, cache_dir)
    if head.startswith(b"FEA1"):
        raise _corrupt(f"{path!r}: a Feather v1 file; rewrite it as Feather v2 (pyarrow.feather.write_feather)")
    if not head:
        raise _corrupt(f"{path!r}: the file is empty")
    raise _corrupt(
        f"{path!r}: unknown format (first bytes {head[:8]!r}); inspect reads .npy, Arrow IPC / Feather v2, "
        "Parquet, token files (.bin, Megatron-LM .bin/.idx) and image folders (root/<class>/<file>)"
    )


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name shown as ``\\xff`` escapes.

    Python decodes such names with ``surrogateescape``; printing them raises
    ``UnicodeEncodeError`` on a UTF-8 terminal, so every report escapes them first.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_report(report: SourceReport) -> str:
    """The report as a text table (printable: a non-UTF-8 file name is escaped)."""
    head = ("field", "dtype", "shape", "zero-copy", "why")
    rows = [(f.name, f.dtype, f.shape, "yes" if f.zero_copy else "no", f.why) for f in report.fields]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    samples = "unknown" if report.samples is None else f"{report.samples:,}"
    lines = [f"path:    {report.path}", f"format:  {report.format}", f"samples: {samples}", ""]
    for r in [head, (*("-" * w for w in widths), "---"), *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    lines += [f"note: {n}" for n in report.notes]
    return printable("\n".join(lines))


def _cmd_inspect(args: argparse.Namespace) -> int:
    try:
        report = inspect_path(args.path, cache_dir=args.cache_dir)
    except (FileNotFoundError, NotADirectoryError, ZeroCopyError) as err:
        print(f"zcopy-data inspect: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on an argparse subparsers object (``zcopy_data.cli`` calls this)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect", help="fields, dtypes, shapes, samples, and per field whether it is zero-copy and why"
    )
    p.add_argument("path", help=".npy file or folder, Arrow IPC / Feather v2, Parquet, or image folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cache-dir", default=None, help="where the Parquet IPC cache lives (default: the user cache)")
    p.set_defaults(func=_cmd_inspect)
    return p
