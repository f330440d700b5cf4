"""What a shard URL holds: its shards in dataset order, with size, ETag and digest, read from a listing.

A prefix with a ``zcopy_index.json`` (what :func:`zcopy_data.write` makes) is read in the
index's order, with its sizes, SHA-256 digests, rows and (indexes written since they were added)
rows per record batch; any other prefix is its sorted ``*.arrow`` / ``*.feather`` / ``*.ipc``
objects. Sizes and ETags come from the object listing: no shard data is read.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from zcopy_data.datasets._shards import index_entries
from zcopy_data.errors import CorruptFileError, RemoteShardError

__all__ = ["INDEX_NAME", "RemoteShard", "list_shards"]

INDEX_NAME = "zcopy_index.json"
_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")


@dataclass(frozen=True)
class RemoteShard:
    """One shard object: where it is, and the identity its download must match."""

    index: int
    url: str  # as the user would write it: s3://bucket/prefix/shard-00000.arrow
    path: str  # the path inside the filesystem
    size: int
    etag: str | None
    sha256: str | None = None  # from the index, when there is one
    rows: int | None = None  # from the index, when there is one
    batch_rows: tuple[int, ...] | None = None  # rows per record batch, from an index that records them

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def _etag(info: dict[str, Any]) -> str | None:
    tag = info.get("ETag") or info.get("etag")
    return str(tag).strip('"') if tag else None


def list_shards(fs: Any, root: str, url: str) -> list[RemoteShard]:
    """The shards under ``root`` (``url`` names it in messages), in dataset order."""
    base = url.rstrip("/")
    try:
        listing = {posixpath.basename(i["name"]): i for i in fs.ls(root, detail=True) if i.get("type") == "file"}
    except FileNotFoundError:
        raise FileNotFoundError(f"{url!r}: no such bucket or prefix; check the URL and the endpoint") from None
    except OSError as err:
        raise RemoteShardError(
            f"{url!r}: cannot list the prefix ({err}); check the URL, the credentials and the endpoint"
        ) from err
    if INDEX_NAME in listing:
        return _from_index(fs, base, listing)
    names = sorted(n for n in listing if n.endswith(_SUFFIXES))
    if not names:
        raise FileNotFoundError(
            f"{url!r} holds no {INDEX_NAME} and no *.arrow / *.feather / *.ipc object (found {sorted(listing)[:5]}); "
            "point it at the prefix the shards were uploaded under"
        )
    return [
        RemoteShard(k, f"{base}/{n}", listing[n]["name"], int(listing[n]["size"]), _etag(listing[n]))
        for k, n in enumerate(names)
    ]


def _from_index(fs: Any, base: str, listing: dict[str, dict[str, Any]]) -> list[RemoteShard]:
    where = f"{base}/{INDEX_NAME}"
    try:
        meta = json.loads(fs.cat_file(listing[INDEX_NAME]["name"]))
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{where!r}: cannot read it as JSON ({err}); upload the folder again") from None
    shards = []
    for k, (name, entry) in enumerate(index_entries(meta, where)):
        info = listing.get(name)
        if info is None:
            raise FileNotFoundError(f"{where!r} lists shard {k} {name!r}, which is not under {base!r}; upload it again")
        size, want = int(info["size"]), entry.get("bytes")
        if want is not None and size != want:
            raise CorruptFileError(
                f"{base}/{name}: the index says {want} bytes, the object has {size}; it was replaced after the index "
                "was written; upload the folder again"
            )
        rows = entry.get("rows")
        shards.append(
            RemoteShard(
                k,
                f"{base}/{name}",
                info["name"],
                size,
                _etag(info),
                entry.get("sha256"),
                rows,
                _batch_rows(entry, rows, f"{base}/{name}"),
            )
        )
    return shards


def _batch_rows(entry: dict[str, Any], rows: int | None, where: str) -> tuple[int, ...] | None:
    """The entry's rows per record batch (``[[rows, repeat], ...]`` runs), checked against its rows.

    ``None`` when the index predates them: the shard's footer says, once it is fetched.
    """
    runs = entry.get("batch_rows")
    if runs is None:
        return None
    try:
        out = tuple(int(r) for r, n in runs for _ in range(int(n)))
    except (TypeError, ValueError):
        raise CorruptFileError(
            f"{where}: the index's batch_rows {str(runs)[:60]!r} are not [[rows, repeat], ...] runs; "
            "write the folder again with zcopy_data.write"
        ) from None
    if rows is not None and sum(out) != rows:
        raise CorruptFileError(
            f"{where}: the index's record batches hold {sum(out)} rows, its rows say {rows}; write the folder again"
        )
    return out
