"""Batch samplers that keep shuffled training zero-copy, rank-aware for DDP.

:class:`BlockShuffleSampler` yields batches that are contiguous runs of indices, in a shuffled
order, with block boundaries that move every epoch. A contiguous batch of a columnar dataset is
one view of the source (zero copies, in worker processes too): every batch is, the short blocks
at the moved boundaries included.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from zcopy_data._permutation import Permutation
from zcopy_data.errors import ResumeStateError

__all__ = ["BlockShuffleSampler", "LazyShuffleSampler"]

_Ints = np.ndarray[Any, np.dtype[np.int64]]


def _dist_default(value: int | None, what: str) -> int:
    if value is not None:
        return value
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() if what == "num_replicas" else dist.get_rank()
    return 1 if what == "num_replicas" else 0


def _checked(
    dataset_or_len: Sized | int, batch_size: int, num_replicas: int | None, rank: int | None
) -> tuple[int, int, int]:
    """A batch sampler's arguments, checked: ``(n, num_replicas, rank)``."""
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
    return n, replicas, this_rank


class BlockShuffleSampler(Sampler[list[int]]):
    """A batch sampler of contiguous index runs in shuffled order, split across DDP ranks.

    Each epoch the block boundaries move by a random phase ``p`` in ``[0, batch_size)`` (so which
    samples share a batch changes from epoch to epoch): the blocks are ``[0, p)``, then
    ``batch_size`` consecutive indices at a time from ``p``, the last one shorter when ``n - p``
    is not a multiple; the blocks are shuffled. Every block is one contiguous run (a view of the
    file). Pass it as ``batch_sampler=``. The number of blocks varies with the phase by one or
    two; the batches per epoch do not (see below).

    Across ranks: rank ``r`` takes blocks ``r, r + R, r + 2R, ...`` of the epoch's order, which
    is the same on every rank (it depends on ``seed`` and the epoch only).

    * ``drop_last=False``: every sample appears exactly once per epoch across all ranks. Every
      epoch has as many batches as the phase that gives the most blocks: in an epoch with fewer
      (or when that number is not a multiple of ``num_replicas``), the largest blocks, the latest
      in the order among equals, are split in two (each half still contiguous) until it is, so
      every rank gets the same number of batches each epoch; a few batches per epoch are then
      smaller than ``batch_size``. Needs at least that many samples per epoch.
    * ``drop_last=True``: the short blocks are dropped, and so are the last full blocks of the
      epoch's order beyond the fewest any phase gives, rounded down to a multiple of
      ``num_replicas``; every batch has ``batch_size`` samples and every rank the same number of
      batches each epoch. The dropped samples change from epoch to epoch.

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
        n, replicas, this_rank = _checked(dataset_or_len, batch_size, num_replicas, rank)
        full, rest = divmod(n, batch_size)
        moves = shuffle and min(batch_size, n) > 1  # a phase p > 0 is possible
        if drop_last:
            # a phase p > rest leaves one full block fewer
            per_rank = max(full - (moves and rest < batch_size - 1), 0) // replicas
        else:
            # a phase 0 < p < rest gives the most blocks: [0, p), the full ones, two short ones
            blocks = full + 1 + (rest > 1) if moves else full + (rest > 0)
            per_rank = -(-blocks // replicas)
            if per_rank * replicas > n:
                raise ValueError(
                    f"{n} samples cannot give each of num_replicas={replicas} ranks {per_rank} non-empty "
                    "batches with every sample exactly once; use drop_last=True, fewer ranks, or more samples"
                )
        overlap = getattr(dataset_or_len, "window_overlap", 0)
        if isinstance(overlap, int) and overlap > 0 and batch_size > 1:
            warnings.warn(
                f"BlockShuffleSampler batches consecutive windows, and these share {overlap} of their "
                f"{getattr(dataset_or_len, 'seq_len', '?')} input tokens each (stride < seq_len): a batch is "
                "nearly one stretch of text. Use LazyShuffleSampler (windows from anywhere, one gather "
                "per batch) or stride=seq_len (disjoint windows, batches stay views)",
                stacklevel=2,
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
        self._resume: tuple[int, list[list[int]]] | None = None  # (epoch, progress) loaded, not yet used
        self._chain: list[list[int]] = []  # the runs before this one of the current epoch, when resumed
        self._yielded = 0  # batches the current iteration has yielded

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
        return _as_runs(*self._blocks(self.epoch if epoch is None else epoch))

    def _blocks(self, epoch: int) -> tuple[_Ints, _Ints]:
        """The epoch's batches for all ranks, in order: starts and lengths (each batch one
        contiguous range). Arrays, so that a resumed epoch costs one permutation of the blocks
        and the few batches it yields, whatever ``n``."""
        n, b, replicas = self.n, self.batch_size, self.num_replicas
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        phase = int(rng.integers(0, min(b, n))) if rng is not None else 0
        starts = np.arange(phase, n, b, dtype=np.int64)
        if phase:
            starts = np.concatenate([np.zeros(1, np.int64), starts])
        lengths = np.diff(np.append(starts, n))
        if rng is not None:
            order = rng.permutation(starts.size)
            starts, lengths = starts[order], lengths[order]
        if self.drop_last:
            full = lengths == b
            starts, lengths = starts[full], lengths[full]
            keep = self._per_rank * replicas
            return starts[:keep], lengths[:keep]
        return _split_to(starts, lengths, self._per_rank * replicas)

    def rank_runs(self) -> list[list[tuple[int, int]]]:
        """This rank's batches of the current epoch, as runs; after :meth:`load_state_dict`, the
        rest of the interrupted epoch (once: the next epoch is whole again)."""
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            self._chain = resume[1]
            starts, lengths = _rest_of_epoch(self, resume[1])
        else:
            self._chain = []
            starts, lengths = self._blocks(self.epoch)
        step = self.num_replicas
        return _as_runs(starts[self.rank :: step], lengths[self.rank :: step])

    def __iter__(self) -> Iterator[list[int]]:
        self._yielded = 0
        for ((start, stop),) in self.rank_runs():  # every batch one run
            self._yielded += 1
            yield list(range(start, stop))

    # -- resuming -------------------------------------------------------------------------
    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this rank is in the epoch: plain ints, O(1) in the dataset size.

        ``batches_done``: batches of the epoch this rank has consumed; default, the batches the
        current iteration has yielded (a loader that prefetches has consumed fewer: a
        :class:`~zcopy_data.ZeroCopyDataLoader` passes its own count). ``progress`` lists
        ``[num_replicas, batches_done]`` per run of the epoch: more than one entry when the epoch
        was itself resumed on another number of ranks.
        """
        done = self._yielded if batches_done is None else int(batches_done)
        return {
            "version": 1,
            "n": self.n,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "epoch": int(self.epoch),  # a plain int, whatever marks the loader left on it
            "progress": [*self._chain, [self.num_replicas, done]],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration yield the rest of the saved epoch, then whole epochs as before.

        Every rank saves the same ``batches_done`` (DDP steps in lock-step), so the samples seen
        are the first ``batches_done * num_replicas`` batches of the epoch's order. With the same
        number of ranks, each rank resumes its own batches. With a different number (an elastic
        restart), the batches nobody saw are dealt to the new ranks in the same order; when
        their number is not a multiple of the new ``num_replicas``, the largest are split in two
        (each half still contiguous) until it is -- every unseen sample exactly once, every rank
        the same number of batches -- or, with ``drop_last=True``, the last few are dropped.
        """
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ResumeStateError(f"a BlockShuffleSampler state has version 1, found {state!r:.120}")
        for key in ("n", "batch_size", "shuffle", "seed", "drop_last"):
            if state.get(key) != getattr(self, key):
                raise ResumeStateError(
                    f"the state was saved by a BlockShuffleSampler with {key}={state.get(key)!r}, this one has "
                    f"{key}={getattr(self, key)!r}; build the sampler with the arguments of the saved run"
                )
        chain = [[int(w), int(d)] for w, d in state["progress"]]
        epoch = int(state["epoch"])
        _rest_of_epoch(self, chain, epoch)  # raises here, not at the first batch, when it does not fit
        self.epoch = epoch
        self._resume = (epoch, chain)


def _rest_of_epoch(
    sampler: BlockShuffleSampler, chain: list[list[int]], epoch: int | None = None
) -> tuple[_Ints, _Ints]:
    """The batches of ``epoch`` no rank has seen after the runs in ``chain``, for all of ``sampler``'s
    ranks (as :meth:`BlockShuffleSampler._blocks` gives them)."""
    epoch = sampler.epoch if epoch is None else epoch
    world = chain[0][0]
    first = BlockShuffleSampler(
        sampler.n, sampler.batch_size, sampler.shuffle, sampler.seed, sampler.drop_last, num_replicas=world, rank=0
    )
    starts, lengths = first._blocks(epoch)
    for i, (w, d) in enumerate(chain):
        if i and w != world:
            starts, lengths = _deal(starts, lengths, w, sampler.drop_last)
        world = w
        if not 0 <= d * w <= starts.size:
            raise ResumeStateError(
                f"batches_done={d} on {w} ranks is past the {starts.size // max(w, 1)} batches per rank left in "
                f"epoch {epoch}; the state does not belong to this sampler"
            )
        starts, lengths = starts[d * w :], lengths[d * w :]
    if world != sampler.num_replicas:
        starts, lengths = _deal(starts, lengths, sampler.num_replicas, sampler.drop_last)
    return starts, lengths


def _deal(starts: _Ints, lengths: _Ints, ranks: int, drop_last: bool) -> tuple[_Ints, _Ints]:
    """The batches made a multiple of ``ranks`` many: the largest split in two, or (``drop_last``) the last dropped."""
    if drop_last:
        keep = starts.size - starts.size % ranks
        return starts[:keep], lengths[:keep]
    target = -(-starts.size // ranks) * ranks
    if int(lengths.sum()) < target:
        raise ResumeStateError(
            f"the {int(lengths.sum())} samples left in the epoch cannot give each of {ranks} ranks the same "
            "number of non-empty batches; resume with fewer ranks or at the next epoch"
        )
    return _split_to(starts, lengths, target)


def _split_to(starts: _Ints, lengths: _Ints, target: int) -> tuple[_Ints, _Ints]:
    """Split the largest batch (the latest in the order among equals) in two halves, each still
    one range, until there are ``target`` batches (the caller checks there are enough samples)."""
    if starts.size >= target:
        return starts, lengths
    starts, lengths = starts.copy(), lengths.copy()
    while starts.size < target:
        pos = lengths.size - 1 - int(np.argmax(lengths[::-1]))
        length = int(lengths[pos])
        half = length // 2
        lengths[pos] = length - half
        starts = np.insert(starts, pos + 1, starts[pos] + length - half)
        lengths = np.insert(lengths, pos + 1, half)
    return starts, lengths


def _as_runs(starts: _Ints, lengths: _Ints) -> list[list[tuple[int, int]]]:
    """Batches as lists of ``(start, stop)`` runs (one run each)."""
    return [[(a, a + n)] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]


class LazyShuffleSampler(Sampler[list[int]]):
    """A batch sampler over a shuffled order computed by arithmetic: no index array, at any size.

    ``RandomSampler`` builds ``torch.randperm(n)`` before the first batch: ``8 n`` bytes and a pass
    over them (160 MB and up to a second for 20M token windows). Here each epoch's order is a
    keyed pseudo-random permutation of ``range(n)`` (:mod:`zcopy_data._permutation`), drawn by
    ``(seed, epoch)`` and computed a few thousand positions at a time: the first batch costs the
    same for 1,000 samples as for 10**9, every sample appears once per epoch, and a resumed epoch
    starts at any batch by arithmetic. Batches are int64 arrays, so a columnar dataset gathers
    each in one vectorised copy.

    Across ranks it splits the order as ``DistributedSampler`` does: the order is padded (by
    repeating its start) to a multiple of ``num_replicas``, or cut to one with
    ``drop_last=True``, and rank ``r`` takes positions ``r, r + R, ...``; its positions are then
    batched, the last batch shorter unless ``drop_last``.

    Args:
        dataset_or_len: the dataset (anything with ``len``) or its length.
        batch_size: samples per batch.
        shuffle: False yields each rank's positions in order (no permutation).
        seed: base seed; the order depends on ``(seed, epoch)`` only, the same on every rank.
        drop_last: drop the samples that do not fill a batch (and those beyond a multiple of
            ``num_replicas``).
        num_replicas, rank: default from ``torch.distributed`` when it is initialised, else 1 and 0.

    >>> s = LazyShuffleSampler(10, 4, seed=0)
    >>> sorted(i for batch in s for i in batch)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> len(s), [len(b) for b in s]
    (3, [4, 4, 2])
    """

    _CHUNK = 32768  # positions permuted per call: amortises NumPy's per-call cost, and stays in cache

    def __init__(
        self,
        dataset_or_len: Sized | int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        n, replicas, this_rank = _checked(dataset_or_len, batch_size, num_replicas, rank)
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = replicas
        self.rank = this_rank
        self.epoch = 0
        per_rank = n // replicas if drop_last else -(-n // replicas)
        self._positions = per_rank  # positions this rank takes per epoch
        self._batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next ``iter()`` yields (call it before every epoch)."""
        self.epoch = int(epoch)

    @property
    def sampler(self) -> LazyShuffleSampler:
        """Itself: Lightning (and others) call ``loader.batch_sampler.sampler.set_epoch(epoch)``."""
        return self

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._batches

    def batches(self, skip: int = 0) -> Iterator[_Ints]:
        """This rank's batches of the current epoch from batch ``skip`` on, as int64 arrays."""
        n, size = self.n, self.batch_size
        if n == 0:
            return
        perm = Permutation(n, seed=self.seed, epoch=int(self.epoch)) if self.shuffle else None
        stop = self._batches * size if self.drop_last else self._positions
        per_chunk = max(1, self._CHUNK // size) * size
        for lo in range(skip * size, stop, per_chunk):
            hi = min(lo + per_chunk, stop)
            positions = np.arange(lo, hi, dtype=np.int64) * self.num_replicas + self.rank
            positions %= n  # the padding repeats the order's start, as DistributedSampler's does
            values = perm[positions] if perm is not None else positions
            for b in range(0, hi - lo, size):
                yield values[b : b + size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield batch.tolist()
