"""Every rank must train on its own shard: a train loader that is not rank-aware under DDP is refused.

Lightning replaces a loader's sampler with a ``DistributedSampler`` unless
``Trainer(use_distributed_sampler=False)``; then a ``DataLoader(shuffle=True)`` or a sequential
one gives every rank the whole dataset, each epoch ``world_size`` times over, with no word. The
check reads what the trainer really trains on (``trainer.train_dataloader``, after Lightning's
processing) and refuses samplers known to ignore the rank; a sampler of unknown kind is trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from zcopy_data.lightning._loaders import dataloaders_in
from zcopy_data.samplers import BlockShuffleSampler

if TYPE_CHECKING:  # importable without Lightning
    import lightning.pytorch as pl

__all__ = ["check_train_sharding"]


def _unsharded(loader: DataLoader[Any], world_size: int) -> str | None:
    """Why ``loader`` gives every rank the same samples, or ``None`` (sharded, or of unknown kind)."""
    if isinstance(loader.dataset, IterableDataset):
        return None  # an iterable dataset shards itself (or not): nothing here says which
    bs = loader.batch_sampler
    if isinstance(bs, BlockShuffleSampler):
        if bs.num_replicas == world_size:
            return None
        return f"a BlockShuffleSampler for {bs.num_replicas} ranks"
    sampler = bs.sampler if isinstance(bs, BatchSampler) else loader.sampler
    if isinstance(sampler, DistributedSampler):
        if sampler.num_replicas == world_size:
            return None
        return f"a DistributedSampler for {sampler.num_replicas} ranks"
    if type(sampler) in (RandomSampler, SequentialSampler):
        return f"a {type(sampler).__name__}, which ignores the rank"
    return None


def check_train_sharding(trainer: pl.Trainer) -> None:
    """Raise ``ValueError`` when a train loader of a ``world_size > 1`` run is not rank-aware."""
    world_size = int(trainer.world_size)
    if world_size <= 1:
        return
    for loader in dataloaders_in(trainer.train_dataloader):
        why = _unsharded(loader, world_size)
        if why is not None:
            raise ValueError(
                f"the training loader runs on {world_size} ranks but its sampler is {why}: every rank would "
                f"train on the whole dataset ({world_size} copies of each sample per epoch). Fix: leave "
                "Trainer(use_distributed_sampler=True) (the default) so Lightning shards it, use "
                "ZeroCopyDataModule(shuffle='block') (rank-aware), or give the loader a "
                "DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank)"
            )
