"""Decode every epoch, or decode once: an image folder read through ``ImageFolderDataset`` against
the same folder written once by ``zcopy_data.write`` into ``uint8`` shards and read by
``ArrowDataset``, in one process, taking turns (paired rounds, ``zcopy_bench/verdict.py``).

The folder holds ``--images`` photo-like JPEGs of 320x240 in 4 classes; both sides deliver
``(3, 64, 64)`` uint8 images and labels, shuffled batches of 64, 0 workers. The one-time cost of the
write is reported beside it. Run: ``python benchmarks/predecoded_bench.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zcopy_bench.turns import forever, paired_rounds
from zcopy_bench.verdict import classify, describe

from zcopy_data import ZeroCopyDataLoader, write
from zcopy_data.datasets import ArrowDataset, ImageFolderDataset

SIZE, BATCH = (64, 64), 64


def make_folder(root: str, count: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    for i in range(count):
        os.makedirs(os.path.join(root, f"class{i % 4}"), exist_ok=True)
        base = np.stack([x * (1 + i % 3), y * (2 + i % 5), (x + y) * (1 + i % 7)], -1) % 256
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"class{i % 4}", f"{i:05d}.jpg"), quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = os.path.join(tmp, "images"), os.path.join(tmp, "shards")
        make_folder(folder, args.images)
        images = ImageFolderDataset(folder, SIZE, threads=1)
        start = time.perf_counter()
        write(images, shards, progress=False)
        write_s = time.perf_counter() - start
        arrow = ArrowDataset(shards)
        first = next(iter(ZeroCopyDataLoader(arrow, batch_size=4)))
        assert first["image"].dtype == torch.uint8
        assert tuple(first["image"].shape[1:]) == tuple(images[0]["image"].shape)
        loaders = {
            "decode each epoch": ZeroCopyDataLoader(images, batch_size=BATCH, shuffle=True),
            "pre-decoded shards": ZeroCopyDataLoader(arrow, batch_size=BATCH, shuffle=True),
        }
        contenders = {n: forever(lambda _epoch, loader=loader: loader) for n, loader in loaders.items()}
        rounds = paired_rounds(contenders, args.rounds, args.seconds, BATCH)
        names = list(contenders)
    medians = {n: float(np.median([rd[n] for rd in rounds])) for n in names}
    target = classify([rd["pre-decoded shards"] / rd["decode each epoch"] for rd in rounds], 10.0)
    target["name"] = "pre-decoded / decode each epoch >= 10"
    print(f"{args.images} JPEGs of 320x240 -> {SIZE}, shuffled batches of {BATCH}, 0 workers, torch threads 1")
    print(f"  write once: {write_s:.2f} s ({args.images / write_s:,.0f} images/s)")
    for n in names:
        print(f"  {n:<19} {medians[n]:10,.0f} images/s (median of {len(rounds)} rounds)")
    print(f"  {describe(target)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "write_s": write_s, "rounds": rounds, "medians": medians,
                       "target": target}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
