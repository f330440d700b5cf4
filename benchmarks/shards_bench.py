"""Sharded sources vs the one-file dataset holding the same rows vs ``ConcatDataset`` sample by sample.

One run: a Hugging Face ``save_to_disk`` folder with 3 shards, a glob of 100 polars-written IPC
files, and a sharded ``NumpyDataset``; each loaded shuffled (batch 256, 0 workers, torch at one
thread) in paired rounds against the one-file dataset and against ``torch.utils.data.ConcatDataset``
of per-shard datasets, taking turns (A B C, C B A, ...), at least 6 rounds. Ratios are judged by
``zcopy_bench.verdict.classify`` (goals: >= 0.9 of one file, >= 10x the ConcatDataset path).
``python benchmarks/shards_bench.py [--rows N] [--rounds R >= 6]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import ConcatDataset, DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zcopy_bench.verdict import MIN_ROUNDS, classify, describe

from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset, NumpyDataset

BATCH = 256
SHAPE = (32, 32, 3)


def _rate(ds: Any, limit: int) -> float:
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=g, collate_fn=zero_copy_collate)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["label"])
        if n >= limit:
            break
    return n / (time.perf_counter() - t0)


def _write(folder: str, rows: int) -> dict[str, tuple[Any, Any, Any]]:
    import datasets
    import polars as pl

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (rows, *SHAPE), dtype=np.uint8)
    label = np.arange(rows, dtype=np.int64)
    flat = img.reshape(rows, -1)
    one = os.path.join(folder, "one.arrow")
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
                      "label": pa.array(label)})
    with pa.ipc.new_file(one, table.schema) as w:
        w.write_table(table, max_chunksize=rows)
    hf = datasets.Dataset(table)
    hf.save_to_disk(os.path.join(folder, "hf"), num_shards=3)
    per = rows // 100
    pdir = os.path.join(folder, "polars")
    os.makedirs(pdir)
    for s in range(100):
        part = pl.from_arrow(table.slice(s * per, per))
        part.write_ipc(os.path.join(pdir, f"part-{s:03d}.arrow"))  # type: ignore[union-attr]
    np.save(os.path.join(folder, "img.npy"), img)
    np.save(os.path.join(folder, "label.npy"), label)
    for s in range(8):
        lo, hi = s * rows // 8, (s + 1) * rows // 8
        np.save(os.path.join(folder, f"img-{s}.npy"), img[lo:hi])
        np.save(os.path.join(folder, f"label-{s}.npy"), label[lo:hi])
    hf_files = ArrowDataset(os.path.join(folder, "hf")).paths
    pl_files = ArrowDataset(os.path.join(pdir, "*.arrow")).paths
    npy = {"image": os.path.join(folder, "img-*.npy"), "label": os.path.join(folder, "label-*.npy")}
    return {
        "hf save_to_disk, 3 shards": (
            ArrowDataset(os.path.join(folder, "hf")),
            ArrowDataset(one),
            ConcatDataset([ArrowDataset(f) for f in hf_files]),
        ),
        "glob of 100 polars IPC files": (
            ArrowDataset(os.path.join(pdir, "*.arrow")), ArrowDataset(one),
            ConcatDataset([ArrowDataset(f) for f in pl_files])),
        "NumpyDataset, 8 shards per field": (
            NumpyDataset(npy), NumpyDataset({"image": os.path.join(folder, "img.npy"),
                                             "label": os.path.join(folder, "label.npy")}),
            ConcatDataset([NumpyDataset({"image": os.path.join(folder, f"img-{s}.npy"),
                                         "label": os.path.join(folder, f"label-{s}.npy")}) for s in range(8)])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"paired rounds, at least {MIN_ROUNDS}")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args()
    if args.rounds < MIN_ROUNDS:
        p.error(f"--rounds {args.rounds}: a verdict needs at least {MIN_ROUNDS} paired rounds")
    torch.set_num_threads(1)
    report: dict[str, Any] = {"rows": args.rows, "batch": BATCH, "shape": SHAPE, "sources": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, (sharded, one, concat) in _write(folder, args.rows).items():
            vs_one, vs_concat, rates = [], [], []
            cat_rows = min(args.rows, 20_000)
            runs = {"sharded": (sharded, args.rows), "one": (one, args.rows), "concat": (concat, cat_rows)}
            for r in range(args.rounds):  # paired: each round measures all three, in turns (A B C, C B A, ...)
                got = {k: _rate(*runs[k]) for k in (list(runs) if r % 2 == 0 else list(runs)[::-1])}
                r_sh, r_one, r_cat = got["sharded"], got["one"], got["concat"]
                vs_one.append(r_sh / r_one)
                vs_concat.append(r_sh / r_cat)
                rates.append((r_sh, r_one, r_cat))
            med = np.median(np.asarray(rates), axis=0)
            entry = {
                "samples_per_s": {"sharded": med[0], "one_file": med[1], "concat_dataset": med[2]},
                "vs_one_file": {"name": f"{name} / one file", **classify(vs_one, 0.9)},
                "vs_concat_dataset": {"name": f"{name} / ConcatDataset", **classify(vs_concat, 10.0)},
            }
            report["sources"][name] = entry
            print(f"{name}: sharded {med[0]:,.0f}/s, one file {med[1]:,.0f}/s, ConcatDataset {med[2]:,.0f}/s")
            print(f"  vs one file (goal >= 0.9): {describe(entry['vs_one_file'])}")
            print(f"  vs ConcatDataset (goal >= 10x): {describe(entry['vs_concat_dataset'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
