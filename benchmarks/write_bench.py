"""Conversion throughput: ``zcopy_data.write`` against ``litdata.optimize`` on the same samples.

The samples are what users hold before converting: a list of dicts of PIL images (RGB,
``--size`` square, random pixels) and int labels. Both writers store raw pixels (no
compression), in shards of about 16 MiB (4 for the default 20,000 samples), with the same
number of worker processes (``write`` runs in the calling process for ``--workers 0``; litdata
always uses at least one). Each writer runs once to warm up, then ``--repeats`` times into a
fresh folder, alternating; the median wall time gives samples/s (higher is better) and the ratio.

Run: ``python benchmarks/write_bench.py`` (about a minute on 2 cores);
``--json OUT`` writes the record. litdata: ``pip install --no-deps litdata`` plus its
non-torch dependencies (boto3, obstore, requests, tifffile, lightning-utilities, filelock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zcopy_data.writer import write

SHARD_BYTES = 16 << 20


def make_samples(n: int, size: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return [{"image": Image.fromarray(pixels[i]), "label": int(i % 1000)} for i in range(n)]


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def run_zcopy(samples: list[dict[str, Any]], out: Path, workers: int) -> None:
    write(samples, out, shard_size=SHARD_BYTES, workers=workers, progress=False)


def run_litdata(samples: list[dict[str, Any]], out: Path, workers: int) -> None:
    from litdata import optimize

    optimize(
        fn=_identity,
        inputs=samples,
        output_dir=str(out),
        chunk_bytes=SHARD_BYTES,
        num_workers=max(1, workers),
        mode="overwrite",
        verbose=False,
        start_method="fork",
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32, help="image height = width")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, both writers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    samples = make_samples(args.samples, args.size)
    writers: dict[str, Callable[[list[dict[str, Any]], Path, int], None]] = {"zcopy_data.write": run_zcopy}
    try:
        import litdata  # noqa: F401
    except ImportError:
        print("litdata is not installed: timing zcopy_data.write alone")
    else:
        writers["litdata.optimize"] = run_litdata
    times: dict[str, list[float]] = {name: [] for name in writers}
    sizes: dict[str, int] = {}
    root = Path(tempfile.mkdtemp(prefix="write-bench-"))
    try:
        for name, fn in writers.items():  # warm up: imports, the first fork
            fn(samples[:500], root / f"warm-{name}", args.workers)
        for r in range(args.repeats):
            for name, fn in writers.items():
                out = root / f"{name}-{r}"
                t0 = time.perf_counter()
                fn(samples, out, args.workers)
                times[name].append(time.perf_counter() - t0)
                sizes[name] = _folder_bytes(out)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "samples_per_s": args.samples / med, "bytes": sizes[name], "times_s": ts}
    print(
        f"{args.samples:,} samples of {args.size}x{args.size}x3 uint8 PIL images + labels, "
        f"{args.workers} worker(s), median of {args.repeats}, {os.cpu_count()} CPUs"
    )
    print(f"{'writer':<18} {'samples/s':>12} {'median s':>9} {'MiB written':>12}")
    for name, row in rows.items():
        print(f"{name:<18} {row['samples_per_s']:>12,.0f} {row['median_s']:>9.2f} {row['bytes'] / 2**20:>12.1f}")
    record: dict[str, Any] = {"config": vars(args) | {"json": None}, "writers": rows}
    if "litdata.optimize" in rows:
        ratio = rows["zcopy_data.write"]["samples_per_s"] / rows["litdata.optimize"]["samples_per_s"]
        record["ratio_zcopy_over_litdata"] = ratio
        print(f"ratio zcopy_data.write / litdata.optimize: {ratio:.2f}x")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
