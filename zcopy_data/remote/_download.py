"""One shard object into one local temp file: bounded retries with backoff, resumed, verified.

A broken transfer (a dropped connection, a 5xx, a cut body) is retried from the byte it stopped
at, at most ``RetryPolicy.attempts`` times with exponential backoff. Every block is read with the
listing's ETag as a precondition (s3fs sends ``If-Match``), so an object replaced mid-download is
an error, never a file of two versions. The finished file's size, MD5 (a single-part ETag) and
the index's SHA-256 are checked before the caller publishes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from zcopy_data.errors import CacheFullError, FileChangedError, RemoteShardError
from zcopy_data.remote._fs import changed_errors, permanent_errors, retryable_errors
from zcopy_data.remote._listing import RemoteShard

__all__ = ["RetryPolicy", "download"]

_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over a file size limit


@dataclass(frozen=True)
class RetryPolicy:
    """How a broken download is retried: ``attempts`` in all, the waits doubling from ``first_delay``.

    ``block_bytes``: bytes one request reads (and what a retry at worst fetches again).
    """

    attempts: int = 4
    first_delay: float = 0.5
    max_delay: float = 8.0
    block_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts={self.attempts} should be >= 1")
        if self.first_delay < 0 or self.max_delay < self.first_delay:
            raise ValueError(f"first_delay={self.first_delay}, max_delay={self.max_delay}: need 0 <= first <= max")
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes={self.block_bytes} should be >= 1")

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (jittered so that ranks do not retry in step)."""
        return float(min(self.max_delay, self.first_delay * 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0))


class _Hashes:
    def __init__(self, shard: RemoteShard) -> None:
        plain_md5 = shard.etag is not None and _MD5_ETAG.fullmatch(shard.etag) is not None
        self.md5 = hashlib.md5(usedforsecurity=False) if plain_md5 else None
        self.sha256 = hashlib.sha256() if shard.sha256 else None

    def update(self, data: bytes) -> None:
        if self.md5 is not None:
            self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)


def download(
    fs: Any, shard: RemoteShard, target: str, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Write ``shard`` into ``target`` (created or truncated), verified; raise on any mismatch."""
    changed = changed_errors(fs)
    retryable = retryable_errors(fs)
    hashes = _Hashes(shard)
    written = 0
    last: BaseException | None = None
    with open(target, "wb", buffering=0) as out:  # unbuffered: a full disk fails in write(), never in close()
        for attempt in range(1, policy.attempts + 1):
            try:
                written = _copy(fs, shard, out, written, hashes, policy.block_bytes)
                break
            except CacheFullError:
                raise  # the disk refused a write: no retry makes room
            except changed:
                raise _changed(shard, "its ETag no longer matches the listing") from None
            except OSError as err:
                if err.errno in _FULL:
                    raise _full(shard, target, written, err) from err
                if isinstance(err, FileNotFoundError):
                    raise _changed(shard, "it is gone") from None
                if isinstance(err, permanent_errors()):
                    raise RemoteShardError(f"{shard.url}: download refused ({err}); check the credentials") from err
                if "precondition" in str(err).lower():
                    raise _changed(shard, "its ETag no longer matches the listing") from None
                last = err
            except retryable as err:
                last = err
            if attempt < policy.attempts:
                sleep(policy.delay(attempt))
        else:
            raise RemoteShardError(
                f"{shard.url}: download failed {policy.attempts} times ({written} of {shard.size} bytes arrived); "
                f"last failure: {type(last).__name__}: {last}; check the endpoint and the network, or allow more "
                "attempts with RetryPolicy(attempts=...)"
            ) from last
        try:
            out.flush()
            os.fsync(out.fileno())  # a published shard's bytes are on disk before its rename
        except OSError as err:
            if err.errno in _FULL:
                raise _full(shard, target, written, err) from err
            raise
    _verify(shard, written, hashes)


def _copy(fs: Any, shard: RemoteShard, out: BinaryIO, written: int, hashes: _Hashes, block: int) -> int:
    """Continue the download at byte ``written``; the bytes written so far when it ends."""
    with fs.open(shard.path, "rb", block_size=block, cache_type="none") as f:
        details = getattr(f, "details", None) or {}
        size = details.get("size")
        tag = details.get("ETag")
        if size is not None and int(size) != shard.size:
            raise _changed(shard, f"it is {size} bytes now, the listing said {shard.size}")
        if tag and shard.etag and str(tag).strip('"') != shard.etag:
            raise _changed(shard, f"its ETag is {str(tag).strip(chr(34))}, the listing said {shard.etag}")
        f.seek(written)
        out.seek(written)  # a write cut short by an error left the file position past ``written``
        while written < shard.size:
            data = f.read(min(block, shard.size - written))
            if not data:
                raise EOFError(f"the body ended at byte {written} of {shard.size}")
            try:
                _write_all(out, data)
            except OSError as err:
                if err.errno in _FULL:
                    raise _full(shard, str(out.name), written, err) from err
                raise
            hashes.update(data)
            written += len(data)
    return written


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` (an unbuffered write may take only part of it)."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0 :]


def _verify(shard: RemoteShard, written: int, hashes: _Hashes) -> None:
    if written != shard.size:
        raise _changed(shard, f"{written} bytes arrived, the listing said {shard.size}")
    if hashes.md5 is not None and hashes.md5.hexdigest() != shard.etag:
        raise _changed(shard, f"the bytes hash to MD5 {hashes.md5.hexdigest()}, its ETag is {shard.etag}")
    if hashes.sha256 is not None and hashes.sha256.hexdigest() != shard.sha256:
        raise RemoteShardError(
            f"{shard.url}: the downloaded bytes hash to SHA-256 {hashes.sha256.hexdigest()}, the index says "
            f"{shard.sha256}; the object or its index was replaced; upload the folder again"
        )


def _changed(shard: RemoteShard, what: str) -> FileChangedError:
    return FileChangedError(
        f"{shard.url}: the shard changed since it was listed ({what}); an epoch never mixes two versions of a "
        "shard; build a new RemoteShards (or dataset) to read the new version"
    )


def _full(shard: RemoteShard, target: str, written: int, err: OSError) -> CacheFullError:
    folder = os.path.dirname(target) or "."
    why = "over a file size limit" if err.errno == errno.EFBIG else "full"
    return CacheFullError(
        f"{shard.url}: the cache disk is {why} ({os.strerror(err.errno or 0)}) after {written} of {shard.size} "
        f"bytes; the shard needs {shard.size} bytes in {folder!r}; free space there, lower cache_bytes, or point "
        "cache_dir at a larger disk"
    )
