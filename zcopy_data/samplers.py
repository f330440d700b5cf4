"""Batch samplers that keep shuffled training zero-copy, rank-aware for DDP.

:class:`BlockShuffleSampler` yields batches that are contiguous runs of indices, in a shuffled
order, with block boundaries that move every epoch. A contiguous batch of a columnar dataset is
one view of the source (zero copies, in worker processes too); only the one batch per epoch that
wraps around the end of the dataset is gathered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["BlockShuffleSampler"]


def _dist_default(value: int | None, what: str) -> int:
    if value is not None:
        return value
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() if what == "num_replicas" else dist.get_rank()
    return 1 if what == "num_replicas" else 0


class BlockShuffleSampler(Sampler[list[int]]):
    """A batch sampler of contiguous index runs in shuffled order, split across DDP ranks.

    Each epoch the index space ``0..n-1`` is rotated by a random offset (so block boundaries, and
    which samples share a batch, change from epoch to epoch), cut into blocks of ``batch_size``
    consecutive indices plus one shorter block of the ``n % batch_size`` left over, and the
    blocks are shuffled. Every block is one contiguous run except the one that wraps from the
    last index to index 0 (two runs, gathered with one copy). Pass it as ``batch_sampler=``.

    Across ranks: rank ``r`` takes blocks ``r, r + R, r + 2R, ...`` of the epoch's order, which
    is the same on every rank (it depends on ``seed`` and the epoch only).

    * ``drop_last=False``: every sample appears exactly once per epoch across all ranks. When
      the number of blocks is not a multiple of ``num_replicas``, the largest blocks at the end
      of the order are split in two (each half still contiguous) until it is, so every rank
      gets the same number of batches; a few batches per epoch are then smaller than
      ``batch_size``. Needs at least ``num_replicas`` samples per epoch.
    * ``drop_last=True``: the short block is dropped, and so are the last
      ``(n // batch_size) % num_replicas`` full blocks of the epoch's order; every batch has
      ``batch_size`` samples and every rank the same number of batches. The dropped samples
      change from epoch to epoch.

    With Lightning, pass ``Trainer(use_distributed_sampler=False)``: the sampler already splits
    the data across ranks, and Lightning's ``set_epoch`` calls reach it.

    Args:
        dataset_or_len: the dataset (anything with ``len``) or its length.
        batch_size: samples per batch (before any split described above).
        shuffle: shuffle the block order and rotate the boundaries each epoch; when False the
            blocks come in order ``0..batch_size-1, batch_size..``, split across ranks the same way.
        seed: base seed; the order depends on ``(seed, epoch)`` only, so it is the same on every
            rank and in every run.
        drop_last: see above.
        num_replicas: number of ranks; default ``torch.distributed`` world size when it is
            initialised, else 1.
        rank: this rank; default ``torch.distributed`` rank when initialised, else 0.

    >>> s = BlockShuffleSampler(10, 4, shuffle=False)
    >>> list(s)
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> len(BlockShuffleSampler(10, 4, num_replicas=2, rank=1))
    2
    """

    def __init__(
        self,
        dataset_or_len: Sized | int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        if isinstance(n, bool) or n < 0:
            raise ValueError(f"dataset_or_len={dataset_or_len!r} should be a dataset or a length >= 0")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{batch_size=} should be a positive integer")
        replicas = _dist_default(num_replicas, "num_replicas")
        this_rank = _dist_default(rank, "rank")
        if replicas < 1:
            raise ValueError(f"num_replicas={replicas} should be >= 1")
        if not 0 <= this_rank < replicas:
            raise ValueError(f"rank={this_rank} should be in [0, {replicas}) for num_replicas={replicas}")
        full, rest = divmod(n, batch_size)
        if drop_last:
            per_rank = full // replicas
        else:
            blocks = full + (rest > 0)
            per_rank = -(-blocks // replicas)
            if per_rank * replicas > n:
                raise ValueError(
                    f"{n} samples cannot give each of num_replicas={replicas} ranks {per_rank} non-empty "
                    "batches with every sample exactly once; use drop_last=True, fewer ranks, or more samples"
                )
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = replicas
        self.rank = this_rank
        self.epoch = 0
        self._per_rank = per_rank

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next ``iter()`` yields (call it before every epoch)."""
        self.epoch = int(epoch)

    @property
    def sampler(self) -> BlockShuffleSampler:
        """Itself: Lightning (and others) call ``loader.batch_sampler.sampler.set_epoch(epoch)``."""
        return self

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._per_rank

    def runs(self, epoch: int | None = None) -> list[list[tuple[int, int]]]:
        """The epoch's batches for *all* ranks, in order, each a list of ``(start, stop)`` runs."""
        epoch = self.epoch if epoch is None else epoch
        n, b, replicas = self.n, self.batch_size, self.num_replicas
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        offset = int(rng.integers(0, n)) if rng is not None else 0
        starts = np.arange(0, n, b)  # in rotated space; the last block may be short
        order = rng.permutation(starts.size) if rng is not None else np.arange(starts.size)
        # (rotated start, length) per block, in epoch order
        blocks = [(int(starts[i]), min(b, n - int(starts[i]))) for i in order]
        if self.drop_last:
            blocks = [blk for blk in blocks if blk[1] == b]
            blocks = blocks[: len(blocks) - len(blocks) % replicas]
        else:
            target = self._per_rank * replicas
            while len(blocks) < target:
                # split the largest block, the latest in the order among equals, into two halves
                pos = max(range(len(blocks)), key=lambda i: (blocks[i][1], i))
                s, length = blocks[pos]
                half = length // 2
                blocks[pos : pos + 1] = [(s, length - half), (s + length - half, half)]
        return [_unrotate(s, length, offset, n) for s, length in blocks]

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.runs()
        for batch in plan[self.rank :: self.num_replicas]:
            if len(batch) == 1:
                start, stop = batch[0]
                yield list(range(start, stop))
            else:
                yield [i for start, stop in batch for i in range(start, stop)]

    def __repr__(self) -> str:
        return (
            f"BlockShuffleSampler(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, num_replicas={self.num_replicas}, rank={self.rank})"
        )


def _unrotate(start: int, length: int, offset: int, n: int) -> list[tuple[int, int]]:
    """Rotated-space block ``[start, start+length)`` as one or two runs of real indices."""
    first = (start + offset) % n
    end = first + length
    if end <= n:
        return [(first, end)]
    return [(first, n), (0, end - n)]
