"""Shards streamed from a local S3 server: zcopy_data cold and warm vs local disk vs litdata, one run.

Starts moto's S3 server on 127.0.0.1 in its own process, writes the same samples (a ``uint8``
image and an ``int64`` label each) with ``zcopy_data.write`` and with ``litdata.optimize`` where
litdata is installed, uploads both, then measures in paired rounds (orders alternate each round):

* ``zcopy cold``: an empty cache folder; from listing the bucket to the last batch of one epoch
  (shards fetched into the cache, then read zero-copy through ``remote_arrow_dataset``);
* ``zcopy warm``: the next epochs of the same dataset, every shard now in the cache;
* ``zcopy streamed cold`` / ``warm``: the same with ``cache_bytes`` of 3 shards, so that every
  epoch streams (fetching shards as batches need them, evicting the ones read);
* ``local``: ``ArrowDataset`` on the written folder itself, with the same sampler, after one epoch;
* ``litdata cold`` / ``litdata warm``: ``litdata.StreamingDataset`` on its own shards in the same
  server, an empty cache folder, then the next epochs (shuffled, ``DataLoader`` batches).

Every epoch is shuffled, batch 256, 0 workers, torch at one thread. Goals (issue targets): warm
>= 0.9 of local disk; cold >= 1.0 of the fastest peer's cold epoch. Mosaic ``streaming`` is a
peer where it imports (it needs torchvision and transformers, not installable next to a CPU torch
here). ``python benchmarks/remote_bench.py [--rows N] [--rounds R] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zcopy_bench.verdict import MIN_ROUNDS, classify, describe

from zcopy_data import write, zero_copy_collate
from zcopy_data.datasets import ArrowDataset
from zcopy_data.remote import RemoteShards, ShardShuffleSampler, remote_arrow_dataset, shard_rows

BATCH = 256
SHAPE = (32, 32, 3)
SHARD_BYTES = 8 << 20
WARM_EPOCHS = 3  # a warm figure is the rate over this many epochs after the cold one
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in its own process (its threads would otherwise share this process's GIL)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start within 60 s")


def _upload(endpoint: str, bucket: str, folder: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(f), bucket, f.relative_to(folder).as_posix())


def _samples(rows: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (rows, *SHAPE), dtype=np.uint8)
    return [{"image": img[i], "label": np.int64(i)} for i in range(rows)]


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def _epoch(loader: Any) -> int:
    n = 0
    for batch in loader:
        n += len(batch["label"])
    return n


def _later_epochs(loader: Any, set_epoch: Any, first: int) -> int:
    """Samples of ``WARM_EPOCHS`` epochs from epoch ``first`` on (the warm figure's)."""
    n = 0
    for e in range(first, first + WARM_EPOCHS):
        set_epoch(e)
        n += _epoch(loader)
    return n


def _timed(epoch: Any, rows: int, what: str) -> float:
    t0 = time.perf_counter()
    n = epoch()
    dt = time.perf_counter() - t0
    if n != rows:
        raise RuntimeError(f"{what} saw {n} samples of {rows}")
    return n / dt


def zcopy_epochs(url: str, endpoint: str, cache: Path, rows: int, seed: int, cache_bytes: int | None) -> list[float]:
    """Samples/s of a cold epoch (an empty cache; listing and fetching included), then of the next
    epochs of the same dataset (warm: every shard in the cache, unless ``cache_bytes`` is smaller)."""
    shutil.rmtree(cache, ignore_errors=True)
    made: dict[str, Any] = {}

    def cold() -> int:
        shards = made["shards"] = RemoteShards(
            url, cache_dir=cache, cache_bytes=cache_bytes, storage_options={"endpoint_url": endpoint}
        )
        sampler = made["sampler"] = ShardShuffleSampler(
            shard_rows(shards), BATCH, window=2, seed=seed, num_replicas=1, rank=0, local=True
        )
        made["loader"] = DataLoader(
            remote_arrow_dataset(shards, sampler), batch_sampler=sampler, collate_fn=zero_copy_collate
        )
        return _epoch(made["loader"])

    def warm() -> int:
        return _later_epochs(made["loader"], made["sampler"].set_epoch, 1)

    rates = [_timed(cold, rows, "zcopy cold epoch"), _timed(warm, rows * WARM_EPOCHS, "zcopy warm epochs")]
    made["shards"].close()
    return rates


def local_epochs(folder: Path, rows: int, seed: int) -> list[float]:
    """Samples/s of the epochs after the first, read from the written folder on local disk (as warm ones)."""
    ds = ArrowDataset(folder)
    sampler = ShardShuffleSampler([len(ArrowDataset(p)) for p in ds.paths], BATCH, window=2, seed=seed,
                                  num_replicas=1, rank=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=zero_copy_collate)
    _epoch(loader)

    return [_timed(lambda: _later_epochs(loader, sampler.set_epoch, 1), rows * WARM_EPOCHS, "local epochs")]


def litdata_epochs(url: str, endpoint: str, cache: Path, rows: int, seed: int) -> list[float]:
    """litdata's cold epoch (an empty cache; index and chunks fetched) and the next epochs of the same dataset."""
    from litdata import StreamingDataset

    _let_litdata_use_http()
    shutil.rmtree(cache, ignore_errors=True)
    made: dict[str, Any] = {}

    def cold() -> int:
        ds = made["ds"] = StreamingDataset(
            url, cache_dir=str(cache), shuffle=True, seed=seed, storage_options={"endpoint_url": endpoint}
        )
        made["loader"] = DataLoader(ds, batch_size=BATCH)
        return _epoch(made["loader"])

    def warm() -> int:
        return _later_epochs(made["loader"], made["ds"].set_epoch, 2)

    return [_timed(cold, rows, "litdata cold epoch"), _timed(warm, rows * WARM_EPOCHS, "litdata warm epochs")]


def _let_litdata_use_http() -> None:
    """litdata downloads chunks with obstore, which refuses a plain-HTTP endpoint unless its client
    options allow it, and litdata builds them from a module constant it exposes no setting for.
    Adding ``allow_http`` there keeps litdata on its own fast path (not boto3) for the loopback server."""
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = "true"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # an installed peer that fails to import is not a peer here
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"paired rounds, at least {MIN_ROUNDS}")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args()
    if args.rounds < MIN_ROUNDS:
        p.error(f"--rounds {args.rounds}: a verdict needs at least {MIN_ROUNDS} paired rounds")
    torch.set_num_threads(1)
    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    peers = {"litdata": _has("litdata"), "mosaic streaming": _has("streaming")}
    server, endpoint = _start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            samples = _samples(args.rows)
            write(samples, root / "zc", shard_size=SHARD_BYTES, progress=False)
            _upload(endpoint, "bench-zc", root / "zc")
            if peers["litdata"]:
                from litdata import optimize

                optimize(fn=_identity, inputs=samples, output_dir=str(root / "lit"), chunk_bytes=SHARD_BYTES,
                         num_workers=1, mode="overwrite", verbose=False, start_method="fork")
                _upload(endpoint, "bench-lit", root / "lit")
            del samples
            data_bytes = sum(f.stat().st_size for f in (root / "zc").iterdir())
            shard_bytes = max(f.stat().st_size for f in (root / "zc").iterdir())
            stream_budget = 3 * shard_bytes
            groups: dict[tuple[str, ...], Any] = {
                ("zcopy cold", "zcopy warm"): lambda seed: zcopy_epochs(
                    "s3://bench-zc/", endpoint, root / "zcache", args.rows, seed, None),
                ("zcopy streamed cold", "zcopy streamed warm"): lambda seed: zcopy_epochs(
                    "s3://bench-zc/", endpoint, root / "zcache", args.rows, seed, stream_budget),
                ("local",): lambda seed: local_epochs(root / "zc", args.rows, seed),
            }
            if peers["litdata"]:
                groups[("litdata cold", "litdata warm")] = lambda seed: litdata_epochs(
                    "s3://bench-lit/", endpoint, root / "lcache", args.rows, seed)
            rates: dict[str, list[float]] = {k: [] for g in groups for k in g}
            for r in range(args.rounds):  # paired rounds; the groups take turns (A B C, C B A, ...)
                for names in list(groups) if r % 2 == 0 else list(groups)[::-1]:
                    for k, rate in zip(names, groups[names](r), strict=True):
                        rates[k].append(rate)
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
    finally:
        server.kill()
        server.wait()
    warm_vs_local = [w / loc for w, loc in zip(rates["zcopy warm"], rates["local"], strict=True)]
    report: dict[str, Any] = {
        "rows": args.rows, "batch": BATCH, "shape": SHAPE, "bytes": data_bytes, "shard_bytes": SHARD_BYTES,
        "streamed_cache_bytes": stream_budget,
        "peers_importable": peers,
        "samples_per_s": {k: float(np.median(v)) for k, v in rates.items()},
        "targets": {"warm_vs_local": {"name": "zcopy warm / local ArrowDataset", **classify(warm_vs_local, 0.9)}},
    }
    cold_peers = [k for k in rates if k.endswith(" cold") and not k.startswith("zcopy")]
    if cold_peers:
        fastest = max(cold_peers, key=lambda k: float(np.median(rates[k])))
        ratios = [z / f for z, f in zip(rates["zcopy cold"], rates[fastest], strict=True)]
        report["targets"]["cold_vs_fastest_peer"] = {"name": f"zcopy cold / {fastest}", **classify(ratios, 1.0)}
        warm = [z / f for z, f in zip(rates["zcopy warm"], rates[fastest.replace("cold", "warm")], strict=True)]
        report["targets"]["warm_vs_peer_warm"] = {"name": f"zcopy warm / {fastest.replace('cold', 'warm')}",
                                                  **classify(warm, 1.0)}
    print(f"{args.rows} samples, {data_bytes / 2**20:.0f} MiB in {SHARD_BYTES >> 20} MiB shards; "
          + ", ".join(f"{k} {v:,.0f}/s" for k, v in report["samples_per_s"].items()))
    for t in report["targets"].values():
        print(f"  {t['name']}: {describe(t)}")
    if not peers["litdata"] and not peers["mosaic streaming"]:
        print("  no peer importable (pip install --no-deps litdata): the cold goal is not measured")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
