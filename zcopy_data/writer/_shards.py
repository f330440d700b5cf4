"""One shard: an uncompressed Arrow IPC file written under a temp name, renamed only when complete.

Next to each complete shard a sidecar (``shard-00000.arrow.done.json``) records its rows, size,
SHA-256, rows per record batch and the plan it was written under; a rerun keeps a shard whose
sidecar matches its plan and whose bytes still hash to the recorded digest, and writes it again
otherwise. The sidecars go once the index (which records the same figures) is written.

Rows per record batch (``batch_rows``, runs of ``[rows, repeat]``) let a reader plan batches over
shards it has not downloaded yet (:mod:`zcopy_data.remote`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from zcopy_data.ledger import DECODE, record
from zcopy_data.writer._layout import Layout

__all__ = [
    "ENTRY_KEYS",
    "SHARD_RE",
    "ShardEntry",
    "batch_runs",
    "entry_of",
    "kept_shard",
    "remove_partials",
    "sha256_of",
    "shard_name",
    "sidecar_of",
    "write_json",
    "write_shard",
]

ShardEntry = dict[str, Any]  # {"file", "rows", "bytes", "sha256", "batch_rows"}
ENTRY_KEYS = ("file", "rows", "bytes", "sha256", "batch_rows")

SHARD_RE = re.compile(r"shard-(\d{5,})\.arrow")
PARTIAL_SUFFIX = ".partial"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.arrow"


def sidecar_of(folder: Path, k: int) -> Path:
    return folder / f"{shard_name(k)}.done.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def batch_runs(rows: list[int]) -> list[list[int]]:
    """Rows per record batch as ``[rows, repeat]`` runs: a shard of equal batches is one or two runs."""
    runs: list[list[int]] = []
    for r in rows:
        if runs and runs[-1][0] == r:
            runs[-1][1] += 1
        else:
            runs.append([r, 1])
    return runs


def _footer_runs(path: Path) -> list[list[int]]:
    """A finished shard's rows per record batch, read from its footer (metadata pages only)."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return batch_runs([reader.get_batch(i).num_rows for i in range(reader.num_record_batches)])


def entry_of(folder: Path, recorded: dict[str, Any]) -> ShardEntry:
    """The index entry of a kept shard; one recorded before ``batch_rows`` existed gets them from its footer."""
    entry = {key: recorded[key] for key in ENTRY_KEYS if key in recorded}
    if "batch_rows" not in entry:
        entry["batch_rows"] = _footer_runs(folder / entry["file"])
    return entry


def _arrow_array(values: np.ndarray[Any, Any] | list[str], shape: tuple[int, ...]) -> pa.Array:
    if isinstance(values, list):
        return pa.array(values, type=pa.string())
    flat = np.ascontiguousarray(values).reshape(-1)  # a view for the buffers readers and collates give
    arr: pa.Array = pa.array(flat)
    for d in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    return arr


def write_shard(
    folder: Path,
    k: int,
    layout: Layout,
    batches: Iterable[dict[str, Any]],
    fingerprint: dict[str, Any],
    on_rows: Callable[[int], None] | None = None,
) -> ShardEntry:
    """Write shard ``k`` from its column batches (one record batch each), rename it, then its sidecar."""
    name = shard_name(k)
    final, tmp = folder / name, folder / f".{name}{PARTIAL_SUFFIX}"
    schema = layout.arrow_schema()
    rows = 0
    per_batch: list[int] = []
    options = pa.ipc.IpcWriteOptions(compression=None)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for cols in batches:
            arrays = [_arrow_array(cols[c.name], c.shape) for c in layout.columns]
            batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
            writer.write_batch(batch)
            for c, a in zip(layout.columns, arrays, strict=True):
                record(DECODE, c.name, f"write: record batch written into {name}", copied=a.nbytes)
            rows += batch.num_rows
            per_batch.append(batch.num_rows)
            if on_rows is not None:
                on_rows(batch.num_rows)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())  # the rename below must never publish a shard whose bytes are not on disk
    entry: ShardEntry = {
        "file": name,
        "rows": rows,
        "bytes": tmp.stat().st_size,
        "sha256": sha256_of(tmp),
        "batch_rows": batch_runs(per_batch),
    }
    os.replace(tmp, final)
    write_json(sidecar_of(folder, k), {**entry, "plan": fingerprint})
    return entry


def kept_shard(folder: Path, k: int, rows: int | None, fingerprint: dict[str, Any]) -> ShardEntry | None:
    """Shard ``k`` from an earlier run when it is complete, of this plan, and its bytes verify; else ``None``."""
    try:
        side = json.loads(sidecar_of(folder, k).read_text())
        path = folder / shard_name(k)
        ok = (
            side.get("plan") == fingerprint
            and side.get("file") == path.name
            and (rows is None or side.get("rows") == rows)
            and path.stat().st_size == side.get("bytes")
            and sha256_of(path) == side.get("sha256")
        )
        return entry_of(folder, side) if ok else None
    except (OSError, ValueError, AttributeError, pa.ArrowInvalid):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON under a temp name, then rename it into place."""
    tmp = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def remove_partials(folder: Path) -> None:
    """Temp files left by an interrupted run."""
    for p in folder.glob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
