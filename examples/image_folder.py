"""A folder of images (torchvision's ``root/<class>/<file>`` layout), decoded straight into the batch.

Writes 60 small PNG and JPEG files in 3 class folders with Pillow, then loads them with
``ImageFolderDataset``: each image is decoded and resized by Pillow directly into its slot of
the uint8 batch buffer (one write per image, no per-sample tensor, no ``torch.stack``). On the
device the images become normalised float32, the only stage that changes a dtype::

    python examples/image_folder.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zcopy_data import explain, zero_copy_collate
from zcopy_data.datasets import ImageFolderDataset
from zcopy_data.transfer import Cast, to_device

CLASSES = ("cat", "dog", "fox")


def write_images(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(24, 64, size=2)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a class you can see: one saturated channel
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i:03d}.{suffix}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder for the generated images (default: a temp folder)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp) / "images"
        write_images(root, args.per_class)
        ds = ImageFolderDataset(root, size=args.size)
        print(f"{len(ds)} images in classes {ds.classes}: {ds.schema}")

        loader = DataLoader(
            ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=zero_copy_collate
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        normalise = {"image": Cast(torch.float32, scale=1 / 255, mean=[0.5] * 3, std=[0.25] * 3)}
        counts = torch.zeros(len(CLASSES), dtype=torch.int64)
        for batch in loader:
            batch = to_device(batch, device, cast=normalise)
            counts += torch.bincount(batch["label"].cpu(), minlength=len(CLASSES))
        print(f"one epoch on {device}: {counts.tolist()} images per class, image {batch['image'].dtype}")
        ledger = explain(loader, batches=len(loader))
        print(f"\n{ledger}")
        return {
            "per_class": counts.tolist(),
            "image_dtype": str(batch["image"].dtype),
            "image_shape": tuple(batch["image"].shape[1:]),
            "copied_per_batch": ledger.bytes_copied / ledger.batches,
        }


if __name__ == "__main__":
    main()
