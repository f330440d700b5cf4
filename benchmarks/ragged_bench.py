"""Ragged fields: packed / padded / nested batches of a values + offsets column against the
per-sample path users write today (a ``Dataset`` returning one array per sample and a collate that
calls ``torch.nn.utils.rnn.pad_sequence``), in one process, taking turns (paired rounds).

Data: ``--docs`` documents of 1-512 ``int32`` tokens (mean ~256), shuffled batches of 64, 0 workers,
torch on one thread. The same documents are also written by pyarrow as a ``large_list<int32>``
column of an Arrow IPC file (record batches of 65,536 rows) and read by ``ArrowDataset(path,
ragged={"tokens": ...})``: the ``arrow packed`` and ``arrow padded`` rows.
Run: ``python benchmarks/ragged_bench.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zcopy_bench.turns import forever, paired_rounds
from zcopy_bench.verdict import classify, describe

from zcopy_data import ArrowDataset, LazyShuffleSampler, NumpyDataset, Ragged, ZeroCopyDataLoader

BATCH = 64


class PerSample(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, values: np.ndarray[Any, Any], offsets: np.ndarray[Any, Any]) -> None:
        self.values, self.offsets = values, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": torch.from_numpy(self.values[self.offsets[i] : self.offsets[i + 1]])}


def pad_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    seqs = [s["tokens"] for s in samples]
    return {"tokens": pad_sequence(seqs, batch_first=True), "lengths": torch.tensor([len(s) for s in seqs])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.4)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 513, args.docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 50000, int(offsets[-1]), dtype=np.int32)
    loaders: dict[str, Any] = {
        "pad_sequence": DataLoader(PerSample(values, offsets), batch_size=BATCH, shuffle=True, collate_fn=pad_collate)
    }
    for output in ("packed", "padded", "nested"):
        ds = NumpyDataset({"tokens": Ragged(values, offsets, output=output)})
        loaders[output] = ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, BATCH, seed=0))
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "docs.arrow")
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    table = pa.table({"tokens": column})
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table, max_chunksize=65_536)
    for output in ("packed", "padded"):
        arrow = ArrowDataset(path, ragged={"tokens": output})
        loaders[f"arrow {output}"] = ZeroCopyDataLoader(arrow, batch_sampler=LazyShuffleSampler(arrow, BATCH, seed=0))
    contenders = {n: forever(lambda _epoch, loader=loader: loader) for n, loader in loaders.items()}
    rounds = paired_rounds(contenders, args.rounds, args.seconds, BATCH)
    tmp.cleanup()
    names = list(contenders)
    medians = {n: float(np.median([rd[n] for rd in rounds])) for n in names}
    print(f"{args.docs:,} documents of 1-512 int32 tokens, shuffled batches of {BATCH}, torch threads 1")
    for n in names:
        print(f"  {n:<13} {medians[n] / 1e3:8.1f}k samples/s (median of {len(rounds)} rounds)")
    targets = {}
    for n in ("packed", "padded", "nested", "arrow packed", "arrow padded"):
        t = classify([rd[n] / rd["pad_sequence"] for rd in rounds], 1.0)
        t["name"] = f"{n} / pad_sequence >= 1"
        targets[n] = t
        print(f"  {describe(t)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"docs": args.docs, "rounds": rounds, "medians": medians, "targets": targets}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
