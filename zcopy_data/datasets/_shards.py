"""Many files as one dataset: global row indices over shards, mapped lazily, gathered in one copy.

A sharded source is a table of *chunks* (a record batch of an Arrow shard, or a whole ``.npy``
shard): their global first rows, the shard each lives in, and -- while the shard is mapped -- the
address of each chunk's first row per field. Shards are opened on first use through a bounded LRU,
so ten thousand shards hold at most ``max_open`` mappings (and file descriptors) at once.

A batch inside one chunk is a view of it; any other batch is one ``index_select`` per field
wherever its rows live (:mod:`zcopy_data.datasets._shard_gather`).
"""

from __future__ import annotations

import glob
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from zcopy_data._file_watch import FileWatch
from zcopy_data.errors import CorruptFileError, SchemaError

__all__ = [
    "CHECKS_PER_BATCH",
    "DEFAULT_MAX_OPEN",
    "ChunkTable",
    "ShardCache",
    "arrow_shard_files",
    "expand_paths",
    "index_entries",
    "is_glob",
]

DEFAULT_MAX_OPEN = 128  # shards mapped at once (each mapping holds one file descriptor)
# files a batch compares with their identity (one stat each): every open shard, so a shard rewritten
# after the dataset was built is never read, not even for one batch (see ShardCache.check_some)
CHECKS_PER_BATCH: int | None = None
INDEX_NAME = "zcopy_index.json"
_ARROW_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")

R = TypeVar("R")


def is_glob(text: str) -> bool:
    """Whether ``text`` is a glob pattern rather than a path (``*``, ``?`` or ``[``)."""
    return glob.has_magic(text)


def expand_paths(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], what: str) -> list[str] | None:
    """The shard paths ``source`` names (a list, or a glob), in order; ``None`` for one plain path."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.exists(text) or not is_glob(text):
            return None
        found = sorted(glob.glob(text))
        if not found:
            raise FileNotFoundError(f"{what}: the glob {text!r} matches no file; check the pattern and the folder")
        return found
    paths = [os.fspath(p) for p in source]
    if not paths:
        raise ValueError(f"{what}: an empty list of shards; pass at least one file")
    return paths


def arrow_shard_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[list[str], str]:
    """The Arrow files ``source`` names, in dataset order, and how they were found.

    A list or a glob is taken as given (a glob sorted). A folder is read as: its ``zcopy_index.json``
    (shard order, sizes checked), else a Hugging Face ``save_to_disk`` folder (``state.json``),
    else its sorted ``*.arrow`` / ``*.feather`` / ``*.ipc`` files. One file is one file.
    """
    paths = expand_paths(source, "ArrowDataset")
    if paths is not None:
        return paths, "list of shards" if not isinstance(source, (str, os.PathLike)) else "glob of shards"
    folder = os.fspath(source)  # type: ignore[arg-type]
    if not os.path.isdir(folder):
        return [folder], "file"
    index = os.path.join(folder, INDEX_NAME)
    if os.path.exists(index):
        return _from_index(folder, index), "zcopy shard folder"
    state = os.path.join(folder, "state.json")
    if os.path.exists(state):
        return _from_hf_state(folder, state), "Hugging Face save_to_disk folder"
    found = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(_ARROW_SUFFIXES))
    if not found:
        raise FileNotFoundError(
            f"{folder!r} holds no {INDEX_NAME}, no state.json and no *.arrow / *.feather / *.ipc file; "
            "point ArrowDataset at a file, a folder of shards or a glob"
        )
    return found, "folder of shards"


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{path!r}: cannot read it as JSON ({err}); write the folder again") from None


def index_entries(meta: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The shards of a zcopy-shards index, checked: ``(file name, entry)`` in the index's order."""
    if not isinstance(meta, dict) or meta.get("format") != "zcopy-shards" or not isinstance(meta.get("shards"), list):
        raise CorruptFileError(
            f"{where!r}: expected a zcopy-shards index (format 'zcopy-shards', a list of shards), "
            f"found {str(meta)[:80]!r}; write the folder again with zcopy_data.write"
        )
    if meta.get("version") != 1:
        raise CorruptFileError(f"{where!r}: index version {meta.get('version')!r} is not known (expected 1)")
    out = []
    for i, entry in enumerate(meta["shards"]):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or os.path.basename(name) != name or "/" in name:
            raise CorruptFileError(f"{where!r}: shard {i} has no plain file name ({entry!r}); write the folder again")
        out.append((name, entry))
    return out


