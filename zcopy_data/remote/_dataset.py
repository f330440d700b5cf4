"""``remote_arrow_dataset``: an ``ArrowDataset`` over the shards one rank reads, fetched through the cache.

The rank's shards are downloaded in the order its sampler reads them (``max_downloads`` at a
time), then opened as one local ``ArrowDataset``: every batch after that is a view or one gather
out of the cached files' mappings, exactly as for local shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zcopy_data.remote._cache import RemoteShards
from zcopy_data.remote._sampler import ShardShuffleSampler

if TYPE_CHECKING:
    from zcopy_data.datasets.arrow import ArrowDataset

__all__ = ["StreamedShard", "remote_arrow_dataset", "shard_rows"]


def shard_rows(shards: RemoteShards) -> list[int]:
    """Rows of every shard: from the ``zcopy_index.json`` when there is one, else from each shard's footer.

    Without an index every shard is fetched (through the cache) to read its footer.
    """
    if all(s.rows is not None for s in shards.shards):
        return [int(s.rows) for s in shards.shards if s.rows is not None]
    from zcopy_data.datasets._arrow_shards import scan_shard

    paths = [f.result() for f in shards.prefetch(range(len(shards)))]
    return [sum(scan_shard(p).batch_rows) for p in paths]


def remote_arrow_dataset(
    shards: RemoteShards, sampler: ShardShuffleSampler, columns: Sequence[str] | None = None, **arrow_options: Any
) -> ArrowDataset:
    """The shards ``sampler``'s rank reads, fetched into the cache, as one ``ArrowDataset``.

    ``sampler`` must be built with ``local=True`` over :func:`shard_rows`: its indices are
    positions in this rank's shards (:attr:`~ShardShuffleSampler.rank_shards`, in that order),
    which is what the returned dataset holds. ``arrow_options`` go to ``ArrowDataset``.

    When the rank's shards fit in ``cache_bytes`` (or there is no budget) they are all fetched
    now. Otherwise the dataset streams: a shard is fetched when a batch first needs it, and that
    fetch downloads the shards after it in the epoch's order, as many as fit the budget, while
    shards read earlier become the first evicted. At most ``max_open`` shards (default: the
    sampler's window, at least 2) are mapped at once; a mapped shard stays readable when another
    fetch evicts its file.

    Raises:
        ValueError: the sampler does not fit the shards.
        CacheFullError: one shard is larger than ``cache_bytes``.
    """
    if not sampler.local:
        raise ValueError(
            "remote_arrow_dataset: the sampler yields global indices, the dataset holds this rank's shards only; "
            "build it with ShardShuffleSampler(shard_rows(shards), ..., local=True)"
        )
    if sampler.shard_rows.size != len(shards):
        raise ValueError(
            f"remote_arrow_dataset: the sampler has {sampler.shard_rows.size} shards, {shards.url!r} has "
            f"{len(shards)}; build it over shard_rows(shards)"
        )
    need = sum(shards[s].size for s in sampler.rank_shards)
    if shards.cache_bytes is not None and need > shards.cache_bytes:
        return _streamed(shards, sampler, columns, arrow_options)
    futures = dict(zip(sampler.shard_order(), shards.prefetch(sampler.shard_order()), strict=True))
    paths = [futures[s].result() for s in sampler.rank_shards]
    from zcopy_data.datasets.arrow import ArrowDataset

    return ArrowDataset(paths, columns, **arrow_options)


class StreamedShard:
    """Opens a rank's shard by URL: fetched through the cache, downloading the next ones in reading order.

    Picklable: a worker process fetches through its own :class:`RemoteShards` over the same
    cache folder (one download per shard and node, whoever asks first).
    """

    def __init__(
        self, shards: RemoteShards, sampler: ShardShuffleSampler, columns: Sequence[str] | None, options: dict[str, Any]
    ) -> None:
        self.shards = shards
        self.sampler = sampler
        self.columns = None if columns is None else list(columns)
        self.options = options
        self.index = {shards[s].url: s for s in sampler.rank_shards}

    def __call__(self, url: str, _identity: Any = None) -> ArrowDataset:
        from zcopy_data.datasets.arrow import ArrowDataset

        s = self.index[url]
        order = self.sampler.shard_order()  # this epoch's, as far as this process knows it
        ahead = order[order.index(s) :] if s in order else [s]
        path = self.shards.prefetch(ahead, pin_ahead=False)[0].result()  # s, pinned; then downloads ahead
        return ArrowDataset(path, self.columns, **self.options)


def _streamed(
    shards: RemoteShards, sampler: ShardShuffleSampler, columns: Sequence[str] | None, options: dict[str, Any]
) -> ArrowDataset:
    """The rank's shards as one dataset whose shards are fetched when a batch first needs them.

    Rows per record batch come from the index (``zcopy_data.write`` records them), else from each
    shard's footer, fetched once and released. The schema is the first shard's; every other shard
    is checked against it when it is opened.
    """
    from zcopy_data.datasets._arrow_shards import ShardInfo, scan_shard
    from zcopy_data.datasets.arrow import ArrowDataset

    ranks = list(sampler.rank_shards)
    first = scan_shard(shards.fetch(ranks[0]))
    shards.release(ranks[0])
    infos = []
    for s in ranks:
        rows = shards[s].batch_rows
        if rows is None:
            rows = scan_shard(shards.fetch(s)).batch_rows if s != ranks[0] else first.batch_rows
            shards.release(s)
        infos.append(ShardInfo(shards[s].url, None, first.schema, tuple(rows), first.stream, first.dictionaries))
    options = dict(options)
    max_open = int(options.pop("max_open", max(2, sampler.window)))
    fetch = StreamedShard(shards, sampler, columns, options)
    return ArrowDataset([i.path for i in infos], columns, max_open=max_open, _streamed=(infos, fetch), **options)
