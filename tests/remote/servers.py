"""Real servers for the remote tests: moto's S3 server, and an HTTP proxy in front of it that injects faults.

The proxy forwards every request to moto unchanged and counts object downloads (``GET`` of a key).
Faults are queued per key and consumed one per download: ``"503"`` answers Service Unavailable,
``"drop"`` closes the connection before answering, ``"cut"`` sends the headers and half the body
then closes, ``"hang"`` sends half the body and then waits until :meth:`FaultProxy.release`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import boto3
import pyarrow as pa

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
FAULTS = ("503", "drop", "cut", "hang")


@contextmanager
def moto_server() -> Iterator[str]:
    """A real moto S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # moto/flask internals, not ours
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and injects queued faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.gets: Counter[str] = Counter()  # object downloads per key path, faults included
        self.faults: defaultdict[str, deque[str]] = defaultdict(deque)
        self.hanging = threading.Event()  # set once a "hang" fault has sent its partial body
        self._release = threading.Event()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, key: str, *faults: str) -> None:
        """Queue ``faults`` for the next downloads of ``key`` (``"bucket/name.arrow"``)."""
        assert all(f in FAULTS for f in faults)
        with self.lock:
            self.faults[f"/{key}"].extend(faults)

    def downloads(self, key: str) -> int:
        with self.lock:
            return self.gets[f"/{key}"]

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        is_object = h.command == "GET" and path.count("/") >= 2 and not urlsplit(h.path).query.startswith("list")
        fault = None
        if is_object:
            with self.lock:
                self.gets[path] += 1
                queue = self.faults.get(path)
                fault = queue.popleft() if queue else None
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        if fault == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503":
            msg = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            h.send_response(503)
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            h.wfile.write(msg)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "host"}
            headers["Host"] = self.upstream.netloc
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                h.send_header(k, v)
        # a HEAD reply has no body: its Content-Length is the object's, as upstream said
        length = resp.getheader("Content-Length", "0") if h.command == "HEAD" else str(len(data))
        h.send_header("Content-Length", length)
        h.end_headers()
        if h.command == "HEAD":
            return
        if fault in ("cut", "hang"):
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            if fault == "hang":
                self.hanging.set()
                self._release.wait(60)
            h.close_connection = True
            with contextlib.suppress(OSError):  # the client may be gone (killed) already
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data)


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def write_shards(folder: Path, rows: list[int], *, start: int = 0) -> list[Path]:
    """Arrow IPC shards written by pyarrow: ``x`` (the global row number, int64) and ``v`` (float32[4])."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    first = start
    for k, n in enumerate(rows):
        x = pa.array(range(first, first + n), pa.int64())
        flat = pa.array([float(i) for i in range(first * 4, (first + n) * 4)], pa.float32())
        v = pa.FixedSizeListArray.from_arrays(flat, 4)
        table = pa.table({"x": x, "v": v})
        path = folder / f"shard-{k:05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=max(1, n // 2))
        paths.append(path)
        first += n
    return paths


def upload(endpoint: str, bucket: str, prefix: str, files: list[Path]) -> None:
    client = s3_client(endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for f in files:
        client.upload_file(str(f), bucket, f"{prefix}{f.name}")


def child_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
