"""``ZeroCopyDataLoader`` (a PyTorch ``DataLoader``) over ``.npy`` files, zero-copy, with every copy accounted for.

Generates 4,096 uint8 images (3x32x32) and their labels as ``.npy`` files, then reads them
three ways and prints the copy ledger of each:

* sequential batches: each one is a view of the memory-mapped file (0 bytes copied);
* shuffled batches: exactly one gather per field into the batch buffer;
* block-shuffled batches (``BlockShuffleSampler``): shuffled order, yet views again.

Then the batches go to the device (CUDA when there is one, else the CPU) and become float32
there, the only stage that changes a dtype::

    python examples/numpy_dataloader.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zcopy_data import NumpyDataset, ZeroCopyDataLoader, explain
from zcopy_data.samplers import BlockShuffleSampler
from zcopy_data.transfer import Cast, DevicePrefetcher


def make_data(folder: Path, samples: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"image": folder / "images.npy", "label": folder / "labels.npy"}
    np.save(paths["image"], rng.integers(0, 256, size=(samples, 3, 32, 32), dtype=np.uint8))
    np.save(paths["label"], rng.integers(0, 10, size=samples, dtype=np.int64))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder for the generated files (default: a temp folder)")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        ds = NumpyDataset({name: str(path) for name, path in make_data(root, args.samples).items()})
        print(ds)
        batches = args.samples // args.batch_size
        # ZeroCopyDataLoader: a DataLoader with zero_copy_collate, whose workers are gather threads here
        common: dict[str, Any] = {"num_workers": args.workers}
        loaders = {
            "sequential": ZeroCopyDataLoader(ds, batch_size=args.batch_size, **common),
            "shuffled": ZeroCopyDataLoader(ds, batch_size=args.batch_size, shuffle=True, **common),
            "block-shuffled": ZeroCopyDataLoader(
                ds, batch_sampler=BlockShuffleSampler(ds, args.batch_size, seed=0), **common
            ),
        }
        copied = {}
        for name, loader in loaders.items():
            ledger = explain(loader, batches=batches)
            copied[name] = ledger.bytes_copied // ledger.batches
            print(f"\n== {name}: {ledger.batches} batches\n{ledger}")

        first = next(iter(loaders["sequential"]))
        is_view = first["image"].data_ptr() == ds.columns()["image"].ctypes.data
        print(f"\nfirst sequential batch is a view of images.npy: {is_view}")

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cast = {"image": Cast(torch.float32, scale=1 / 255)}
        seen = 0
        for batch in DevicePrefetcher(loaders["block-shuffled"], device, depth=2, cast=cast):
            seen += len(batch["label"])
        print(f"{seen} samples reached {device} as {batch['image'].dtype} in [0, 1]")
        return {"copied_per_batch": copied, "first_is_view": is_view, "samples_on_device": seen}


if __name__ == "__main__":
    main()
