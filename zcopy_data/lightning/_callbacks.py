"""Callbacks: the configuration checks for any data module, and ledger figures in the logger."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.data import extract_batch_size
from torch.utils.data import Dataset

from zcopy_data.ledger import LEDGER
from zcopy_data.lightning._checks import as_schema, check_configuration, device_cast, resolve_input_schema
from zcopy_data.lightning._datamodule import ZeroCopyDataModule
from zcopy_data.schema import Schema
from zcopy_data.transfer.cast import CastMap, DeviceCast

__all__ = ["LedgerLogger", "ZeroCopyChecks"]


def _datasets(loaders: Any) -> Iterator[tuple[str, Dataset[Any]]]:
    """``(suffix, dataset)`` of each loader in what Lightning holds (one loader, a list, a dict)."""
    if loaders is None:
        return
    if isinstance(loaders, Mapping):
        for key, value in loaders.items():
            for suffix, ds in _datasets(value):
                yield f"[{key!r}]{suffix}", ds
    elif isinstance(loaders, (list, tuple)):
        many = len(loaders) > 1
        for i, value in enumerate(loaders):
            for suffix, ds in _datasets(value):
                yield (f"[{i}]" if many else "") + suffix, ds
    elif getattr(loaders, "dataset", None) is not None:
        yield "", loaders.dataset


class ZeroCopyChecks(pl.Callback):
    """The configuration checks of ``ZeroCopyDataModule`` for any data module or loaders.

    Before the first batch of each loop (``on_train_start``, ``on_validation_start`` — the
    sanity check included —, ``on_test_start``, ``on_predict_start``) the datasets of that
    loop's loaders, the cast map and the model's ``input_schema`` are checked against each
    other; drift raises a :class:`~zcopy_data.SchemaError` showing both sides.

    Args:
        cast: the device cast map; default the data module's ``cast`` attribute (as set on a
            :class:`ZeroCopyTransfer` data module), else none.
        input_schema: what the model expects after the casts, when the model does not declare
            ``input_schema`` itself.

    >>> trainer = pl.Trainer(callbacks=[ZeroCopyChecks(cast={"image": torch.float32})])  # doctest: +SKIP
    """

    def __init__(
        self, *, cast: CastMap | DeviceCast | None = None, input_schema: Schema | Mapping[str, Any] | None = None
    ) -> None:
        self.cast = device_cast(cast) if cast is not None else None
        self.input_schema = as_schema(input_schema, "input_schema argument")
        self._checked: set[tuple[str, int]] = set()

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, loaders: Any) -> None:
        cast = self.cast if self.cast is not None else getattr(getattr(trainer, "datamodule", None), "cast", None)
        datasets = {}
        for suffix, ds in _datasets(loaders):
            if (split, id(ds)) not in self._checked:
                datasets[split + suffix] = ds
        if not datasets:
            return
        schema = resolve_input_schema(self.input_schema, pl_module)
        for name, ds in datasets.items():
            # "predict[0]" is still a predict split: it may lack the model's label fields.
            check_configuration({name.split("[")[0]: ds}, input_schema=schema, cast=cast)
        self._checked.update((split, id(ds)) for ds in datasets.values())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # noqa: ARG002
        self._checked.clear()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "train", trainer.train_dataloader)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "val", trainer.val_dataloaders)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "test", trainer.test_dataloaders)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "predict", trainer.predict_dataloaders)


class LedgerLogger(pl.Callback):
    """Logs copy-ledger figures of every training batch through Lightning's logger.

    Logged per step (names start with ``prefix``): ``bytes_copied_per_batch``,
    ``bytes_viewed_per_batch`` and ``samples_per_sec`` (batch size over the time since the
    previous batch ended: data loading, transfer and the step together).

    With a :class:`ZeroCopyDataModule` (or a data module using :class:`ZeroCopyTransfer` whose
    batches carry their records) the byte figures are exact per batch, worker processes
    included: the callback switches the module to batches that carry the records their workers
    made. With other data modules they are what this process's ``LEDGER`` gained since the
    previous batch, which misses work done in worker processes.

    Args:
        prefix: metric name prefix.
    """

    def __init__(self, prefix: str = "zcopy/") -> None:
        self.prefix = prefix
        self._mark: tuple[float, int, int] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:  # noqa: ARG002
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ZeroCopyDataModule):
            datamodule.record_ledger = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: ARG002
        self._mark = (time.perf_counter(), LEDGER.bytes_viewed, LEDGER.bytes_copied)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,  # noqa: ARG002
        batch: Any,
        batch_idx: int,  # noqa: ARG002
    ) -> None:
        now, viewed, copied = time.perf_counter(), LEDGER.bytes_viewed, LEDGER.bytes_copied
        since, viewed0, copied0 = self._mark if self._mark is not None else (now, viewed, copied)
        self._mark = (now, viewed, copied)
        figures = getattr(getattr(trainer, "datamodule", None), "last_batch_ledger", None)
        if figures is not None:
            viewed_batch, copied_batch = figures
        else:
            viewed_batch, copied_batch = viewed - viewed0, copied - copied0
        samples = extract_batch_size(batch)
        elapsed = now - since
        metrics = {
            f"{self.prefix}bytes_copied_per_batch": float(copied_batch),
            f"{self.prefix}bytes_viewed_per_batch": float(viewed_batch),
        }
        if elapsed > 0:
            metrics[f"{self.prefix}samples_per_sec"] = samples / elapsed
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=samples)
