"""What a training loader's state records under Lightning: the batches the loop has used.

Lightning's fetcher takes one batch ahead of the one in ``training_step`` (and a device stage
more), so a loader's own count at a checkpoint is past the position. The loop's
``batch_progress`` knows the batches it has processed in this epoch: a train loader asks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zcopy_data.lightning._loaders import dataloaders_in
from zcopy_data.loader import ZeroCopyDataLoader

if TYPE_CHECKING:  # the mixin is importable without Lightning
    import lightning.pytorch as pl

__all__ = ["attach_progress", "consumed_train_batches"]


def consumed_train_batches(trainer: pl.Trainer) -> int | None:
    """Batches of the current training epoch the loop has processed (``None`` when not fitting)."""
    if trainer.state.fn != "fit":
        return None
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(getattr(current, "processed", current.completed))  # processed: training_step ran


def attach_progress(trainer: pl.Trainer) -> None:
    """Make every :class:`~zcopy_data.ZeroCopyDataLoader` the trainer trains on count by the loop."""
    for loader in dataloaders_in(trainer.train_dataloader):
        if isinstance(loader, ZeroCopyDataLoader) and loader.consumed_batches is None:
            loader.consumed_batches = lambda: consumed_train_batches(trainer)
