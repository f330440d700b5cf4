"""Decode a Parquet (or compressed Arrow IPC) file once into an uncompressed IPC cache file.

Parquet pages are encoded and compressed, so serving them always costs a decode. Doing that once
per file and then mapping the result turns every later epoch, run and worker into zero-copy reads.
The cache is reused while the source's size and modification time are unchanged, is written to a
temporary name and renamed into place (concurrent builders never see half a file), and the sizes a
Parquet footer declares are checked against the file before anything is allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from zcopy_data.datasets._arrow_columns import check_names
from zcopy_data.errors import CorruptFileError
from zcopy_data.ledger import DECODE, record

__all__ = [
    "PROGRESS_MIN_BYTES",
    "cache_status",
    "check_parquet_footer",
    "decoded_cache",
    "default_cache_dir",
    "open_parquet",
]

PROGRESS_MIN_BYTES = 256 << 20
"""Sources at least this large show a progress bar while they are decoded."""
_VERSION = 1


def default_cache_dir() -> Path:
    """``$ZCOPY_DATA_CACHE_DIR``, else ``$XDG_CACHE_HOME/zcopy_data/decoded`` (``~/.cache`` by default)."""
    env = os.environ.get("ZCOPY_DATA_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zcopy_data" / "decoded"


def _stamp(source: str) -> dict[str, Any]:
    st = os.stat(source)
    return {"source": os.path.realpath(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _paths(source: str, cache_dir: Path, columns: Sequence[str] | None, kind: str) -> tuple[Path, Path]:
    cols = None if columns is None else list(columns)  # a tuple and a list of the same names share a cache
    real = os.fsencode(os.path.realpath(source))  # a file name need not be UTF-8
    key = hashlib.sha256(real + f"|{cols}|{kind}|{_VERSION}".encode()).hexdigest()[:16]
    stem = os.fsencode(Path(source).stem).decode("utf-8", "replace")  # the cache's own name is UTF-8
    return cache_dir / f"{stem}.{key}.arrow", cache_dir / f"{stem}.{key}.json"


def check_parquet_footer(source: str, pf: Any) -> None:
    """Every column chunk the footer declares must lie inside the file (untrusted metadata)."""
    size = os.path.getsize(source)
    meta = pf.metadata
    rows = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if rg.num_rows < 0:
            raise CorruptFileError(f"{source!r}: row group {g} declares {rg.num_rows} rows; the file is corrupt")
        rows += rg.num_rows
        for c in range(rg.num_columns):
            col = rg.column(c)
            starts = [o for o in (col.dictionary_page_offset, col.data_page_offset) if o is not None and o > 0]
            start = min(starts) if starts else 0
            if start < 0 or col.total_compressed_size < 0 or start + col.total_compressed_size > size:
                raise CorruptFileError(
                    f"{source!r}: column {col.path_in_schema!r} of row group {g} declares bytes "
                    f"{start}..{start + col.total_compressed_size}, past the end of the {size}-byte file; "
                    "the file is truncated or corrupt, write it again"
                )
    if rows != meta.num_rows:
        raise CorruptFileError(f"{source!r}: row groups hold {rows} rows but the footer says {meta.num_rows}")


# Reads every piece of footer metadata the in-process checks (and zcopy-data inspect) read. Some
# corrupt footers make pyarrow abort the whole process (an uncaught C++ exception), so this runs
# first in a child.
_FOOTER_PROBE = """
import os, sys
import pyarrow as pa
import pyarrow.parquet as pq
try:
    pf = pq.ParquetFile(pa.OSFile(os.fsencode(sys.argv[1])))
    meta = pf.metadata
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            (col.dictionary_page_offset, col.data_page_offset, col.total_compressed_size, col.path_in_schema)
            st = col.statistics  # zcopy-data inspect reads the null counts
            if st is not None and st.has_null_count:
                st.null_count
    pf.schema_arrow
except Exception:
    pass  # ordinary errors are reported, with their message, by the in-process check
"""


def probe_parquet_footer(source: str) -> None:
    """Raise ``CorruptFileError`` when reading the footer's metadata crashes pyarrow (in a child)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _FOOTER_PROBE, source], capture_output=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise CorruptFileError(f"{source!r}: reading the Parquet footer did not finish in 120 s") from None
    if proc.returncode != 0:
        how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise CorruptFileError(
            f"{source!r}: pyarrow crashed ({how}) reading the Parquet footer; the file is corrupt, write it again"
        )


def open_parquet(source: str) -> tuple[Any, pa.Schema]:
    """``(ParquetFile, Arrow schema)`` of ``source`` once its untrusted footer passed every check.

    The footer is first read in a child process (a corrupt one can abort pyarrow), then checked
    against the file's size; names must be UTF-8. Any failure is a ``CorruptFileError`` naming the file.
    """
    import pyarrow.parquet as pq

    probe_parquet_footer(source)
    try:  # untrusted metadata: any failure to read it, names included, is a corrupt file
        pf = pq.ParquetFile(pa.OSFile(os.fsencode(source)))  # bytes: pyarrow cannot take a non-UTF-8 str path
        check_parquet_footer(source, pf)
        schema = pf.schema_arrow
    except UnicodeDecodeError as err:
        raise CorruptFileError(
            f"{source!r}: a column name in the Parquet footer is not valid UTF-8 (bytes {err.object!r}); Parquet "
            "names are UTF-8, so the file is corrupt or its writer broken; fix: write it again with UTF-8 names"
        ) from None
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        if isinstance(err, CorruptFileError):
            raise
        raise CorruptFileError(f"{source!r}: not a readable Parquet file ({err}); write it again") from None
    check_names(repr(source), schema)
    return pf, schema


