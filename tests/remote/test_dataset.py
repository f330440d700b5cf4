"""remote_arrow_dataset: each rank's shards fetched through the cache, served by DataLoader zero-copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.remote.conftest import ROWS
from tests.remote.servers import FaultProxy
from zcopy_data import zero_copy_collate
from zcopy_data.errors import CacheFullError
from zcopy_data.remote import RemoteShards, ShardShuffleSampler, remote_arrow_dataset, shard_rows


@pytest.mark.parametrize("replicas", [1, 2])
def test_ranks_read_every_sample_once_through_a_dataloader(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path, replicas: int
) -> None:
    seen: list[int] = []
    for rank in range(replicas):
        shards = RemoteShards(bucket_url, cache_dir=tmp_path / "cache", storage_options={"endpoint_url": proxy.url})
        rows = shard_rows(shards)
        assert rows == ROWS
        sampler = ShardShuffleSampler(rows, 4, window=2, num_replicas=replicas, rank=rank, local=True)
        ds = remote_arrow_dataset(shards, sampler)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=zero_copy_collate)
        for batch in loader:
            assert batch["x"].dtype == torch.int64 and batch["v"].shape[1:] == (4,)
            assert torch.equal(batch["v"][:, 0], (batch["x"] * 4).to(torch.float32))
            seen += batch["x"].tolist()
        shards.close()
    assert sorted(seen) == list(range(sum(ROWS)))
    assert sum(proxy.gets.values()) == len(ROWS)  # every shard downloaded once, reused by the other rank


@pytest.mark.reliability
def test_a_rank_whose_shards_exceed_the_budget_is_told_how_much_it_needs(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    shards = RemoteShards(
        bucket_url, cache_dir=tmp_path / "cache", cache_bytes=2000, storage_options={"endpoint_url": proxy.url}
    )
    sampler = ShardShuffleSampler(ROWS, 4, num_replicas=1, rank=0, local=True)
    with pytest.raises(CacheFullError, match=r"this rank's 4 shards need \d+ bytes in the cache, cache_bytes=2000"):
        remote_arrow_dataset(shards, sampler)


def test_a_global_sampler_is_refused_with_the_fix(bucket_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    shards = RemoteShards(bucket_url, cache_dir=tmp_path / "cache", storage_options={"endpoint_url": proxy.url})
    with pytest.raises(ValueError, match=r"local=True"):
        remote_arrow_dataset(shards, ShardShuffleSampler(ROWS, 4, num_replicas=1, rank=0))


def test_a_contiguous_batch_is_a_view_of_the_cached_shard(bucket_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    from zcopy_data import _mapping
    from zcopy_data.ledger import capture

    shards = RemoteShards(bucket_url, cache_dir=tmp_path / "cache", storage_options={"endpoint_url": proxy.url})
    sampler = ShardShuffleSampler(shard_rows(shards), 4, window=2, local=True)
    ds = remote_arrow_dataset(shards, sampler)
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__([0, 1, 2]))
    ptr = batch["v"].data_ptr()
    assert any(r.start <= ptr < r.stop for r in list(_mapping._ranges.values()))  # the cached file's pages
    assert sum(r[4] for r in records) == 0 and sum(r[3] for r in records) > 0
    shards.close()
