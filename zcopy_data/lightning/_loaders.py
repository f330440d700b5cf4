"""The loaders a ``ZeroCopyDataModule`` builds, and the ledger records that ride with batches.

* ``sequential`` / ``shuffle``: a :class:`~zcopy_data.ZeroCopyDataLoader` (a ``DataLoader``
  whose workers are gather threads for columnar datasets) with ``shuffle=False`` / ``True``,
  what a default Lightning setup builds, so under DDP Lightning swaps in its
  ``DistributedSampler`` (and calls ``set_epoch``) as it always does.
* ``block``: a ``ZeroCopyDataLoader`` over a rank-aware :class:`~zcopy_data.samplers.BlockShuffleSampler`
  (contiguous batches, so each one is a view, in shuffled order), wrapped in
  :class:`ShardedLoader`. The wrapper is deliberately not a ``DataLoader``: Lightning then leaves
  it alone instead of injecting a ``DistributedSampler`` into a sampler that already shards, and
  it still finds ``.sampler.set_epoch`` and calls it every epoch.

With ``device_prefetch=N`` the loaders are :class:`DevicePrefetchingLoader`: still a
``ZeroCopyDataLoader`` (Lightning re-creates it with its samplers, keeping the extra arguments), whose
batches are already on the accelerator, copied ``N`` batches ahead while the model computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from zcopy_data.loader import ZeroCopyDataLoader
from zcopy_data.recording import LedgerBatch, RecordingCollate
from zcopy_data.recording import unwrap as unwrap_ledger_batch
from zcopy_data.transfer import DevicePrefetcher

__all__ = [
    "SHUFFLE_MODES",
    "DevicePrefetchingLoader",
    "LedgerBatch",
    "RecordingCollate",
    "ShardedLoader",
    "unwrap_ledger_batch",
]

SHUFFLE_MODES = ("sequential", "shuffle", "block")


class ShardedLoader:
    """A ``DataLoader`` whose batch sampler already shards by rank, hidden from Lightning's
    sampler injection.

    Attributes:
        loader: the wrapped ``DataLoader``.
        sampler: the rank-aware batch sampler; Lightning calls its ``set_epoch`` every epoch.
    """

    def __init__(self, loader: DataLoader[Any], sampler: Any) -> None:
        self.loader = loader
        self.sampler = sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    @property
    def worker_init_fn(self) -> Callable[[int], None] | None:
        """The wrapped loader's; Lightning sets it under ``seed_everything(workers=True)``."""
        return self.loader.worker_init_fn

    @worker_init_fn.setter
    def worker_init_fn(self, fn: Callable[[int], None] | None) -> None:
        self.loader.worker_init_fn = fn

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose order the next iteration yields (for loops outside Lightning)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's (its position, the sampler's included): Lightning checkpoints it."""
        state: dict[str, Any] = self.loader.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the wrapped loader (Lightning calls it before the resumed epoch starts)."""
        self.loader.load_state_dict(state)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"ShardedLoader({self.sampler!r}, num_workers={self.loader.num_workers})"


def dataloaders_in(obj: Any) -> list[DataLoader[Any]]:
    """The data loaders in what a trainer trains on: a ``DataLoader``, a ``ShardedLoader``'s, or
    those of a mapping or sequence of them (Lightning's combined loaders)."""
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, ShardedLoader):
        return [obj.loader]
    if isinstance(obj, Mapping):
        return [x for v in obj.values() for x in dataloaders_in(v)]
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [x for v in obj for x in dataloaders_in(v)]
    return []


class DevicePrefetchingLoader(ZeroCopyDataLoader):
    """A ``DataLoader`` whose iteration yields batches already on ``device``, ``depth`` ahead.

    The copies are :class:`~zcopy_data.transfer.DevicePrefetcher`'s: one persistent side
    stream, pinned staging, events, ``record_stream``. With ``device`` ``None`` or the CPU it
    iterates like its base class. Casts stay in ``on_after_batch_transfer``.

    Args:
        device: the accelerator (keyword only, like ``depth``); every other argument is the
            ``DataLoader``'s.
        depth: batches in flight ahead of the one the model is using.
    """

    def __init__(self, *args: Any, device: torch.device | str | None = None, depth: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device = None if device is None else torch.device(device)
        self.depth = depth
        self._prefetcher: DevicePrefetcher | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.device is None or self.device.type == "cpu":
            return super().__iter__()
        if self._prefetcher is None:  # one per loader: its pinned pool is reused every epoch
            # the prefetcher iterates this loader's host_batches(), handing down its exact pinned buffers
            self._prefetcher = DevicePrefetcher(self, self.device, depth=self.depth, schema=None)
        return iter(self._prefetcher)
