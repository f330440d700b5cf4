"""``ZeroCopyDataModule``: a ``LightningDataModule`` built from datasets, zero-copy end to end."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from zcopy_data.collate import zero_copy_collate
from zcopy_data.lightning._checks import SPLITS, as_schema, check_configuration, device_cast, resolve_input_schema
from zcopy_data.lightning._hooks import ZeroCopyTransfer
from zcopy_data.lightning._loaders import SHUFFLE_MODES, DevicePrefetchingLoader, RecordingCollate, ShardedLoader
from zcopy_data.loader import ZeroCopyDataLoader
from zcopy_data.samplers import BlockShuffleSampler
from zcopy_data.schema import Schema
from zcopy_data.transfer.cast import CastMap, DeviceCast

__all__ = ["ZeroCopyDataModule"]

_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}


class ZeroCopyDataModule(ZeroCopyTransfer, pl.LightningDataModule):
    """A ``LightningDataModule`` whose loaders view or gather batches without hidden copies.

    Loaders use :func:`~zcopy_data.zero_copy_collate`; the device hop is non-blocking and
    stream-aware; dtypes change only on the device, through ``cast``. At ``setup()`` the
    datasets, the cast map and the model's declared input schema (the ``input_schema``
    attribute of the ``LightningModule``, or the ``input_schema`` argument) are checked against
    each other, and drift is rejected before the first batch.

    Args:
        train_dataset, val_dataset, test_dataset, predict_dataset: map-style datasets
            (a :class:`~zcopy_data.ZeroCopyDataset` gives the zero-copy path); the loader of a
            split left out is not offered to Lightning.
        batch_size: samples per training batch.
        eval_batch_size: samples per val/test/predict batch (default ``batch_size``).
        num_workers: workers of each :class:`~zcopy_data.ZeroCopyDataLoader`: gather threads for
            columnar datasets, worker processes otherwise.
        shuffle: training order. ``"shuffle"`` is ``DataLoader(shuffle=True)`` (seeded by
            ``seed_everything``; the same batches as a default setup), ``"sequential"`` keeps
            file order, ``"block"`` shuffles contiguous blocks of ``batch_size`` samples with a
            rank-aware :class:`~zcopy_data.samplers.BlockShuffleSampler` (each batch a view).
            Evaluation loaders are always sequential.
        seed: seed of the ``"block"`` order (default: the ``seed_everything`` seed, else 0).
            The train loader's position is saved in Lightning's checkpoints and
            restored by ``fit(ckpt_path=...)``: a run resumed mid-epoch sees the rest of that epoch
            (with ``"shuffle"``, later epochs draw from the global generator, as ``DataLoader``'s do).
        drop_last: drop the last incomplete training batch.
        cast: device cast map, ``field -> dtype`` or :class:`~zcopy_data.transfer.Cast`
            (``{"image": Cast(torch.float16, scale=1 / 255)}``), applied in
            ``on_after_batch_transfer``: the only place a dtype changes.
        input_schema: what the model expects after the casts, if the model does not declare
            ``input_schema`` itself.
        device_prefetch: when > 0 and the trainer runs on an accelerator, every loader copies
            its batches to the device this many batches ahead, on a side stream, overlapping
            the copies with the model's compute (Lightning itself copies each batch just before
            its step). 0 (default): ``transfer_batch_to_device`` copies each batch.
        pin_memory, persistent_workers, prefetch_factor, multiprocessing_context: passed to
            every ``DataLoader``.

    Under DDP (any number of nodes) every rank sees its own shard: ``"sequential"`` and
    ``"shuffle"`` loaders get Lightning's ``DistributedSampler``; ``"block"`` shards itself.

    >>> import numpy as np, torch
    >>> from zcopy_data import NumpyDataset
    >>> ds = NumpyDataset({"image": np.zeros((64, 3, 8, 8), np.uint8), "label": np.zeros(64, np.int64)})
    >>> dm = ZeroCopyDataModule(ds, batch_size=16, cast={"image": torch.float32})
    >>> next(iter(dm.train_dataloader()))["image"].dtype  # cast happens on the device, not here
    torch.uint8
    """

    def __init__(
        self,
        train_dataset: Dataset[Any] | None = None,
        val_dataset: Dataset[Any] | None = None,
        test_dataset: Dataset[Any] | None = None,
        predict_dataset: Dataset[Any] | None = None,
        *,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: str = "shuffle",
        seed: int | None = None,
        drop_last: bool = False,
        cast: CastMap | DeviceCast | None = None,
        input_schema: Schema | Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        multiprocessing_context: Any = None,
        device_prefetch: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} should be a positive integer")
        for name, value in (("num_workers", num_workers), ("device_prefetch", device_prefetch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} should be an integer >= 0")
        if shuffle not in SHUFFLE_MODES:
            raise ValueError(f"{shuffle=} should be one of {SHUFFLE_MODES}")
        self.datasets: dict[str, Dataset[Any] | None] = dict(
            zip(SPLITS, (train_dataset, val_dataset, test_dataset, predict_dataset), strict=True)
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device_prefetch = device_prefetch
        self.cast = device_cast(cast) if cast else None  # a malformed map fails here, at construction
        self.input_schema = as_schema(input_schema, "input_schema argument")
        self.loader_kwargs: dict[str, Any] = {
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
            "multiprocessing_context": multiprocessing_context if num_workers > 0 else None,
        }
        if prefetch_factor is not None and num_workers > 0:
            self.loader_kwargs["prefetch_factor"] = prefetch_factor
        self.record_ledger = False
        """Set by :class:`LedgerLogger`: batches carry their workers' ledger records."""
        # Lightning runs only the loops whose loader hook a data module overrides: hide the
        # hooks of splits left out (unless a subclass defines its own).
        for split, ds in self.datasets.items():
            hook = f"{split}_dataloader"
            if ds is None and getattr(type(self), hook) is getattr(ZeroCopyDataModule, hook):
                setattr(self, hook, None)

    # -- configuration checks ------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check datasets, cast map and the model's input schema against each other."""
        splits = _STAGE_SPLITS.get(stage, SPLITS)
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        check_configuration(
            {s: self.datasets[s] for s in splits if self.datasets[s] is not None},
            input_schema=resolve_input_schema(self.input_schema, model),
            cast=self.cast,
        )

    # -- loaders -------------------------------------------------------------------------
    def _loader(self, dataset: Dataset[Any], **kwargs: Any) -> DataLoader[Any]:
        collate = RecordingCollate(zero_copy_collate) if self.record_ledger else zero_copy_collate
        if self.device_prefetch:
            trainer = self.trainer
            device = trainer.strategy.root_device if trainer is not None else None
            return DevicePrefetchingLoader(
                dataset,
                num_workers=self.num_workers,
                collate_fn=collate,
                device=device,
                depth=self.device_prefetch,
                **self.loader_kwargs,
                **kwargs,
            )
        return ZeroCopyDataLoader(
            dataset, num_workers=self.num_workers, collate_fn=collate, **self.loader_kwargs, **kwargs
        )

    def _dataset(self, split: str) -> Dataset[Any]:
        ds = self.datasets[split]
        if ds is None:
            raise ValueError(f"no {split}_dataset was given to ZeroCopyDataModule")
        return ds

    def _block_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def train_dataloader(self) -> Any:
        ds = self._dataset("train")
        if self.shuffle != "block":
            return self._loader(
                ds, batch_size=self.batch_size, shuffle=self.shuffle == "shuffle", drop_last=self.drop_last
            )
        trainer = self.trainer
        sampler = BlockShuffleSampler(
            len(ds),  # type: ignore[arg-type]
            self.batch_size,
            shuffle=True,
            seed=self._block_seed(),
            drop_last=self.drop_last,
            num_replicas=trainer.world_size if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else None,
        )
        return ShardedLoader(self._loader(ds, batch_sampler=sampler), sampler)

    def val_dataloader(self) -> Any:
        return self._loader(self._dataset("val"), batch_size=self.eval_batch_size)

    def test_dataloader(self) -> Any:
        return self._loader(self._dataset("test"), batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> Any:
        return self._loader(self._dataset("predict"), batch_size=self.eval_batch_size)

    def __repr__(self) -> str:
        given = ", ".join(f"{s}={len(d)}" for s, d in self.datasets.items() if d is not None)  # type: ignore[arg-type]
        return f"ZeroCopyDataModule({given}, batch_size={self.batch_size}, shuffle={self.shuffle!r})"
