"""The loaders a ``ZeroCopyDataModule`` builds, and the ledger records that ride with batches.

* ``sequential`` / ``shuffle``: a plain ``DataLoader`` with ``zero_copy_collate`` and
  ``shuffle=False`` / ``True``, exactly what a default Lightning setup builds, so under DDP
  Lightning swaps in its ``DistributedSampler`` (and calls ``set_epoch``) as it always does.
* ``block``: a ``DataLoader`` over a rank-aware :class:`~zcopy_data.samplers.BlockShuffleSampler`
  (contiguous batches, so each one is a view, in shuffled order), wrapped in
  :class:`ShardedLoader`. The wrapper is deliberately not a ``DataLoader``: Lightning then leaves
  it alone instead of injecting a ``DistributedSampler`` into a sampler that already shards, and
  it still finds ``.sampler.set_epoch`` and calls it every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from torch.utils.data import DataLoader, get_worker_info

from zcopy_data.explain import _record_crossing
from zcopy_data.ledger import LEDGER, Record, capture

__all__ = ["SHUFFLE_MODES", "LedgerBatch", "RecordingCollate", "ShardedLoader", "unwrap_ledger_batch"]

SHUFFLE_MODES = ("sequential", "shuffle", "block")


class LedgerBatch(NamedTuple):
    """A batch with the ledger records made while it was assembled (they cross from workers)."""

    batch: Any
    records: tuple[Record, ...]
    in_worker: bool


class RecordingCollate:
    """Wraps a collate_fn so the ledger records of each batch reach the main process."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Any) -> LedgerBatch:
        in_worker = get_worker_info() is not None
        with capture() as records:
            batch = self.collate_fn(samples)
            if in_worker:
                _record_crossing(batch)
        return LedgerBatch(batch, tuple(records), in_worker)


def unwrap_ledger_batch(batch: Any) -> Any:
    """The batch itself; records made in a worker are added to this process's ``LEDGER``.

    Records made in the main process are in ``LEDGER`` already and are not counted twice.
    """
    if not isinstance(batch, LedgerBatch):
        return batch
    if batch.in_worker:
        LEDGER.extend(batch.records)
    return batch.batch


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

    def __repr__(self) -> str:
        return f"ShardedLoader({self.sampler!r}, num_workers={self.loader.num_workers})"
