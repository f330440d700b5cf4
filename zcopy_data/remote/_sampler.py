"""``ShardShuffleSampler``: shuffled batches that read a few shards at a time, each rank its own shards.

Shards are dealt to ranks once per seed (shuffled, each to the rank with the fewest rows), so a
rank reads the same shards every epoch and its cache stays warm. Each epoch a rank's shards are
shuffled, taken ``window`` at a time, and the samples of each window shuffled together: at any
point of the epoch a rank reads from at most ``window`` shards, and the shards that come next
are known ahead (:meth:`ShardShuffleSampler.shard_order`), so they can be downloaded in time.
The order is a function of ``(seed, epoch, rank)``; a resume is ``(epoch, batches done)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from zcopy_data.errors import ResumeStateError
from zcopy_data.samplers import _dist_default

__all__ = ["ShardShuffleSampler"]

_Ints = np.ndarray[Any, np.dtype[np.int64]]
_KEYS = ("shard_rows", "batch_size", "window", "seed", "num_replicas", "rank", "drop_last", "local")


def deal_shards(shard_rows: _Ints, num_replicas: int, seed: int) -> list[list[int]]:
    """Each rank's shards: a seeded shuffle dealt to the rank with the fewest rows so far."""
    order = np.random.default_rng([seed, 0]).permutation(shard_rows.size)
    loads = [0] * num_replicas
    dealt: list[list[int]] = [[] for _ in range(num_replicas)]
    for s in order.tolist():
        r = min(range(num_replicas), key=lambda k: (loads[k], k))
        dealt[r].append(s)
        loads[r] += int(shard_rows[s])
    return [sorted(d) for d in dealt]


class ShardShuffleSampler(Sampler[list[int]]):
    """A batch sampler over shards: each rank reads only its shards, ``window`` shards at a time.

    Args:
        shard_rows: rows of every shard, in dataset order.
        batch_size: samples per batch.
        window: shards whose samples are shuffled together (and read at once).
        seed: the seed of the dealing and of every epoch's order.
        num_replicas, rank: the DDP world (default: ``torch.distributed``'s, else one rank).
        drop_last: every rank yields the same number of full batches (what DDP needs); the
            samples past it are left out. Without it, every sample is yielded exactly once and
            ranks may yield different numbers of batches.
        local: yield positions in this rank's shards only (concatenated in :attr:`rank_shards`
            order), for a dataset built from those shards alone; default, global indices.

    Pass it as ``batch_sampler=``; call :meth:`set_epoch` before every epoch.
    """

    def __init__(
        self,
        shard_rows: Sequence[int],
        batch_size: int,
        *,
        window: int = 2,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        local: bool = False,
    ) -> None:
        rows = np.asarray(list(shard_rows), dtype=np.int64)
        if rows.ndim != 1 or (rows < 0).any():
            raise ValueError(f"shard_rows={list(shard_rows)[:8]} should be a list of row counts >= 0")
        if batch_size < 1:
            raise ValueError(f"{batch_size=} should be >= 1")
        if window < 1:
            raise ValueError(f"{window=} should be >= 1")
        self.num_replicas = _dist_default(num_replicas, "num_replicas")
        self.rank = _dist_default(rank, "rank")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank={self.rank} should be in [0, {self.num_replicas})")
        self.shard_rows = rows
        self.batch_size, self.window, self.seed = batch_size, window, int(seed)
        self.drop_last, self.local = drop_last, local
        self.epoch = 0
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        dealt = deal_shards(rows, self.num_replicas, self.seed)
        self.rank_shards: list[int] = dealt[self.rank]
        """This rank's shards, ascending: the only ones it reads."""
        local_sizes = rows[self.rank_shards] if self.rank_shards else np.zeros(0, np.int64)
        self._local_starts = dict(
            zip(self.rank_shards, np.concatenate([[0], np.cumsum(local_sizes)])[:-1].tolist(), strict=True)
        )
        self.rank_rows = int(local_sizes.sum())
        fewest = min(int(rows[d].sum()) if d else 0 for d in dealt)
        self._len = fewest // batch_size if drop_last else math.ceil(self.rank_rows / batch_size)
        self._resume: tuple[int, int] | None = None
        self._yielded = 0

    @property
    def sampler(self) -> ShardShuffleSampler:
        """Itself: Lightning (and others) call ``loader.batch_sampler.sampler.set_epoch(epoch)``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next ``iter()`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return self._len

    def shard_order(self, epoch: int | None = None) -> list[int]:
        """This rank's shards in the order the epoch reads them (what to download next)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        return [self.rank_shards[k] for k in rng.permutation(len(self.rank_shards)).tolist()]

    def indices(self, epoch: int | None = None) -> _Ints:
        """The epoch's sample order for this rank, window after window (global or local indices)."""
        epoch = self.epoch if epoch is None else epoch
        order = self.shard_order(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank, 2])
        parts = []
        for g in range(0, len(order), self.window):
            group = order[g : g + self.window]
            idx = np.concatenate([self._first(s) + np.arange(self.shard_rows[s], dtype=np.int64) for s in group])
            rng.shuffle(idx)
            parts.append(idx)
        out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return out[: self._len * self.batch_size] if self.drop_last else out

    def _first(self, s: int) -> int:
        return self._local_starts[s] if self.local else int(self.starts[s])

    def __iter__(self) -> Iterator[list[int]]:
        resume, self._resume = self._resume, None
        first = resume[1] if resume is not None and resume[0] == self.epoch else 0
        order = self.indices()
        b = self.batch_size
        self._yielded = first
        for k in range(first, self._len):
            self._yielded = k + 1
            yield order[k * b : (k + 1) * b].tolist()

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this rank is: the epoch and the batches done (default: those yielded so far)."""
        done = self._yielded if batches_done is None else int(batches_done)
        state: dict[str, Any] = {"version": 1, "epoch": self.epoch, "batches_done": done}
        for key in _KEYS:
            value = getattr(self, key)
            state[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration yield the rest of the saved epoch (each sample once), then whole epochs."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ResumeStateError(f"a ShardShuffleSampler state has version 1, found {state!r:.120}")
        for key in _KEYS:
            ours = getattr(self, key)
            ours = ours.tolist() if isinstance(ours, np.ndarray) else ours
            if state.get(key) != ours:
                raise ResumeStateError(
                    f"the state was saved by a ShardShuffleSampler with {key}={state.get(key)!r:.80}, this one has "
                    f"{key}={ours!r:.80}; build the sampler with the arguments (and world size) of the saved run"
                )
        done = int(state["batches_done"])
        if not 0 <= done <= self._len:
            raise ResumeStateError(f"batches_done={done} should be in [0, {self._len}] for this sampler")
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, done)
