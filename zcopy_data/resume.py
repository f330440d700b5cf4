"""Where a loader is in its epochs, and how a fresh loader takes up from there: a cursor, not a replay.

A loader's state is small and plain (ints, bools, strings, the ``uint8`` state tensors of the
generators that draw its order): ``torch.save`` / ``torch.load(weights_only=True)`` round-trip it.
Taken after ``k`` batches of an epoch were consumed, it records the generators' states *where the
epoch's sampler began drawing* (after the iterator's worker seed, which persistent workers do not
draw again) and ``k``; loaded into a loader built with the same arguments, the next epoch
that loader starts re-draws the same order (the same draws from the same generator states) and
begins at batch ``k + 1`` by index arithmetic (:mod:`zcopy_data._index_batches`): no sample of a
skipped batch is read, and the generators end the epoch where the uninterrupted run's did, so later
epochs match too. Taken between epochs, it records the generators' states as they are; taken after
an epoch's last batch, before its end was met, it resumes at the next epoch. Ranks step together,
so one rank's state (Lightning checkpoints rank 0's) resumes every rank.

Samplers drawing from PyTorch's global generator (``shuffle=True`` without a ``generator``): the
resumed epoch is drawn from the global state saved with it and the caller's global state is put
back afterwards; later epochs draw from the global generator as ``DataLoader`` always does, so
they match the uninterrupted run only where that generator is restored too. Pass a
``generator`` for runs whose every epoch is reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from zcopy_data._index_batches import index_batches, known_order
from zcopy_data.errors import ResumeStateError
from zcopy_data.samplers import BlockShuffleSampler, LazyShuffleSampler

__all__ = ["STATE_VERSION", "LoaderProgress", "describe_loader"]

STATE_VERSION = 1


def _inner_sampler(loader: DataLoader[Any]) -> Any:
    bs = loader.batch_sampler
    return getattr(bs, "sampler", None) if bs is not None else loader.sampler


def describe_loader(loader: DataLoader[Any]) -> dict[str, Any]:
    """What a state must agree with: dataset length, batching, sampler kind and its parameters."""
    bs = loader.batch_sampler
    inner = _inner_sampler(loader)
    kind = type(bs).__name__ if bs is not None else "none"
    if inner is not None and inner is not bs:
        kind += f"({type(inner).__name__})"
    out: dict[str, Any] = {
        "dataset_len": None if isinstance(loader.dataset, IterableDataset) else len(loader.dataset),  # type: ignore[arg-type]
        "batch_size": loader.batch_size if bs is None or hasattr(bs, "batch_size") else None,
        "drop_last": bool(getattr(bs, "drop_last", loader.drop_last)),
        "sampler": kind,
    }
    if isinstance(bs, (BlockShuffleSampler, LazyShuffleSampler)):
        out["batch_size"] = bs.batch_size
    if isinstance(bs, LazyShuffleSampler):  # its order is its parameters: a resume skips by arithmetic
        out.update(seed=bs.seed, shuffle=bs.shuffle, num_replicas=bs.num_replicas, rank=bs.rank)
    for attr in ("seed", "shuffle", "num_replicas", "rank", "replacement"):
        if inner is not None and not isinstance(inner, BlockShuffleSampler) and hasattr(inner, attr):
            out[attr] = getattr(inner, attr)
    return out


def _generators(loader: DataLoader[Any]) -> dict[str, torch.Generator]:
    """The generators that draw the loader's order and seeds, by role (one object counted once)."""
    out: dict[str, torch.Generator] = {}
    if isinstance(loader.generator, torch.Generator):
        out["loader"] = loader.generator
    inner = getattr(_inner_sampler(loader), "generator", None)
    if isinstance(inner, torch.Generator) and inner is not loader.generator:
        out["sampler"] = inner
    return out


def _uses_global_rng(loader: DataLoader[Any]) -> bool:
    """The epoch's order comes from PyTorch's global generator (a random sampler without one)."""
    inner = _inner_sampler(loader)
    return known_order(loader.batch_sampler) == "random" and getattr(inner, "generator", None) is None


def _sampler_epoch(loader: DataLoader[Any]) -> int | None:
    for s in (loader.batch_sampler, _inner_sampler(loader)):
        epoch = getattr(s, "epoch", None)
        if isinstance(epoch, int) and hasattr(s, "set_epoch"):
            return int(epoch)
    return None


