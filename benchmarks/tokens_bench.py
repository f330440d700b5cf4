"""Token windows: nanoGPT's ``get_batch``, a hand-vectorised NumPy version and ``TokenDataset``,
on one token file, in one process, taking turns (paired rounds: see ``zcopy_bench/verdict.py``).

The file holds ``--tokens`` random ``uint16`` ids written as nanoGPT's ``prepare.py`` writes them
(``ids.tofile("train.bin")``). Every contender draws shuffled windows of ``block_size + 1 = 257``
tokens (every offset, nanoGPT's sampling), batch 64:

* ``nanogpt``: nanoGPT's ``get_batch`` as written in its ``train.py`` (a new ``np.memmap`` per
  call, one ``torch.from_numpy(...astype(np.int64))`` per window, ``torch.stack``);
* ``numpy``: ``w = data[ix[:, None] + ar].astype(np.int64)``, ``x, y = w[:, :-1], w[:, 1:]``
  (one vectorised gather; ``x`` and ``y`` are not contiguous);
* ``zcopy``: ``TokenDataset(path, 256, stride=1, dtype=np.uint16)`` through
  ``ZeroCopyDataLoader(batch_sampler=LazyShuffleSampler(...))``: uint16 as stored, both fields
  contiguous;
* ``zcopy+cast``: the same behind ``DevicePrefetcher(device="cpu", cast=int64)``: widened by the
  declared device cast, the form a CPU run trains on;
* ``litdata`` (where it installs: ``pip install --no-deps litdata``): the same tokens written by
  ``litdata.optimize`` with ``TokensLoader``, read by ``StreamingDataset(item_loader=TokensLoader(257),
  shuffle=True)`` through ``StreamingDataLoader``. It serves disjoint blocks of 257 tokens, so it is
  compared with ``zcopy blocks``: ``TokenDataset(path, 256, stride=257)``, the same blocks, shuffled.

Torch runs on one thread (the contenders are single-threaded Python loops). Goals: ``zcopy`` >= 3x
``numpy`` and >= 30x ``nanogpt``; ``zcopy+cast`` >= 1.5x ``numpy``.

Run: ``python benchmarks/tokens_bench.py [--json out.json]`` (about a minute on 2 cores).
litdata has no goal here; its ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zcopy_bench.turns import forever, paired_rounds
from zcopy_bench.verdict import classify, describe

from zcopy_data import DevicePrefetcher, ZeroCopyDataLoader
from zcopy_data.datasets import TokenDataset
from zcopy_data.samplers import LazyShuffleSampler

BLOCK, BATCH = 256, 64


def nanogpt(path: str, seed: int) -> Callable[[], Any]:
    torch.manual_seed(seed)

    def get_batch() -> Any:  # nanoGPT train.py, device_type == "cpu"
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy((data[i : i + BLOCK]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + BLOCK]).astype(np.int64)) for i in ix])
        return x, y

    return get_batch


def vectorised(path: str, seed: int) -> Callable[[], Any]:
    data = np.memmap(path, dtype=np.uint16, mode="r")
    rng = np.random.default_rng(seed)
    ar = np.arange(BLOCK + 1)

    def get_batch() -> Any:
        ix = rng.integers(0, len(data) - BLOCK, BATCH)
        w = torch.from_numpy(data[ix[:, None] + ar].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    return get_batch


def zcopy(path: str, seed: int, cast: bool, stride: int = 1) -> Callable[[], Any]:
    ds = TokenDataset(path, BLOCK, stride=stride, dtype=np.uint16)
    sampler = LazyShuffleSampler(ds, BATCH, seed=seed)
    loader = ZeroCopyDataLoader(ds, batch_sampler=sampler)

    def epoch(e: int) -> Any:
        sampler.set_epoch(e)
        if cast:
            return DevicePrefetcher(loader, "cpu", cast={"input": torch.int64, "target": torch.int64})
        return loader

    return forever(epoch)


def litdata_blocks(path: str, folder: str, seed: int) -> Callable[[], Any] | None:
    """litdata's token path over the same tokens, or ``None`` where litdata is not installed."""
    try:
        from litdata import StreamingDataLoader, StreamingDataset, optimize
        from litdata.streaming.item_loader import TokensLoader
    except ImportError:
        return None
    out = os.path.join(folder, "litdata")
    optimize(fn=_token_pieces, inputs=[(path, i) for i in range(_pieces(path))], output_dir=out,
             chunk_size=(BLOCK + 1) * 8192, item_loader=TokensLoader(), num_workers=1, mode="overwrite",
             verbose=False, start_method="fork")
    ds = StreamingDataset(out, item_loader=TokensLoader(block_size=BLOCK + 1), shuffle=True, seed=seed,
                          drop_last=True)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)

    def epoch(e: int) -> Any:
        ds.set_epoch(e)
        return loader

    return forever(epoch)


_PIECE = 1 << 20  # tokens per optimize input: a document-sized unit, as a tokenizer would yield


def _pieces(path: str) -> int:
    return -(-os.path.getsize(path) // 2 // _PIECE)


def _token_pieces(item: tuple[str, int]) -> Any:
    path, i = item
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    yield np.array(tokens[i * _PIECE : (i + 1) * _PIECE])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.4, help="per contender per round")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.bin")
        np.random.default_rng(0).integers(0, 50257, args.tokens, dtype=np.uint16).tofile(path)
        contenders: dict[str, Callable[[], Any]] = {
            "nanogpt": nanogpt(path, 0),
            "numpy": vectorised(path, 0),
            "zcopy": zcopy(path, 0, cast=False),
            "zcopy+cast": zcopy(path, 0, cast=True),
        }
        lit = litdata_blocks(path, tmp, 0)
        if lit is not None:
            contenders["litdata"] = lit
            contenders["zcopy blocks"] = zcopy(path, 0, cast=False, stride=BLOCK + 1)
        first = contenders["zcopy"]()
        x, y = first["input"], first["target"]
        assert x.dtype == torch.uint16 and x.is_contiguous() and y.is_contiguous()
        rounds = paired_rounds(contenders, args.rounds, args.seconds, BATCH)
        names = list(contenders)
    medians = {n: float(np.median([rd[n] for rd in rounds])) for n in names}
    targets = {
        "zcopy / numpy >= 3": classify([rd["zcopy"] / rd["numpy"] for rd in rounds], 3.0),
        "zcopy / nanogpt >= 30": classify([rd["zcopy"] / rd["nanogpt"] for rd in rounds], 30.0),
        "zcopy+cast / numpy >= 1.5": classify([rd["zcopy+cast"] / rd["numpy"] for rd in rounds], 1.5),
    }
    if "litdata" in names:  # no goal: the ratio is reported (a goal of 1.0 only to classify it)
        blocks = [rd["zcopy blocks"] / rd["litdata"] for rd in rounds]
        targets["zcopy blocks / litdata (reported)"] = classify(blocks, 1.0)
    else:
        print("litdata is not installed (pip install --no-deps litdata): its row is left out")
    print(f"{args.tokens:,} uint16 tokens, windows of {BLOCK + 1}, batch {BATCH}, torch threads 1")
    for n in names:
        print(f"  {n:<12} {medians[n] / 1e3:9.1f}k windows/s (median of {len(rounds)} rounds)")
    for name, t in targets.items():
        t["name"] = name
        print(f"  {describe(t)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens": args.tokens, "rounds": rounds, "medians": medians, "targets": targets}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
