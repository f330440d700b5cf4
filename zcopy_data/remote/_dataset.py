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

__all__ = ["remote_arrow_dataset", "shard_rows"]


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

    Raises:
        ValueError: the sampler does not fit the shards.
        CacheFullError: the rank's shards do not all fit in ``cache_bytes``.
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
        from zcopy_data.errors import CacheFullError

        raise CacheFullError(
            f"{shards.url}: this rank's {len(sampler.rank_shards)} shards need {need} bytes in the cache, "
            f"cache_bytes={shards.cache_bytes}; the dataset keeps every shard of its rank mapped, so set "
            f"cache_bytes to at least {need} (or use more ranks)"
        )
    futures = dict(zip(sampler.shard_order(), shards.prefetch(sampler.shard_order()), strict=True))
    paths = [futures[s].result() for s in sampler.rank_shards]
    from zcopy_data.datasets.arrow import ArrowDataset

    return ArrowDataset(paths, columns, **arrow_options)