class _Used(int):
    """A sampler's epoch once an epoch drawn with it handed out a batch: ``set_epoch`` replaces it
    with a plain ``int``, so at the next epoch's start the loader knows whether it was called since."""

    __slots__ = ()


def _epoch_sampler(loader: DataLoader[Any]) -> Any:
    for s in (loader.batch_sampler, _inner_sampler(loader)):
        if isinstance(getattr(s, "epoch", None), int) and hasattr(s, "set_epoch"):
            return s
    return None


def advance_unset_epoch(loader: DataLoader[Any]) -> Any:
    """At an epoch's start: a sampler whose ``set_epoch`` was not called since an earlier epoch
    handed out batches is moved on by one, so each epoch gets a new order (a ``DistributedSampler``
    or ``BlockShuffleSampler`` left alone would repeat its first one). Returns the sampler, to mark
    at the epoch's first batch: an iterator made and dropped unused (Lightning checks that a
    loader is iterable that way) uses up no epoch."""
    s = _epoch_sampler(loader)
    if s is not None and type(s.epoch) is _Used:
        s.set_epoch(int(s.epoch) + 1)
    return s


def _mark_used(sampler: Any) -> None:
    if type(sampler.epoch) is not _Used:
        try:
            sampler.epoch = _Used(sampler.epoch)
        except (AttributeError, TypeError):  # a read-only epoch: the sampler keeps its own count
            pass


def _next_epoch_advances(loader: DataLoader[Any]) -> bool:
    s = _epoch_sampler(loader)
    return s is not None and type(s.epoch) is _Used


def _next_sampler_epoch(loader: DataLoader[Any]) -> int | None:
    """The sampler's epoch for the next epoch if nobody calls ``set_epoch`` before it."""
    epoch = _sampler_epoch(loader)
    return None if epoch is None else epoch + _next_epoch_advances(loader)


def _set_sampler_epoch(loader: DataLoader[Any], epoch: int) -> None:
    for s in (loader.batch_sampler, _inner_sampler(loader)):
        if s is not None and hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
            return


