"""RemoteShards against a real S3 server: listing, verified fetches, changed objects, full caches, retries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.remote.conftest import ROWS
from tests.remote.servers import FaultProxy, s3_client, upload, write_shards
from zcopy_data.errors import CacheFullError, FileChangedError, RemoteShardError
from zcopy_data.remote import RemoteShards, RetryPolicy

FAST = RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.02)


def shards_at(url: str, proxy: FaultProxy, cache: Path, **kw: object) -> RemoteShards:
    return RemoteShards(url, cache_dir=cache, storage_options={"endpoint_url": proxy.url}, retry=FAST, **kw)  # type: ignore[arg-type]


def key_of(url: str, name: str) -> str:
    return url.removeprefix("s3://") + name


def test_listing_gives_sizes_and_etags_and_reads_no_data(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache")
    assert [s.name for s in shards.shards] == [f.name for f in shard_files]
    assert [s.size for s in shards.shards] == [f.stat().st_size for f in shard_files]
    assert [s.etag for s in shards.shards] == [hashlib.md5(f.read_bytes()).hexdigest() for f in shard_files]
    assert sum(proxy.gets.values()) == 0  # no object body was requested
    assert not any((tmp_path / "cache").iterdir())


def test_fetch_downloads_once_verified_and_then_hits(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache")
    path = shards.fetch(1)
    assert Path(path).read_bytes() == shard_files[1].read_bytes()
    again = shards_at(bucket_url, proxy, tmp_path / "cache")  # a new process's view of the same folder
    assert again.fetch(1) == path
    assert proxy.downloads(key_of(bucket_url, shard_files[1].name)) == 1
    assert again.downloaded == 0 and shards.downloaded == 1


def test_index_gives_order_digest_and_rows(moto_endpoint: str, proxy: FaultProxy, tmp_path: Path) -> None:
    files = write_shards(tmp_path / "w", [3, 4])
    index = {
        "format": "zcopy-shards",
        "version": 1,
        "shards": [
            {"file": f.name, "rows": r, "bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
            for f, r in zip(reversed(files), [4, 3], strict=True)
        ],
    }
    (tmp_path / "w" / "zcopy_index.json").write_text(json.dumps(index))
    upload(moto_endpoint, "zcopy-index", "d/", [*files, tmp_path / "w" / "zcopy_index.json"])
    shards = shards_at("s3://zcopy-index/d/", proxy, tmp_path / "cache")
    assert [s.name for s in shards.shards] == [files[1].name, files[0].name]
    assert [s.rows for s in shards.shards] == [4, 3]
    assert Path(shards.fetch(0)).read_bytes() == files[1].read_bytes()


@pytest.mark.reliability
def test_index_digest_mismatch_is_an_error(moto_endpoint: str, proxy: FaultProxy, tmp_path: Path) -> None:
    files = write_shards(tmp_path / "w", [3])
    entry = {"file": files[0].name, "rows": 3, "bytes": files[0].stat().st_size, "sha256": "0" * 64}
    index = {"format": "zcopy-shards", "version": 1, "shards": [entry]}
    (tmp_path / "w" / "zcopy_index.json").write_text(json.dumps(index))
    upload(moto_endpoint, "zcopy-badsha", "d/", [*files, tmp_path / "w" / "zcopy_index.json"])
    shards = shards_at("s3://zcopy-badsha/d/", proxy, tmp_path / "cache")
    with pytest.raises(RemoteShardError, match=r"s3://zcopy-badsha/d/shard-00000.arrow: .*SHA-256"):
        shards.fetch(0)
    assert not shards.is_cached(0)


@pytest.mark.reliability
def test_a_shard_replaced_after_listing_is_an_error(
    bucket_url: str, proxy: FaultProxy, moto_endpoint: str, tmp_path: Path
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache")
    bucket, prefix = bucket_url.removeprefix("s3://").split("/", 1)
    other = write_shards(tmp_path / "other", [ROWS[0]], start=1000)[0]
    s3_client(moto_endpoint).upload_file(str(other), bucket, f"{prefix}shard-00000.arrow")  # same size, other bytes
    changed = rf"{bucket_url}shard-00000.arrow: the shard changed since it was listed"
    with pytest.raises(FileChangedError, match=changed):
        shards.fetch(0)
    assert not shards.is_cached(0)


@pytest.mark.reliability
def test_cache_bytes_smaller_than_a_shard_says_what_is_needed(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache", cache_bytes=100)
    with pytest.raises(CacheFullError, match=rf"the shard is {shards[0].size} bytes.*at least {shards[0].size}"):
        shards.fetch(0)


@pytest.mark.reliability
@pytest.mark.parametrize("faults", [("503",), ("drop",), ("cut",), ("503", "cut", "503")])
def test_broken_downloads_are_retried(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path, faults: tuple[str, ...]
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache")
    key = key_of(bucket_url, shard_files[2].name)
    proxy.fail(key, *faults)
    assert Path(shards.fetch(2)).read_bytes() == shard_files[2].read_bytes()
    assert proxy.downloads(key) >= len(faults) + 1


@pytest.mark.reliability
def test_retries_are_bounded_and_name_the_shard_and_the_last_failure(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    shards = shards_at(bucket_url, proxy, tmp_path / "cache")
    key = key_of(bucket_url, shard_files[0].name)
    proxy.fail(key, *["503"] * 10)
    failed = rf"{bucket_url}shard-00000.arrow: download failed 4 times.*last failure"
    with pytest.raises(RemoteShardError, match=failed):
        shards.fetch(0)
    assert proxy.downloads(key) == 4
    assert not shards.is_cached(0)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".partial")]


def test_prefetch_keeps_a_window_and_evicts_least_recently_used(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    probe = shards_at(bucket_url, proxy, tmp_path / "cache")
    sizes = [s.size for s in probe.shards]
    budget = max(sizes[0] + sizes[1], sizes[2] + sizes[3])
    assert budget < sizes[0] + sizes[1] + sizes[2]
    shards = shards_at(bucket_url, proxy, tmp_path / "cache", cache_bytes=budget, max_downloads=2)
    first = shards.prefetch([0, 1, 2, 3])
    assert len(first) == 2  # the window that fits the budget
    assert [Path(f.result()).exists() for f in first] == [True, True]
    later = shards.prefetch([2, 3])  # 0 and 1 are out of the window now: evictable
    for f in later:
        f.result()
    cached = [shards.is_cached(i) for i in range(4)]
    assert cached[2] and cached[3]
    held = sum(sizes[i] for i in range(4) if cached[i])
    assert held <= budget
    shards.close()


@pytest.mark.reliability
def test_pinned_shards_are_never_evicted(bucket_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    probe = shards_at(bucket_url, proxy, tmp_path / "cache")
    budget = probe[0].size + probe[3].size
    shards = shards_at(bucket_url, proxy, tmp_path / "cache", cache_bytes=budget)
    shards.fetch(0)
    with pytest.raises(CacheFullError, match=r"held by pinned shards; raise cache_bytes to at least"):
        shards.fetch(1)
    assert shards.is_cached(0)
    shards.release(0)
    shards.fetch(1)
    assert not shards.is_cached(0)


def test_endpoint_from_the_environment_and_default_cache_dir(
    bucket_url: str, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shards = RemoteShards(bucket_url)
    assert shards.cache_dir.parent == tmp_path / "xdg" / "zcopy_data" / "remote"
    assert Path(shards.fetch(3)).parent == shards.cache_dir
    assert sum(proxy.gets.values()) == 1
