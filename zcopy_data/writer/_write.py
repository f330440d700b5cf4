"""``write``: any dataset into a folder of zero-copy shards, resumable and byte-for-byte deterministic."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from zcopy_data.errors import SchemaError
from zcopy_data.schema import Schema, sample_items
from zcopy_data.writer._layout import Layout
from zcopy_data.writer._parallel import write_parallel
from zcopy_data.writer._plan import Plan
from zcopy_data.writer._progress import progress_bar
from zcopy_data.writer._readers import (
    ColumnBatch,
    MapReader,
    SampleStream,
    encode_samples,
    freeze,
    freeze_items,
    map_reader,
)
from zcopy_data.writer._shards import (
    SHARD_RE,
    ShardEntry,
    entry_of,
    kept_shard,
    remove_partials,
    sha256_of,
    shard_name,
    sidecar_of,
    write_json,
    write_shard,
)

__all__ = ["INDEX_NAME", "WriteReport", "write"]

INDEX_NAME = "zcopy_index.json"
DEFAULT_SHARD_SIZE = 256 << 20
DEFAULT_RECORD_BATCH_SIZE = 8 << 20


@dataclass(frozen=True)
class WriteReport:
    """What a :func:`write` did: the index it wrote, and how many shards it wrote or kept."""

    index: Path
    rows: int
    shards: int
    written: int
    kept: int


@dataclass(frozen=True)
class _MapJob:
    """Writes one shard of a map-style source: its rows, a record batch at a time."""

    reader: MapReader
    layout: Layout
    plan: Plan
    folder: Path
    fingerprint: dict[str, Any]

    def __call__(self, k: int, on_rows: Callable[[int], None]) -> ShardEntry:
        lo, hi = self.plan.shard_range(k)
        step = self.plan.batch_rows
        batches = (self.reader.read(a, min(a + step, hi), self.layout) for a in range(lo, hi, step))
        return write_shard(self.folder, k, self.layout, batches, self.fingerprint, on_rows)


def write(
    source: Any,
    path: str | os.PathLike[str],
    *,
    schema: Schema | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    record_batch_size: int = DEFAULT_RECORD_BATCH_SIZE,
    workers: int = 0,
    start_method: str | None = None,
    progress: bool = True,
) -> WriteReport:
    """Write ``source`` into the folder ``path`` as uncompressed Arrow IPC shards plus ``zcopy_index.json``.

    Loading the folder back is zero-copy: every field is a fixed-shape tensor column (strings are
    Arrow strings), decoded once here -- PIL images become ``uint8`` (H, W, C) arrays, an
    :class:`~zcopy_data.ImageFolderDataset` is decoded and resized here.

    Args:
        source: a map-style dataset (``__len__`` + ``__getitem__``: a list of samples, a torch
            ``Dataset``, a :class:`~zcopy_data.ZeroCopyDataset`, a Hugging Face ``Dataset``), or
            any iterable of samples. A sample is a dict (or tuple: fields ``"0"``, ``"1"``, ...) of
            NumPy arrays, tensors, numbers, PIL images and ``str``.
        path: the output folder (created if missing).
        schema: the fields' dtypes and shapes; default: frozen from sample 0. Either way every
            sample is checked against it and a mismatch is an error naming the sample, the field,
            what was expected and what was found. String fields need no declaration.
        shard_size: target bytes per shard; rows per shard follow from the sample size.
        record_batch_size: target bytes per record batch (rows a power of two, so aligned
            power-of-two loader batches never straddle two record batches).
        workers: worker processes writing whole shards (0: this process). The output is the
            same for any number. Needs a map-style source.
        start_method: ``"fork"`` (default where available: the source is inherited) or ``"spawn"``.
        progress: a tqdm bar with samples/s (when tqdm is installed).

    Returns:
        What was written: the index path, rows, shards, and how many were written or kept.

    A shard is renamed into place only once complete, with its size and SHA-256 in a sidecar; an
    interrupted write run again with the same arguments keeps the complete, verified shards and
    writes the rest, so its files are byte-for-byte those of an uninterrupted run. The index is
    written last. The same input always gives the same bytes (no timestamps anywhere).

    >>> import numpy as np, tempfile
    >>> samples = [{"x": np.full((2, 2), i, np.uint8), "y": i} for i in range(10)]
    >>> report = write(samples, tempfile.mkdtemp(), progress=False)
    >>> report.rows, report.shards
    (10, 1)

    .. note:: A rerun cannot tell whether the source's values changed since the first run (only
       its schema and length); delete the folder after changing the data.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"{workers=} should be an int >= 0 (0: write in this process)")
    if schema is not None and not isinstance(schema, Schema):
        raise TypeError(f"schema should be a zcopy_data.Schema, found {type(schema).__name__}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{str(folder)!r} exists and is not a folder; give a folder to write the shards into")
    folder.mkdir(parents=True, exist_ok=True)
    remove_partials(folder)
    sizes = {"shard_size": shard_size, "batch_size": record_batch_size}
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        return _write_map(source, folder, schema, sizes, workers, start_method, progress)
    if workers > 0:
        raise ValueError(
            f"{workers=}: an iterable without __len__ is read once, in order, so it is written in this process; "
            "pass workers=0, or give a map-style dataset (__len__ + __getitem__) to write in parallel"
        )
    return _write_stream(source, folder, schema, sizes, progress)