class LoaderProgress:
    """The batches a loader's current epoch has handed out, and a loaded state waiting for its epoch."""

    def __init__(self) -> None:
        self.done = 0  # batches of the current epoch handed to the consumer
        self.in_epoch = False  # an epoch was started and has not ended
        self._start: dict[str, Any] = {}  # generator states etc. when the current epoch began
        self._pending: dict[str, Any] | None = None
        self._offset = 0  # batches of the epoch done before this iteration (a resumed epoch)
        self._warned_replay = False
        self._epochs = 0  # epochs this loader has started
        self._at_draws: dict[str, Any] | None = None  # a state to apply when the sampler starts drawing
        self._restore_global: torch.Tensor | None = None
        self._sampler: Any = None  # the sampler whose epoch this epoch uses, marked at its first batch

    # -- counting ---------------------------------------------------------------------------
    def counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches``, counting each one handed out and the end of the epoch."""
        return _Counted(batches, self)

    # -- an epoch begins -------------------------------------------------------------------
    @contextmanager
    def epoch(self, loader: DataLoader[Any]) -> Iterator[int]:
        """Around building an epoch's iterator: apply a loaded state, note the epoch's start, and
        give the batches to skip. The epoch's index draws (:meth:`begin_draws`) happen inside."""
        pending, self._pending = self._pending, None
        skip = offset = 0
        self._restore_global = None
        self._at_draws = None
        if pending is not None:
            if not pending["in_epoch"]:
                if pending["seed_drawn"]:
                    _load_generators(loader, pending["generators"])  # before the iterator's seed, as it was
                else:
                    # persistent workers drew no seed for the next epoch: the one this iterator
                    # draws first is undone (the global generator's too, when it drew from it)
                    undo = torch.get_rng_state() if loader.generator is None else None
                    self._at_draws = {**pending, "global_rng": undo}
            else:
                saved_epoch, now_epoch = pending["sampler_epoch"], _sampler_epoch(loader)
                if saved_epoch is not None and now_epoch != saved_epoch:
                    warnings.warn(
                        f"the loader state was taken in epoch {saved_epoch}, but this epoch is {now_epoch} "
                        "(set_epoch was called with another epoch): it starts at its first batch",
                        stacklevel=4,
                    )
                else:
                    offset = int(pending["batches_done"])
                    # a BlockShuffleSampler deals the rest of its epoch itself; others start at a batch
                    skip = 0 if isinstance(loader.batch_sampler, BlockShuffleSampler) else offset
                    self._at_draws = pending
                    if skip and known_order(loader.batch_sampler) is None and not self._warned_replay:
                        self._warned_replay = True
                        source = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
                        warnings.warn(
                            f"{type(source).__name__} has no known order: resuming draws its first {skip} "
                            "index batches again and drops them (no sample is read); give it "
                            "state_dict()/load_state_dict() or use a PyTorch sampler for a resume by arithmetic",
                            stacklevel=4,
                        )
        self._sampler = advance_unset_epoch(loader)  # a loaded state set the epoch: nothing moves then
        self._start = {
            "generators": _generator_states(loader),
            "global_rng": torch.get_rng_state() if _uses_global_rng(loader) else None,
            "sampler_epoch": _sampler_epoch(loader),
        }
        self.done, self.in_epoch, self._offset = offset, True, offset
        self._epochs += 1
        try:
            yield skip
        finally:
            if self._restore_global is not None:
                torch.set_rng_state(self._restore_global)
                self._restore_global = None

    def begin_draws(self, loader: DataLoader[Any]) -> None:
        """Called as the epoch's sampler starts drawing, after the iterator drew its worker seed:
        a resumed epoch's generators are set here, and the states recorded are the ones here, so
        the order is the same whether or not the iterator drew a seed (persistent workers do not)."""
        pending, self._at_draws = self._at_draws, None
        if pending is not None:
            _load_generators(loader, pending["generators"])
            if pending["global_rng"] is not None:
                if pending["in_epoch"]:
                    self._restore_global = torch.get_rng_state()
                torch.set_rng_state(pending["global_rng"])
        if self._start:
            self._start["generators"] = _generator_states(loader)
            if self._start["global_rng"] is not None:
                self._start["global_rng"] = torch.get_rng_state()

    # -- state -----------------------------------------------------------------------------
    def state_dict(self, loader: DataLoader[Any], consumed: int | None = None) -> dict[str, Any]:
        """The loader's state now (``consumed``: batches of the epoch its consumer has used, when
        fewer than were handed out -- a consumer that prefetches)."""
        if self._pending is not None:
            return dict(self._pending)  # loaded, not yet used: still the same position
        done, mid = self.done, self.in_epoch
        if consumed is not None and self._start:
            # a consumer that fetches ahead has used fewer: even all but the last, when the epoch
            # has already ended for the loader
            used = max(int(consumed), self._offset)
            if used < done:
                done, mid = used, True
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "loader": describe_loader(loader),
            "in_epoch": mid,
            "batches_done": done if mid else 0,
            "generators": self._start["generators"] if mid else _generator_states(loader),
            "global_rng": self._start["global_rng"] if mid else None,
            # between epochs, the epoch the next one uses: one more when the loader would move it on
            "sampler_epoch": self._start["sampler_epoch"] if mid else _next_sampler_epoch(loader),
            "epoch_advances": _next_epoch_advances(loader),
            "sampler_state": None,
            # whether the next epoch's iterator draws a worker seed first (persistent workers, once
            # started, do not): where a between-epochs state's generators are set
            "seed_drawn": mid or not (loader.persistent_workers and self._epochs > 0),
        }
        bs = loader.batch_sampler
        if isinstance(bs, BlockShuffleSampler):
            # the sampler's own progress counts this iteration's batches: a resumed one lists the
            # earlier runs of the epoch before it
            state["sampler_state"] = bs.state_dict(batches_done=done - self._offset if mid else 0)
            if mid:
                state["sampler_state"]["epoch"] = self._start["sampler_epoch"]
            else:
                state["sampler_state"]["progress"] = [[bs.num_replicas, 0]]
                state["sampler_state"]["epoch"] = state["sampler_epoch"]
        return state

    def load_state_dict(self, loader: DataLoader[Any], state: dict[str, Any]) -> None:
        """Check ``state`` against ``loader`` and keep it for the loader's next epoch."""
        if not isinstance(state, dict):
            raise ResumeStateError(f"a loader state is a dict, found {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION:
            raise ResumeStateError(
                f"loader state version {version!r} is not one this zcopy_data reads (version {STATE_VERSION})"
            )
        missing = {
            "loader", "in_epoch", "batches_done", "generators", "global_rng", "sampler_epoch", "seed_drawn"
        } - set(state)
        if missing:
            raise ResumeStateError(f"the loader state lacks {sorted(missing)}; it was not made by state_dict()")
        mine = describe_loader(loader)
        saved_loader = state["loader"] if isinstance(state["loader"], dict) else {}
        for key in [*mine, *(k for k in saved_loader if k not in mine)]:  # the sampler kind before its details
            if key == "num_replicas" and isinstance(loader.batch_sampler, BlockShuffleSampler):
                continue  # an elastic resume: the sampler deals the rest to this many ranks
            if key == "rank":
                continue  # ranks step together: one rank's state (Lightning saves rank 0's) resumes them all
            saved, now = saved_loader.get(key), mine.get(key)
            if saved != now:
                raise ResumeStateError(
                    f"the state was saved by a loader with {key}={saved!r}, this loader has {key}={now!r}; "
                    "build the loader with the arguments of the saved run"
                )
        if isinstance(loader.dataset, IterableDataset) and state["batches_done"]:
            raise ResumeStateError(
                "an IterableDataset's position is its own: a loader cannot skip into it; give the dataset "
                "state_dict()/load_state_dict() and resume it directly"
            )
        roles = set(_generators(loader))
        if set(state["generators"]) != roles:
            raise ResumeStateError(
                f"the state holds generator states for {sorted(state['generators'])}, this loader draws from "
                f"{sorted(roles)}; pass the same generator= arguments as the saved run"
            )
        done = int(state["batches_done"])
        if not 0 <= done <= len(loader):
            raise ResumeStateError(f"batches_done={done} is outside this loader's {len(loader)} batches per epoch")
        bs = loader.batch_sampler
        past_the_end = state["in_epoch"] and done == len(loader)
        if state["sampler_epoch"] is not None:
            # a state at an epoch's last batch resumes at the next epoch: the one the run would use
            advance = past_the_end and bool(state.get("epoch_advances", False))
            _set_sampler_epoch(loader, int(state["sampler_epoch"]) + advance)
        if past_the_end:
            # every batch was consumed, the end not yet met: a state between epochs, once the
            # epoch's draws are made (indices only, nothing read)
            state = _past_the_end(loader, state)
        elif isinstance(bs, BlockShuffleSampler):
            if state.get("sampler_state") is None:
                raise ResumeStateError("the state holds no BlockShuffleSampler position")
            bs.load_state_dict(state["sampler_state"])  # the sampler deals the rest of the epoch itself
        self._pending = dict(state)


def _past_the_end(loader: DataLoader[Any], state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (all of its epoch consumed) as the state between that epoch and the next."""
    _load_generators(loader, state["generators"])
    source = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    if not isinstance(source, BlockShuffleSampler):  # its order is (seed, epoch): it draws nothing
        restore = None
        if state["global_rng"] is not None:
            restore = torch.get_rng_state()
            torch.set_rng_state(state["global_rng"])
        try:
            for _ in index_batches(source) if known_order(source) is not None else iter(source):
                pass
        finally:
            if restore is not None:
                torch.set_rng_state(restore)
    return {
        **state,
        "in_epoch": False,
        "batches_done": 0,
        "generators": _generator_states(loader),
        "global_rng": None,
        "seed_drawn": not loader.persistent_workers,  # the saving loader's workers were running
    }


def _generator_states(loader: DataLoader[Any]) -> dict[str, torch.Tensor]:
    return {k: g.get_state() for k, g in _generators(loader).items()}


def _load_generators(loader: DataLoader[Any], states: dict[str, torch.Tensor]) -> None:
    for role, g in _generators(loader).items():
        g.set_state(states[role])


class _Counted(Iterator[Any]):
    """An epoch's iterator that counts what it hands out."""

    __slots__ = ("_it", "_progress")

    def __init__(self, it: Iterator[Any], progress: LoaderProgress) -> None:
        self._it = it
        self._progress = progress

    def __iter__(self) -> _Counted:
        return self

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        progress = self._progress
        try:
            batch = next(self._it)
        except StopIteration:
            progress.in_epoch = False
            raise
        done = progress.done = progress.done + 1
        if done == progress._offset + 1 and progress._sampler is not None:
            _mark_used(progress._sampler)  # this epoch's order is used: the next one needs another
        return batch