def _from_index(folder: str, index: str) -> list[str]:
    paths = []
    for i, (name, entry) in enumerate(index_entries(_read_json(index), index)):
        path = os.path.join(folder, name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{index!r} lists shard {i} {name!r}, which is missing; restore it or write the folder again"
            ) from None
        want = entry.get("bytes")
        if want is not None and size != want:
            raise CorruptFileError(
                f"shard {i} {path!r}: the index says {want} bytes, the file has {size}; it was rewritten or "
                "truncated after the index was written; restore it or write the folder again"
            )
        paths.append(path)
    return paths


def _from_hf_state(folder: str, state: str) -> list[str]:
    meta = _read_json(state)
    files = meta.get("_data_files") if isinstance(meta, dict) else None
    if not isinstance(files, list) or not files:
        raise CorruptFileError(
            f"{state!r}: expected a Hugging Face state.json with a list '_data_files', found "
            f"{str(meta)[:80]!r}; save the dataset again (Dataset.save_to_disk)"
        )
    paths = []
    for i, entry in enumerate(files):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or os.path.basename(name) != name:
            raise CorruptFileError(f"{state!r}: data file {i} has no plain file name ({entry!r})")
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{state!r} lists data file {i} {name!r}, which is missing; save the dataset again")
        paths.append(path)
    return paths


class ShardCache(Generic[R]):
    """At most ``max_open`` opened shards, least recently used dropped first (thread-safe).

    ``on_open(i, reader)`` runs under the lock when shard ``i`` is opened, so callers can cache
    what the reader says (addresses) consistently with what the cache holds.
    """

    def __init__(
        self,
        opener: Callable[[int], R],
        max_open: int,
        on_open: Callable[[int, R], None],
        path_of: Callable[[int], str] | None = None,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"{max_open=} should be >= 1")
        self._opener = opener
        self._on_open = on_open
        self.max_open = max_open
        self._open: OrderedDict[int, R] = OrderedDict()
        self._checked: OrderedDict[int, None] = OrderedDict()  # open shards, least recently checked first
        self.lock = threading.RLock()
        self.generation = 0  # moves on whenever the set of open shards changes
        # with path_of, open shards' files are watched: a batch checks only those that saw a change
        self._path_of = path_of
        self._watch = FileWatch() if path_of is not None else None
        self._due: set[int] = set()  # to check at the next batch whatever the watch says

    def get(self, i: int) -> R:
        """Shard ``i``, opened now if it is not open (call with :attr:`lock` held to batch lookups)."""
        with self.lock:
            reader = self._open.get(i)
            if reader is not None:
                self._open.move_to_end(i)
                return reader
            if self._watch is not None and self._path_of is not None:
                self._watch.add(i, self._path_of(i))
                self._due.add(i)  # what changed between the opener's check and the watch: checked once
            try:
                reader = self._opener(i)  # checks the file against the identity it was scanned as
            except BaseException:
                self._due.discard(i)
                if self._watch is not None:
                    self._watch.remove(i)  # not open: no watch left behind
                raise
            self._open[i] = reader
            self._checked[i] = None
            self._on_open(i, reader)
            self.generation += 1
            while len(self._open) > self.max_open:
                gone, _ = self._open.popitem(last=False)  # its mapping goes once no batch views it
                self._checked.pop(gone, None)
                self._due.discard(gone)
                if self._watch is not None:
                    self._watch.remove(gone)
            return reader

    def opened(self) -> list[tuple[int, R]]:
        """The open shards and their readers (call with :attr:`lock` held)."""
        return list(self._open.items())

    def check_some(self, check: Callable[[int], None], limit: int | None = CHECKS_PER_BATCH) -> None:
        """Run ``check(i)`` on the open shards (``limit``: at most that many, those checked longest
        ago first; ``None``, the default: all of them).

        With a watch, only the open shards whose file saw a change since the last batch (or that
        cannot be watched) are checked: the same shards fail, for one system call instead of one
        per open shard. A shard whose check fails is checked again at every batch after.
        """
        with self.lock:
            changed = self._watch.changed() if self._watch is not None else None  # None: check them all
            if changed is None:
                due = list(self._checked)[:limit]
                for i in due:
                    self._checked.move_to_end(i)
            else:
                assert self._watch is not None
                due = [i for i in self._due | changed | self._watch.unwatched if i in self._open]
            self._due.clear()
        try:
            for i in due:
                check(i)
        except BaseException:
            with self.lock:
                self._due.update(i for i in due if i in self._open)
            raise

    def is_open(self, i: int) -> bool:
        return i in self._open

    def clear(self) -> None:
        with self.lock:
            if self._watch is not None:
                for i in self._open:
                    self._watch.remove(i)
            self._open.clear()
            self._checked.clear()
            self._due.clear()
            self.generation += 1

    def __len__(self) -> int:
        return len(self._open)


