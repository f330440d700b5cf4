"""Soak run: hundreds of epochs through real workers, watching memory, shared memory and integrity.

Not part of CI (it runs for minutes). Every epoch checks that each index arrives exactly once and
that every batch equals the source byte for byte; a ring of batches is held across epochs and
re-hashed to prove no buffer is reused under the user. Every ``--report-every`` epochs it prints
the resident memory of the main process and of the workers, the ``/dev/shm`` usage (machine-wide, so other
processes show up in it) and the number of shared-memory segments this run owns, so growth shows
up as a trend. Throughput includes the checks and is not a benchmark.

Usage (from the repository root)::

    PYTHONPATH=. python scripts/soak.py --epochs 300 --workers 2          # about 5-10 minutes here
    PYTHONPATH=. python scripts/soak.py --epochs 20 --report-every 5      # a quick check
    PYTHONPATH=. python scripts/soak.py --epochs 300 --block-every 3      # with block-shuffled epochs

Exit status 1 when any integrity check failed or memory grew past ``--max-growth-mib``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing
from torch.utils.data import DataLoader

from zcopy_data import NumpyDataset, zero_copy_collate

MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    """Resident set size of one process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def shm_used_mib() -> float:
    return shutil.disk_usage("/dev/shm").used / MIB if os.path.isdir("/dev/shm") else 0.0


def own_segments(pids: list[int]) -> int:
    if not os.path.isdir("/dev/shm"):
        return 0
    prefixes = tuple(f"torch_{p}_" for p in pids)
    return sum(name.startswith(prefixes) for name in os.listdir("/dev/shm"))


def digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(batch):
        h.update(batch[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def make_data(folder: Path, n: int, shape: tuple[int, ...], seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {"image": folder / "image.npy", "label": folder / "label.npy", "index": folder / "index.npy"}
    np.save(paths["image"], rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
    np.save(paths["label"], rng.integers(0, 1000, size=n, dtype=np.int64))
    np.save(paths["index"], np.arange(n, dtype=np.int64))
    return paths


def worker_pids(it: Any) -> list[int]:
    return [w.pid for w in getattr(it, "_workers", [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--report-every", type=int, default=25)
    ap.add_argument("--hold", type=int, default=32, help="batches held across epochs and re-checked")
    ap.add_argument("--sequential-every", type=int, default=4, help="every k-th epoch runs unshuffled (views)")
    ap.add_argument(
        "--block-every", type=int, default=0, help="every k-th epoch runs BlockShuffleSampler (mostly views); 0: never"
    )
    ap.add_argument("--context", choices=["fork", "spawn", "forkserver"], default="fork")
    ap.add_argument("--strategy", choices=["file_descriptor", "file_system"], default="file_descriptor")
    ap.add_argument("--max-growth-mib", type=float, default=64.0, help="allowed RSS growth after the first report")
    ap.add_argument("--json", type=Path, help="write the per-report rows here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.multiprocessing.set_sharing_strategy(args.strategy)
    folder = Path(tempfile.mkdtemp(prefix="zcopy-soak-"))
    try:
        paths = make_data(folder, args.samples, tuple(args.shape), args.seed)
        ref = {k: np.load(p) for k, p in paths.items()}  # private copies: the truth to compare against
        ds = NumpyDataset({k: str(p) for k, p in paths.items()})
        common: dict[str, Any] = {"batch_size": args.batch_size, "collate_fn": zero_copy_collate}
        if args.workers:
            common.update(
                num_workers=args.workers,
                persistent_workers=True,
                multiprocessing_context=args.context,
                timeout=120,
            )
        g = torch.Generator().manual_seed(args.seed)
        shuffled = DataLoader(ds, shuffle=True, generator=g, **common)
        sequential = DataLoader(ds, shuffle=False, **common)
        block, sampler = None, None
        if args.block_every:
            from zcopy_data.samplers import BlockShuffleSampler

            sampler = BlockShuffleSampler(ds, args.batch_size, seed=args.seed)
            block = DataLoader(ds, batch_sampler=sampler, **{k: v for k, v in common.items() if k != "batch_size"})
        held: deque[tuple[dict[str, torch.Tensor], str]] = deque(maxlen=args.hold)
        failures: list[str] = []
        rows: list[dict[str, Any]] = []
        pids: set[int] = set()
        started = time.monotonic()
        samples = 0
        print(
            f"soak: {args.epochs} epochs, {args.samples} samples of {tuple(args.shape)} uint8, "
            f"batch {args.batch_size}, {args.workers} workers ({args.context}, {args.strategy}), data in {folder}",
            flush=True,
        )
        print(f"{'epoch':>6} {'main MiB':>9} {'workers MiB':>12} {'/dev/shm MiB':>13} {'segments':>9} "
              f"{'checked/s':>10} {'failures':>9}", flush=True)  # fmt: skip
        for epoch in range(1, args.epochs + 1):
            loader = sequential if args.sequential_every and epoch % args.sequential_every == 0 else shuffled
            if block is not None and sampler is not None and epoch % args.block_every == 0:
                sampler.set_epoch(epoch)
                loader = block
            it = iter(loader)
            pids.update(worker_pids(it))
            seen = np.zeros(args.samples, np.int64)
            for batch in it:
                idx = batch["index"].numpy()
                seen[idx] += 1
                for name in ("image", "label"):
                    if not np.array_equal(batch[name].numpy(), ref[name][idx]):
                        failures.append(f"epoch {epoch}: {name} of indices {idx[:4].tolist()}... differs from the file")
                held.append((batch, digest(batch)))
                samples += len(idx)
            if not (seen == 1).all():
                bad = np.flatnonzero(seen != 1)
                failures.append(f"epoch {epoch}: {bad.size} indices not seen exactly once, e.g. {bad[:4].tolist()}")
            for batch, want in held:
                if digest(batch) != want:
                    failures.append(f"epoch {epoch}: a held batch changed after later batches arrived")
                    break
            if epoch % args.report_every == 0 or epoch == args.epochs:
                live = worker_pids(it)
                row = {
                    "epoch": epoch,
                    "main_rss_mib": round(rss_mib(os.getpid()), 1),
                    "workers_rss_mib": round(sum(rss_mib(p) for p in live), 1),
                    "shm_used_mib": round(shm_used_mib(), 1),
                    "segments": own_segments(sorted(pids | {os.getpid()})),
                    "samples_per_s": round(samples / (time.monotonic() - started)),
                    "failures": len(failures),
                }
                rows.append(row)
                print(f"{row['epoch']:>6} {row['main_rss_mib']:>9} {row['workers_rss_mib']:>12} "
                      f"{row['shm_used_mib']:>13} {row['segments']:>9} {row['samples_per_s']:>10} "
                      f"{row['failures']:>9}", flush=True)  # fmt: skip
            del it
        held.clear()
        del shuffled, sequential, block
        for message in failures[:20]:
            print("FAIL", message)
        first, last = rows[0], rows[-1]
        growth = {
            "main_rss_mib": round(last["main_rss_mib"] - first["main_rss_mib"], 1),
            "workers_rss_mib": round(last["workers_rss_mib"] - first["workers_rss_mib"], 1),
            "shm_used_mib": round(last["shm_used_mib"] - first["shm_used_mib"], 1),
        }
        print(
            f"summary: {args.epochs} epochs, {samples} samples in {time.monotonic() - started:.0f} s, "
            f"integrity failures {len(failures)}, growth since epoch {first['epoch']}: {growth}",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows,
                                             "growth": growth, "failures": failures}, indent=2))  # fmt: skip
        grew = max(growth["main_rss_mib"], growth["workers_rss_mib"]) > args.max_growth_mib
        return 1 if failures or grew else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