def _write_map(
    source: Any,
    folder: Path,
    schema: Schema | None,
    sizes: dict[str, int],
    workers: int,
    start_method: str | None,
    progress: bool,
) -> WriteReport:
    reader = map_reader(source)
    n = len(reader)
    if n == 0:
        raise SchemaError("the source is empty; there is nothing to write")
    layout = freeze(reader, schema)
    plan = Plan.for_layout(layout, n, **sizes)
    fingerprint = plan.fingerprint(layout)
    previous = _previous_index(folder, fingerprint)
    _drop_index(folder)
    entries: dict[int, ShardEntry] = {}
    todo = []
    for k in range(plan.num_shards):
        lo, hi = plan.shard_range(k)
        kept = _kept(folder, k, hi - lo, fingerprint, previous)
        if kept is None:
            todo.append(k)
        else:
            entries[k] = kept
    _remove_stale(folder, plan.num_shards)
    job = _MapJob(reader, layout, plan, folder, fingerprint)
    with progress_bar(n, enabled=progress, desc=f"write {folder.name}") as update:
        update(sum(e["rows"] for e in entries.values()))
        if workers > 0 and len(todo) > 1:
            entries.update(write_parallel(job, todo, min(workers, len(todo)), start_method, update))
        else:
            for k in todo:
                entries[k] = job(k, update)
    return _finish(folder, layout, fingerprint, [entries[k] for k in range(plan.num_shards)], len(todo))


def _write_stream(
    source: Any, folder: Path, schema: Schema | None, sizes: dict[str, int], progress: bool
) -> WriteReport:
    stream = SampleStream(source)
    layout = freeze_items(sample_items(stream.first()), schema)
    plan = Plan.for_layout(layout, None, **sizes)
    fingerprint = plan.fingerprint(layout)
    previous = _previous_index(folder, fingerprint)
    _drop_index(folder)
    shards: list[ShardEntry] = []
    written = 0
    with progress_bar(None, enabled=progress, desc=f"write {folder.name}") as update:
        while samples := stream.take(plan.shard_rows):
            k, lo = len(shards), len(shards) * plan.shard_rows
            kept = _kept(folder, k, len(samples), fingerprint, previous)
            if kept is None:
                step = plan.batch_rows
                batches: Iterator[ColumnBatch] = (
                    encode_samples(samples[a : a + step], lo + a, layout) for a in range(0, len(samples), step)
                )
                kept = write_shard(folder, k, layout, batches, fingerprint, update)
                written += 1
            else:
                update(len(samples))
            shards.append(kept)
    _remove_stale(folder, len(shards))
    return _finish(folder, layout, fingerprint, shards, written)


def _finish(
    folder: Path, layout: Layout, fingerprint: dict[str, Any], shards: list[ShardEntry], written: int
) -> WriteReport:
    rows = sum(e["rows"] for e in shards)
    index = {
        "format": fingerprint["format"],
        "version": fingerprint["version"],
        "rows": rows,
        "schema": layout.to_json(),
        "shards": shards,
        "shard_rows": fingerprint["shard_rows"],
        "record_batch_rows": fingerprint["record_batch_rows"],
    }
    write_json(folder / INDEX_NAME, index)
    for k in range(len(shards)):
        with contextlib.suppress(FileNotFoundError):
            sidecar_of(folder, k).unlink()  # the index records the same figures now
    return WriteReport(folder / INDEX_NAME, rows, len(shards), written, len(shards) - written)


def _previous_index(folder: Path, fingerprint: dict[str, Any]) -> dict[int, ShardEntry]:
    """The shards a complete earlier run of the same plan recorded in its index (empty otherwise)."""
    try:
        old = json.loads((folder / INDEX_NAME).read_text())
        if any(old.get(key) != value for key, value in fingerprint.items()):
            return {}
        return {k: e for k, e in enumerate(old["shards"]) if e.get("file") == shard_name(k)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _kept(
    folder: Path, k: int, rows: int, fingerprint: dict[str, Any], previous: dict[int, ShardEntry]
) -> ShardEntry | None:
    """Shard ``k`` when an earlier run of this plan completed it (sidecar or index) and its bytes verify.

    A shard known from the old index gets its sidecar back, so it is still kept if this run is
    interrupted too (the old index is removed before anything is rewritten).
    """
    entry = kept_shard(folder, k, rows, fingerprint)
    if entry is None:
        entry = _verified(folder, previous.get(k), rows)
        if entry is not None:
            write_json(sidecar_of(folder, k), {**entry, "plan": fingerprint})
    return entry


def _verified(folder: Path, entry: ShardEntry | None, rows: int) -> ShardEntry | None:
    """``entry`` (from an earlier index) when its shard is still there with the recorded rows and bytes."""
    if entry is None or entry.get("rows") != rows:
        return None
    try:
        path = folder / entry["file"]
        ok = path.stat().st_size == entry["bytes"] and sha256_of(path) == entry["sha256"]
        return entry_of(folder, entry) if ok else None
    except (OSError, KeyError, TypeError, pa.ArrowInvalid):
        return None


def _drop_index(folder: Path) -> None:
    """Remove the index first, so no reader sees it next to shards being rewritten."""
    with contextlib.suppress(FileNotFoundError):
        (folder / INDEX_NAME).unlink()


def _remove_stale(folder: Path, count: int) -> None:
    """Shards (and sidecars) past the last one of this plan, left by an earlier, larger write."""
    for p in folder.iterdir():
        m = SHARD_RE.fullmatch(p.name.removesuffix(".done.json"))
        if m is not None and int(m.group(1)) >= count:
            p.unlink()
