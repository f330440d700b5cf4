"""DDP with ZeroCopyDataModule: several processes, each sees its own shard of every epoch.

Runs on CPU with the gloo backend, on generated data, in seconds::

    python examples/lightning_ddp.py --devices 2                      # one machine, 2 processes
    python examples/lightning_ddp.py --devices 2 --shuffle block      # contiguous shuffled blocks

Several machines need nothing beyond Lightning / torch.distributed: start the same command on
every node, each with its own ``NODE_RANK`` and the address of node 0 (or use ``torchrun`` or
SLURM, which set these for you)::

    MASTER_ADDR=node0 MASTER_PORT=29500 NODE_RANK=0 python examples/lightning_ddp.py --num-nodes 2 --devices 1
    MASTER_ADDR=node0 MASTER_PORT=29500 NODE_RANK=1 python examples/lightning_ddp.py --num-nodes 2 --devices 1

(Setting ``LOCAL_RANK=0`` too tells Lightning the processes are started externally, one per node;
that is how the test suite runs two "nodes" on one machine.) Every node must be able to read the
dataset files at the same path: they are memory-mapped, not sent between processes.

With ``--out DIR`` each rank writes the sample indices it trained on, per epoch, to
``DIR/rank{R}_epoch{E}.json``. A pre-empted job and its resume, mid-epoch::

    python examples/lightning_ddp.py --max-steps 3 --checkpoint-every 3     # stops at step 3
    python examples/lightning_ddp.py --resume /tmp/zcopy-ddp-example/ckpts/epoch=0-step=3.ckpt

The resumed run trains on the rest of epoch 0, each sample once, then epoch 1 as an
uninterrupted run would.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from zcopy_data import Field, NumpyDataset, Schema
from zcopy_data.lightning import ZeroCopyDataModule


def make_data(folder: Path, samples: int) -> dict[str, str]:
    """Write images, labels and sample indices as .npy files (atomically: every rank may call it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.integers(0, 256, size=(samples, 3, 8, 8), dtype=np.uint8),
        "label": rng.integers(0, 10, size=samples, dtype=np.int64),
        "index": np.arange(samples, dtype=np.int64),
    }
    paths = {}
    for name, array in arrays.items():
        path = folder / f"{name}-{samples}.npy"
        if not path.exists():
            tmp = folder / f".{name}-{os.getpid()}.npy"
            np.save(tmp, array)
            os.replace(tmp, path)  # a process that mapped an earlier copy keeps a valid mapping
        paths[name] = str(path)
    return paths


class TinyNet(pl.LightningModule):
    """A linear classifier on 3x8x8 images; records the sample indices of every batch."""

    input_schema = Schema(
        {"image": Field(torch.float32, (3, 8, 8)), "label": Field(torch.int64), "index": Field(torch.int64)}
    )

    def __init__(self, out: str | None = None) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 * 8 * 8, 10)
        self.out = out
        self.seen: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: ARG002
        self.seen += batch["index"].tolist()
        logits = self.lin(batch["image"].flatten(1) / 255)
        return torch.nn.functional.cross_entropy(logits, batch["label"])

    def on_train_epoch_end(self) -> None:
        if self.out is not None:
            loader = self.trainer.train_dataloader
            record = {
                "rank": self.global_rank,
                "world_size": self.trainer.world_size,
                "epoch": self.current_epoch,
                "loader": type(loader).__name__,
                "sampler": type(getattr(loader, "sampler", None)).__name__,
                "indices": self.seen,
            }
            path = Path(self.out) / f"rank{self.global_rank}_epoch{self.current_epoch}.json"
            path.write_text(json.dumps(record))
        self.seen = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="processes per node")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--shuffle", default="shuffle", choices=["sequential", "shuffle", "block"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device-prefetch", type=int, default=0, help="batches copied to the accelerator ahead")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "zcopy-ddp-example"))
    parser.add_argument("--out", default=None, help="write the indices each rank saw here")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (a pre-empted job)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save a checkpoint every N steps in --data")
    parser.add_argument("--resume", default=None, help="a checkpoint to resume from, mid-epoch included")
    parser.add_argument(
        "--no-distributed-sampler", action="store_true", help="Trainer(use_distributed_sampler=False): refused"
    )
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    train = NumpyDataset(make_data(Path(args.data), args.samples))
    dm = ZeroCopyDataModule(
        train,
        batch_size=args.batch_size,
        num_workers=args.workers,
        shuffle=args.shuffle,
        cast={"image": torch.float32},
        device_prefetch=args.device_prefetch,
    )
    every = args.checkpoint_every
    callbacks = [ModelCheckpoint(Path(args.data) / "ckpts", every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",  # gloo on CPU
        devices=args.devices,
        num_nodes=args.num_nodes,
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=bool(every),
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=not args.no_distributed_sampler,
    )
    model = TinyNet(args.out)
    trainer.fit(model, dm, ckpt_path=args.resume)  # the loaders' positions are in the checkpoint
    if trainer.is_global_zero:
        print(f"trained {args.epochs} epochs on {trainer.world_size} processes, shuffle={args.shuffle!r}")
    if torch.distributed.is_initialized():
        # gloo's threads must stop before the interpreter does, or a process may abort at exit
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