class ChunkTable:
    """Chunks of a sharded source: global first rows, shard of each, and each one's first-row addresses.

    Args:
        rows: rows of every chunk, shard after shard (empty chunks left out).
        shard_of: the shard of each chunk.
        local: the chunk's position in its shard (the reader's chunk number).
        fields: field names whose addresses are tracked.
    """

    def __init__(
        self, rows: Sequence[int], shard_of: Sequence[int], local: Sequence[int], fields: Sequence[str]
    ) -> None:
        self.starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(np.asarray(rows, dtype=np.int64), out=self.starts[1:])
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.local = np.asarray(local, dtype=np.int64)
        # chunks of shard s: first_chunk[s] : first_chunk[s + 1]
        n_shards = int(self.shard_of.max()) + 1 if self.shard_of.size else 0
        self.first_chunk = np.searchsorted(self.shard_of, np.arange(n_shards + 1), side="left")
        self.addresses = {f: np.zeros(len(rows), dtype=np.int64) for f in fields}

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def locate(self, indices: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """``(chunk, row within chunk)`` of each global index (vectorised)."""
        chunk = np.searchsorted(self.starts, indices, side="right") - 1
        return chunk, indices - self.starts[chunk]

    def chunks_of(self, indices: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The chunk of each global index (vectorised)."""
        chunk: np.ndarray[Any, Any] = self.starts.searchsorted(indices, side="right")
        chunk -= 1
        return chunk

    def chunk_of(self, i: int) -> tuple[int, int]:
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        return c, i - int(self.starts[c])

    def note_open(self, shard: int, views: dict[str, list[np.ndarray[Any, Any]]]) -> None:
        """Record the first-row address of every chunk of ``shard`` (call under the cache lock)."""
        lo, hi = int(self.first_chunk[shard]), int(self.first_chunk[shard + 1])
        for name, chunks in views.items():
            if name in self.addresses:
                self.addresses[name][lo:hi] = [chunks[int(j)].ctypes.data for j in self.local[lo:hi]]


def check_same(where: str, field: str, expected: object, found: object) -> None:
    """A shard's field disagrees with the first shard's: the drifting shard, the field, both sides."""
    if expected != found:
        raise SchemaError(
            f"{where}: field {field!r} is {found}, the first shard has {expected}; every shard needs one schema; "
            "fix: write the drifting shard again with the first shard's types, or leave it out",
            field=field,
        )
