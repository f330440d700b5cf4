"""Real processes on one cache folder: a download killed by SIGKILL never leaves a shard that is later
mapped, and two processes fetching the same shards download each one once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.remote.servers import FaultProxy, child_env

CHILD = """
import json, sys
from zcopy_data.remote import RemoteShards, RetryPolicy
url, cache, shards = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
remote = RemoteShards(url, cache_dir=cache, retry=RetryPolicy(first_delay=0.01, max_delay=0.02))
print(json.dumps([remote.fetch(i) for i in shards]), flush=True)
"""


def child(url: str, cache: Path, proxy: FaultProxy, shards: list[int]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(cache), json.dumps(shards)],
        env=child_env(proxy.url),  # AWS_ENDPOINT_URL: what s3fs reads without storage_options
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.reliability
def test_a_download_killed_mid_body_leaves_no_shard_and_the_next_process_gets_a_verified_one(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    key = bucket_url.removeprefix("s3://") + shard_files[1].name
    proxy.fail(key, "hang")  # half the body, then nothing until released
    first = child(bucket_url, cache, proxy, [1])
    try:
        assert proxy.hanging.wait(60), first.communicate(timeout=5)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)  # reaps it and closes its pipes
    finally:
        proxy.release()
    assert first.returncode == -signal.SIGKILL
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing under a shard's name
    second = child(bucket_url, cache, proxy, [1])
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    (path,) = json.loads(out)
    assert Path(path).read_bytes() == shard_files[1].read_bytes()
    assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]  # the killed one's partial is gone


@pytest.mark.reliability
def test_two_processes_share_one_cache_and_download_each_shard_once(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    procs = [child(bucket_url, cache, proxy, [0, 1, 2, 3]), child(bucket_url, cache, proxy, [3, 2, 1, 0])]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(results[0]) == sorted(results[1])
    for f in shard_files:
        assert proxy.downloads(bucket_url.removeprefix("s3://") + f.name) == 1
    for path, f in zip(results[0], shard_files, strict=True):
        assert Path(path).read_bytes() == f.read_bytes()


@pytest.mark.reliability
def test_a_download_under_way_in_another_process_holds_its_room_until_that_process_dies(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    """The budget covers every process on the folder: a shard another process is still downloading
    counts, and a reservation left by a killed process is not counted for ever."""
    from zcopy_data.errors import CacheFullError
    from zcopy_data.remote import RemoteShards

    cache = tmp_path / "cache"
    sizes = [f.stat().st_size for f in shard_files[:2]]
    budget = sum(sizes) - 1  # either shard fits, not both
    key = bucket_url.removeprefix("s3://") + shard_files[1].name
    proxy.fail(key, "hang")
    other = child(bucket_url, cache, proxy, [1])
    try:
        assert proxy.hanging.wait(60), other.communicate(timeout=5)
        options = {"endpoint_url": proxy.url}
        ours = RemoteShards(bucket_url, cache_dir=cache, cache_bytes=budget, storage_options=options)
        with pytest.raises(CacheFullError, match=rf"and {sizes[1]} by downloads under way; raise cache_bytes"):
            ours.fetch(0)
        assert not ours.is_cached(0)
        other.send_signal(signal.SIGKILL)
        other.communicate(timeout=60)
    finally:
        proxy.release()
    assert Path(ours.fetch(0)).read_bytes() == shard_files[0].read_bytes()  # the dead one's room is free again
    assert not list(cache.glob(".*.reserve"))
    ours.close()


FULL_CHILD = """
import json, resource, signal, sys
from zcopy_data.errors import CacheFullError
from zcopy_data.remote import RemoteShards
url, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
remote = RemoteShards(url, cache_dir=cache)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as past a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    remote.fetch(0)
except CacheFullError as err:
    print(json.dumps({"error": str(err), "size": remote[0].size}), flush=True)
    sys.exit(0)
print(json.dumps({"error": None}), flush=True)
"""


@pytest.mark.reliability
def test_a_cache_disk_that_refuses_the_write_is_an_error_naming_the_bytes_needed(
    bucket_url: str, proxy: FaultProxy, shard_files: list[Path], tmp_path: Path
) -> None:
    """No unprivileged test can fill a real disk; a file size limit fails the same write() the same
    way (EFBIG instead of ENOSPC), half-way through a real download into the real cache folder."""
    cache = tmp_path / "cache"
    limit = shard_files[0].stat().st_size // 2
    done = subprocess.run(
        [sys.executable, "-c", FULL_CHILD, bucket_url, str(cache), str(limit)],
        env=child_env(proxy.url),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["error"] is not None, "a write the disk refused was taken for a whole shard"
    assert f"the shard needs {report['size']} bytes in {str(cache)!r}" in report["error"]
    assert "over a file size limit" in report["error"] and "cache_dir at a larger disk" in report["error"]
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # no shard under its final name