def _parquet_batches(source: str, columns: Sequence[str] | None) -> tuple[pa.Schema, int, Iterator[pa.RecordBatch]]:
    pf, schema = open_parquet(source)
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise CorruptFileError(f"{source!r}: columns {missing} not found; the file has {schema.names}")
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)

    def batches() -> Iterator[pa.RecordBatch]:
        for g in range(pf.metadata.num_row_groups):
            yield from pf.read_row_group(g, columns=None if columns is None else list(columns)).to_batches()

    return schema, pf.metadata.num_row_groups, batches()


def _ipc_batches(source: str, columns: Sequence[str] | None) -> tuple[pa.Schema, int, Iterator[pa.RecordBatch]]:
    try:
        reader = pa.ipc.open_file(pa.memory_map(os.fsencode(source)))  # bytes: the name need not be UTF-8
    except (pa.ArrowInvalid, OSError) as err:
        raise CorruptFileError(f"{source!r}: not a readable Arrow IPC file ({err}); write it again") from None
    schema = reader.schema
    check_names(repr(source), schema)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(reader.num_record_batches):
            b = reader.get_batch(i)
            yield b if columns is None else b.select(list(columns))

    return schema, reader.num_record_batches, batches()


def _progress(total: int, desc: str, show: bool) -> Any:
    if not show:
        return contextlib.nullcontext(None)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a courtesy: decode without it
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="chunk")


def decoded_cache(
    source: str | os.PathLike[str],
    *,
    kind: str,
    cache_dir: str | os.PathLike[str] | None = None,
    columns: Sequence[str] | None = None,
    progress: bool | None = None,
    check: Callable[[pa.Schema], None] | None = None,
) -> tuple[str, bool]:
    """Path of the IPC cache of ``source`` (``kind`` "parquet" or "ipc"), built if stale; and whether it was reused.

    Args:
        progress: show a tqdm bar while decoding; default: only for sources of ``PROGRESS_MIN_BYTES`` or more.
        check: called with the (selected) schema before decoding, to refuse unusable columns early.
    """
    source = os.fspath(source)
    if not os.path.isfile(source):
        if os.path.exists(source) and not os.path.isdir(source):  # a FIFO would block the decode forever
            raise CorruptFileError(f"{source!r} is not a regular file (a FIFO, device or socket); only files are read")
        raise FileNotFoundError(f"no such file: {source!r}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = _paths(source, folder, columns, kind)
    stamp = _stamp(source)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("stamp") == stamp and data_path.stat().st_size == meta.get("cache_size"):
            return str(data_path), True
    except (OSError, ValueError):
        pass

    schema, chunks, batches = (_parquet_batches if kind == "parquet" else _ipc_batches)(source, columns)
    if check is not None:
        check(schema)
    free = shutil.disk_usage(folder).free
    tmp = data_path.with_name(f"{data_path.name}.{os.getpid()}.tmp")
    show = progress if progress is not None else stamp["size"] >= PROGRESS_MIN_BYTES
    decoded: dict[str, int] = dict.fromkeys(schema.names, 0)
    try:
        opts = pa.ipc.IpcWriteOptions(compression=None)
        with (
            pa.OSFile(os.fsencode(tmp), "wb") as sink,  # bytes: the folder's name need not be UTF-8
            pa.ipc.new_file(sink, schema, options=opts) as writer,
            _progress(chunks, f"decoding {Path(source).name}", show) as bar,
        ):
            written = 0
            for batch in batches:
                written += batch.nbytes
                if written > free:
                    raise CorruptFileError(
                        f"{source!r}: decoding needs more than the {free} bytes free in {str(folder)!r}; "
                        "pass cache_dir= on a larger disk"
                    )
                for name, col in zip(batch.schema.names, batch.columns, strict=True):
                    decoded[name] += col.nbytes
                writer.write_batch(batch)
                if bar is not None:
                    bar.update(1)
        os.replace(tmp, data_path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise CorruptFileError(f"{source!r}: decoding failed ({err}); the file is truncated or corrupt") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    cols = None if columns is None else list(columns)
    meta_path.write_text(json.dumps({"stamp": stamp, "cache_size": data_path.stat().st_size, "columns": cols}))
    what = "Parquet" if kind == "parquet" else "compressed IPC"
    for name, n in decoded.items():
        record(DECODE, name, f"{what} decoded once into the IPC cache {data_path.name}", copied=n)
    return str(data_path), False


def cache_status(
    source: str | os.PathLike[str],
    *,
    kind: str,
    cache_dir: str | os.PathLike[str] | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[str, bool]:
    """Where the cache of ``source`` lives and whether it is fresh (built and the source unchanged)."""
    source = os.fspath(source)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_path, meta_path = _paths(source, folder, columns, kind)
    try:
        meta = json.loads(meta_path.read_text())
        fresh = meta.get("stamp") == _stamp(source) and data_path.stat().st_size == meta.get("cache_size")
    except (OSError, ValueError):
        fresh = False
    return str(data_path), fresh
