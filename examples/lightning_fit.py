"""Lightning ``fit`` with ``ZeroCopyDataModule``: zero-copy loading, checked configuration, ledger in the logs.

Generates a small image-classification set as ``.npy`` files, then trains a tiny model for two
epochs on the CPU (or the GPU when there is one). What it shows:

* the model declares ``input_schema`` (float32 images, int64 labels); the files hold uint8
  images; the data module's device cast map turns them into normalised float32 on the device,
  and ``setup()`` checks the three agree before the first batch (try ``--no-cast``);
* ``shuffle="block"``: shuffled training order whose batches are still views of the files;
* ``LedgerLogger`` logs bytes copied per batch and samples/s through Lightning's logger::

    python examples/lightning_fit.py
    python examples/lightning_fit.py --no-cast   # rejected at setup, before any batch
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from zcopy_data import Field, NumpyDataset, Schema
from zcopy_data.lightning import LedgerLogger, ZeroCopyDataModule
from zcopy_data.transfer import Cast


def make_split(folder: Path, name: str, samples: int, seed: int) -> NumpyDataset:
    """Images whose label is the brightest of 4 quadrants: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=samples, dtype=np.int64)
    images = rng.integers(0, 128, size=(samples, 3, 16, 16), dtype=np.uint8)
    for q in range(4):
        rows, cols = divmod(q, 2)
        images[labels == q, :, rows * 8 : rows * 8 + 8, cols * 8 : cols * 8 + 8] += 120
    np.save(folder / f"{name}-images.npy", images)
    np.save(folder / f"{name}-labels.npy", labels)
    return NumpyDataset({"image": str(folder / f"{name}-images.npy"), "label": str(folder / f"{name}-labels.npy")})


class QuadrantNet(pl.LightningModule):
    input_schema = Schema({"image": Field(torch.float32, (3, 16, 16)), "label": Field(torch.int64)})

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(12, 4))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: ARG002
        loss = torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # noqa: ARG002
        logits = self.net(batch["image"])
        self.log("val_acc", (logits.argmax(1) == batch["label"]).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder for the generated files (default: a temp folder)")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--no-cast", action="store_true", help="leave out the device cast: setup() rejects it")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        train = make_split(root, "train", args.samples, seed=1)
        val = make_split(root, "val", args.samples // 4, seed=2)
        cast = None if args.no_cast else {"image": Cast(torch.float32, scale=1 / 255, mean=0.5, std=0.25)}
        dm = ZeroCopyDataModule(
            train, val, batch_size=args.batch_size, num_workers=args.workers, shuffle="block", cast=cast
        )
        trainer = pl.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=args.epochs,
            logger=False,
            callbacks=[LedgerLogger()],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(QuadrantNet(), dm)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        for k in sorted(metrics):
            print(f"{k:>30}: {metrics[k]:,.3f}")
        return metrics


if __name__ == "__main__":
    main()
