"""``ZeroCopyTransfer``: the batch-transfer hooks, as a mixin for any ``LightningDataModule``.

Lightning moves a batch in three hooks; the mixin fills each with one stage of the device hop:

* ``on_before_batch_transfer`` unwraps the ledger records a batch carries from its worker;
* ``transfer_batch_to_device`` only moves (the stream-aware, non-blocking copy of
  :func:`zcopy_data.transfer.to_device`), it never changes a dtype;
* ``on_after_batch_transfer`` runs the device cast map: the only stage that changes a dtype.

A ``LightningModule`` that overrides ``on_before_batch_transfer`` or ``on_after_batch_transfer``
itself still has its hook run, after the mixin's (Lightning would otherwise call only the data
module's, and says so in a warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zcopy_data.ledger import Record, capture
from zcopy_data.lightning._checks import device_cast
from zcopy_data.lightning._loaders import LedgerBatch, unwrap_ledger_batch
from zcopy_data.lightning._progress import attach_progress
from zcopy_data.lightning._sharding import check_train_sharding
from zcopy_data.transfer import DeviceCast, to_device

__all__ = ["ZeroCopyTransfer"]


def _model_hook(owner: object, name: str) -> Any:
    """The attached LightningModule's own override of hook ``name``, or ``None``."""
    trainer = getattr(owner, "trainer", None)
    model = getattr(trainer, "lightning_module", None) if trainer is not None else None
    if model is None:
        return None
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return getattr(model, name) if is_overridden(name, model, pl.LightningModule) else None


class ZeroCopyTransfer:
    """Mixin giving a ``LightningDataModule`` the zero-copy device hop and device-side casts.

    Put it first among the bases; set ``cast`` (``field -> dtype`` or
    :class:`~zcopy_data.transfer.Cast`) to cast on the device.

    >>> import lightning.pytorch as pl  # doctest: +SKIP
    >>> class MyData(ZeroCopyTransfer, pl.LightningDataModule):  # doctest: +SKIP
    ...     cast = {"image": torch.float16}
    """

    cast: Mapping[str, Any] | DeviceCast | None = None
    last_batch_ledger: tuple[int, int] | None = None
    """``(bytes viewed, bytes copied)`` of the latest batch, from its assembly to its cast.

    Known when batches carry their ledger records (``ZeroCopyDataModule`` with a
    :class:`LedgerLogger`); ``None`` otherwise."""

    def _device_cast(self) -> DeviceCast:
        """``cast`` validated once (again only if the attribute is replaced)."""
        cached = self.__dict__.get("_zc_device_cast")
        if cached is None or cached[0] is not self.cast:
            cached = (self.cast, device_cast(self.cast))
            self.__dict__["_zc_device_cast"] = cached
        return cached[1]

    def _tally(self, records: list[Record] | tuple[Record, ...], *, first: bool = False) -> None:
        viewed = sum(r[3] for r in records)
        copied = sum(r[4] for r in records)
        if first:
            self.last_batch_ledger = (viewed, copied)
        elif self.last_batch_ledger is not None:
            v, c = self.last_batch_ledger
            self.last_batch_ledger = (v + viewed, c + copied)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            loaders = trainer.train_dataloader
            if loaders is not getattr(self, "_zc_progress_for", None):  # new loaders (a reload) too
                check_train_sharding(trainer)  # every rank its own shard, before the first step
                attach_progress(trainer)  # the train loaders' states count the batches the loop used
                self._zc_progress_for = loaders
        if isinstance(batch, LedgerBatch):
            self._tally(batch.records, first=True)
        else:
            self.last_batch_ledger = None
        batch = unwrap_ledger_batch(batch)
        hook = _model_hook(self, "on_before_batch_transfer")
        return batch if hook is None else hook(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:  # noqa: ARG002
        with capture() as records:
            batch = to_device(batch, device, non_blocking=True)
        self._tally(records)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.cast:
            with capture() as records:
                batch = self._device_cast()(batch)
            self._tally(records)
        hook = _model_hook(self, "on_after_batch_transfer")
        return batch if hook is None else hook(batch, dataloader_idx)
