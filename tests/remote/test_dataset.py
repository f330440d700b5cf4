"""remote_arrow_dataset: each rank's shards fetched through the cache, served by DataLoader zero-copy."""

from __future__ import annotations

import contextlib
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
def test_a_shard_larger_than_the_streaming_budget_is_told_how_much_it_needs(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    shards = RemoteShards(
        bucket_url, cache_dir=tmp_path / "cache", cache_bytes=200, storage_options={"endpoint_url": proxy.url}
    )
    sampler = ShardShuffleSampler(ROWS, 4, num_replicas=1, rank=0, local=True)
    with pytest.raises(CacheFullError, match=r"the shard is \d+ bytes, more than cache_bytes=200; set cache_bytes"):
        remote_arrow_dataset(shards, sampler)  # the rank's shards exceed the budget: it streams, one at a time
    shards.close()


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


def _written_bucket(moto_endpoint: str, tmp_path: Path, name: str, n: int = 2000) -> tuple[str, list[Path]]:
    """``n`` samples written by ``zcopy_data.write`` (an index with rows per record batch), uploaded."""
    import numpy as np

    from tests.remote.servers import upload
    from zcopy_data import write

    samples = [{"x": np.int64(i), "v": np.full(64, i, np.float32)} for i in range(n)]
    report = write(samples, tmp_path / "written", shard_size=40_000, record_batch_size=8_000, progress=False)
    assert report.shards >= 10
    files = sorted((tmp_path / "written").iterdir())
    upload(moto_endpoint, name, "w/", [f for f in files if f.suffix in (".arrow", ".json")])
    return f"s3://{name}/w/", files


def _held(cache: Path) -> int:
    """Bytes of the shard files published in ``cache`` (a worker may evict one while they are summed)."""
    total = 0
    for p in cache.iterdir():
        if not p.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
    return total


def _shard_gets(proxy: FaultProxy) -> int:
    return sum(n for path, n in proxy.gets.items() if path.endswith(".arrow"))


@pytest.mark.reliability
@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_streams_through_a_cache_smaller_than_the_dataset(
    moto_endpoint: str, proxy: FaultProxy, tmp_path: Path, workers: int
) -> None:
    url, _ = _written_bucket(moto_endpoint, tmp_path, f"zcopy-stream-{workers}")
    shards = RemoteShards(
        url, cache_dir=tmp_path / "cache", storage_options={"endpoint_url": proxy.url}, max_downloads=2
    )
    sizes = [s.size for s in shards.shards]
    budget = 3 * max(sizes)  # a quarter of the dataset at most
    assert budget < sum(sizes) / 3
    shards.cache_bytes = budget
    rows = shard_rows(shards)  # from the index: no shard downloaded
    assert _shard_gets(proxy) == 0
    sampler = ShardShuffleSampler(rows, 32, window=2, seed=5, num_replicas=1, rank=0, local=True)
    ds = remote_arrow_dataset(shards, sampler)
    assert "fetched on first use" in ds.origin
    loader = DataLoader(
        ds, batch_sampler=sampler, collate_fn=zero_copy_collate, num_workers=workers, timeout=120 if workers else 0,
        multiprocessing_context="spawn" if workers else None,
    )
    seen: list[int] = []
    for batch in loader:
        assert torch.equal(batch["v"], batch["x"][:, None].to(torch.float32).expand(-1, 64))
        seen += batch["x"].tolist()
        assert _held(tmp_path / "cache") <= budget  # the cache never holds more than its budget, workers or not
    assert sorted(seen) == list(range(2000))  # every sample exactly once
    assert seen != sorted(seen)  # shuffled
    assert _shard_gets(proxy) >= len(sizes)  # every shard fetched
    shards.close()
