"""Fixtures: one real moto S3 server per session, a fault-injecting proxy per test, shards uploaded by boto3."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.remote.servers import FaultProxy

ROWS = [10, 20, 15, 5]
_buckets = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from tests.remote.servers import moto_server  # skips the module when moto or s3fs is missing

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    from tests.remote.servers import FaultProxy

    p = FaultProxy(moto_endpoint)
    yield p
    p.close()


@pytest.fixture
def shard_files(tmp_path: Path) -> list[Path]:
    from tests.remote.servers import write_shards

    return write_shards(tmp_path / "local", ROWS)


@pytest.fixture
def bucket_url(moto_endpoint: str, shard_files: list[Path]) -> str:
    """``s3://<fresh bucket>/data/`` holding the four shards (rows 10, 20, 15, 5)."""
    from tests.remote.servers import upload

    name = f"zcopy-test-{next(_buckets)}"
    upload(moto_endpoint, name, "data/", shard_files)
    return f"s3://{name}/data/"
