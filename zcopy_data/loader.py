"""``ZeroCopyDataLoader``: a ``DataLoader`` whose workers cost nothing but the gather.

A columnar zero-copy dataset assembles a batch with one view or one ``index_select`` per field:
kernels that release the GIL. Worker *processes* add nothing to that work but inter-process
traffic -- an index message out, a handle or descriptor back, each a wake-up of another process
-- which on a small machine costs more than the gather it parallelises. So for such datasets
``num_workers=N`` runs ``N`` gather threads in this process instead (``worker_mode="auto"``):

* batches that are views (contiguous indices) are built in the calling thread when their turn
  comes, with no hand-off at all: what they cost without workers, so workers are never slower;
* gathered batches are assembled by the threads, ``num_workers * prefetch_factor`` batches ahead,
  into reused buffers (pinned when an accelerator is present), and handed over in sampler order
  (in a stream of mostly views, a lone gather is built in its turn too: a thread would have to
  wait for the GIL, which the calling thread holds while it builds views);
* ``timeout``, ``persistent_workers``, ``pin_memory`` and ``prefetch_factor`` mean what they mean
  for ``DataLoader``; an error raised while assembling a batch is raised here, unchanged.

Anything else -- per-sample datasets, a ``worker_init_fn``, a ``multiprocessing_context``, a
collate other than :func:`zero_copy_collate`, ``worker_mode="processes"`` -- gets PyTorch's
worker processes, where :mod:`zcopy_data.collate` still sends batches as handles and descriptors.

With no workers and with gather threads, the loader iterates itself, on ``DataLoader``'s public
attributes only (``dataset``, ``batch_sampler``, ``sampler``, ``collate_fn``, ``pin_memory``,
``timeout``, ``prefetch_factor``, ``persistent_workers``, ``generator``), drawing the same seed
from the same generator at the same moment as PyTorch's iterator, so a seeded run's order and
RNG state are the same. Index batches of PyTorch's sequential and random batch samplers and of
:class:`~zcopy_data.samplers.BlockShuffleSampler` are produced as int64 arrays, in the same order
as the samplers' own lists (see :mod:`zcopy_data._index_batches`). Worker processes and iterable
datasets are PyTorch's own iterator, unchanged.

Batches assembled in this process get the loader's own allocation (pinned with an accelerator,
else a host pool sized for the look-ahead, freed with the loader), or the one a device stage
hands down through :meth:`ZeroCopyDataLoader.host_batches`.
"""

from __future__ import annotations

import functools
import itertools
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_convert

from zcopy_data._accelerator import accelerator
from zcopy_data._batch_groups import build_group, group_size
from zcopy_data._index_batches import index_batches, known_order
from zcopy_data._requests import BatchRequest
from zcopy_data._tree import map_tensors
from zcopy_data.collate import zero_copy_collate
from zcopy_data.datasets.base import ZeroCopyDataset
from zcopy_data.ledger import record_all
from zcopy_data.memory.policy import Allocation, GatherThreadAllocation, main_process_allocation
from zcopy_data.memory.shared import PoolConfig
from zcopy_data.resume import LoaderProgress

__all__ = ["WorkerMode", "ZeroCopyDataLoader"]

WorkerMode = Literal["auto", "threads", "processes"]
_MODES = ("auto", "threads", "processes")


class ZeroCopyDataLoader(DataLoader[Any]):
    """``DataLoader`` with :func:`zero_copy_collate` by default and gather threads as workers.

    Takes every ``DataLoader`` argument, plus:

    Args:
        worker_mode: ``"auto"`` (threads when the dataset's batches are GIL-free kernels, see
            :attr:`ZeroCopyDataset.threads_suffice`, the collate is :func:`zero_copy_collate` and
            no ``worker_init_fn`` / ``multiprocessing_context`` is given; processes otherwise),
            ``"threads"`` or ``"processes"``.
        consumed_batches: for a consumer that fetches ahead (Lightning's loop holds one batch):
            how many batches of the current epoch it has used, or ``None`` when it cannot tell;
            :meth:`state_dict` is taken at that position rather than at the batches handed out.
            :class:`~zcopy_data.lightning.ZeroCopyDataModule` passes its trainer's count.

    :meth:`state_dict` / :meth:`load_state_dict` resume an epoch where it was left, as
    torchdata's ``StatefulDataLoader`` does, by index arithmetic (see :mod:`zcopy_data.resume`).

    With ``batch_size=None`` (no batching) and no ``collate_fn``, samples are converted with
    ``default_convert``, as ``DataLoader`` does.

    >>> import numpy as np
    >>> from zcopy_data import NumpyDataset
    >>> ds = NumpyDataset({"x": np.arange(1000, dtype=np.float32)})
    >>> loader = ZeroCopyDataLoader(ds, batch_size=100, shuffle=True, num_workers=2)
    >>> loader.uses_threads, sum(len(b["x"]) for b in loader)
    (True, 1000)
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        *,
        worker_mode: WorkerMode = "auto",
        consumed_batches: Callable[[], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        if worker_mode not in _MODES:
            raise ValueError(f"worker_mode={worker_mode!r} should be one of {', '.join(map(repr, _MODES))}")
        self.worker_mode: WorkerMode = worker_mode  # before DataLoader's checks, which read it
        if collate_fn is None:
            batched = batch_size is not None or batch_sampler is not None
            collate_fn = zero_copy_collate if batched else default_convert
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            **kwargs,
        )
        self._threads: _ThreadBatches | None = None  # the persistent gather threads, when kept
        self._allocation: Allocation | None = None  # this loader's buffers, built at first use
        self.consumed_batches = consumed_batches
        self._progress = LoaderProgress()
        # what worker processes are sent
        self._resumable = _ResumableIndices(self._index_source(), lambda: self._progress.begin_draws(self))
        if worker_mode == "threads" and self.num_workers > 0:
            why = self._why_not_threads(strict=True)
            if why:
                raise ValueError(f"worker_mode='threads' {why}; use worker_mode='processes'")

    def _why_not_threads(self, strict: bool = False) -> str | None:
        """Why the workers must be processes (``None``: threads will do)."""
        if isinstance(self.dataset, IterableDataset) or self.batch_sampler is None:
            return "needs a map-style dataset and batches (batch_size or batch_sampler)"
        if self.worker_init_fn is not None:
            return "cannot run a worker_init_fn, which expects a worker process"
        if self.multiprocessing_context is not None:
            return "cannot honour a multiprocessing_context"
        if strict:
            return None
        ds = self.dataset
        if not (isinstance(ds, ZeroCopyDataset) and ds.threads_suffice):
            return "needs a dataset whose batches are GIL-free kernels"
        if not _is_zero_copy_collate(self.collate_fn):
            return "needs zero_copy_collate"
        return None

    @property
    def uses_threads(self) -> bool:
        """True when this loader's workers are gather threads in this process."""
        if self.num_workers == 0 or self.worker_mode == "processes":
            return False
        return self.worker_mode == "threads" or self._why_not_threads() is None

    def check_worker_number_rationality(self) -> None:
        """PyTorch's warning about more worker processes than CPUs, for worker processes only."""
        if not self.uses_threads:
            super().check_worker_number_rationality()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self.track(self.host_batches())

    def host_batches(self, allocation: Allocation | None = None) -> Iterator[Any]:
        """One epoch of batches, assembled in this process with ``allocation`` (default: the loader's).

        A device stage that copies every batch itself passes an exact-size pinned allocation
        here, and hands its own output to :meth:`track`. Worker processes and iterable datasets
        ignore the allocation: their batches come from PyTorch's own iterator (shared memory,
        sent as handles and descriptors). A loaded state takes effect here, at the epoch's start.
        """
        with self._progress.epoch(self) as skip:
            return self._epoch(allocation, skip)

    def _epoch(self, allocation: Allocation | None, skip: int) -> Iterator[Any]:
        if isinstance(self.dataset, IterableDataset) or (self.num_workers > 0 and not self.uses_threads):
            if self.num_workers > 0:
                PoolConfig.from_env()  # a bad ZCOPY_DATA_WORKER_SHM_* is reported here, naming it
            self._resumable.skip = skip  # taken by the iterator's iter(self._index_sampler)
            try:
                return super().__iter__()
            finally:
                self._resumable.skip = 0
        alloc = allocation if allocation is not None else self._own_allocation()
        if self.num_workers == 0:
            return _Batches(self, alloc, skip)
        alloc = GatherThreadAllocation(alloc)  # num_workers threads gather, one thread each
        if self.persistent_workers and self._threads is not None:
            self._threads.next_epoch(self, alloc, skip)
            return self._threads
        threads = _ThreadBatches(self, alloc, skip)
        if self.persistent_workers:
            self._threads = threads
        return threads

    def track(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches`` (this loader's epoch, as a stage over :meth:`host_batches` hands them on),
        counting each one the consumer receives: the position :meth:`state_dict` records."""
        return self._progress.counted(batches)

    # -- resuming ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: after ``k`` batches of an epoch, a fresh loader built with the
        same arguments that loads this state yields batches ``k + 1...`` of that epoch, then the
        same later epochs. Small (no index lists) and plain: ``torch.save`` /
        ``torch.load(weights_only=True)`` round-trip it."""
        consumed = self.consumed_batches() if self.consumed_batches is not None else None
        return self._progress.state_dict(self, consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state`` (see :meth:`state_dict`) at the next ``iter()``.

        Raises:
            ResumeStateError: the state was saved by a loader with other arguments (dataset
                length, batch size, sampler kind, seed...), naming both values.
        """
        self._progress.load_state_dict(self, state)

    def _index_source(self) -> Any:
        return self.batch_sampler if self.batch_sampler is not None else self.sampler

    # Not public: DataLoader's iterators take their indices from ``loader._index_sampler``
    # (``iter()`` at each epoch's start, ``len()`` for the loader's length). Worker processes
    # are PyTorch's own iterator, so a resumed epoch reaches them only through it: we hand a
    # wrapper that starts at the resumed batch. tests/test_torch_private.py checks the name.
    @property
    def _index_sampler(self) -> Any:
        resumable = self.__dict__.get("_resumable")
        return resumable if resumable is not None else self._index_source()

    def _own_allocation(self) -> Allocation:
        if self._allocation is None:
            ahead = self.num_workers * (self.prefetch_factor or 2) if self.uses_threads else 0
            # in flight, plus the batch in use and the one before it (a for loop holds it)
            self._allocation = main_process_allocation(per_shape=ahead + 4)
        return self._allocation


def _is_zero_copy_collate(fn: Any) -> bool:
    """``zero_copy_collate``, a partial of it, or a wrapper exposing it as ``.collate_fn`` (recorders)."""
    while fn is not None:
        if fn is zero_copy_collate:
            return True
        fn = fn.func if isinstance(fn, functools.partial) else getattr(fn, "collate_fn", None)
    return False


# Not public: torch.autograd._profiler_enabled tells whether a profiler records. DataLoader's
# iterator labels each batch "enumerate(DataLoader)#...__next__" under a profiler; we do the
# same, and skip record_function's ~6 us per batch otherwise. tests/test_torch_private.py checks it.
_profiling: Callable[[], bool] = torch.autograd._profiler_enabled  # type: ignore[attr-defined]


def _draw_base_seed(loader: DataLoader[Any]) -> int:
    """The seed ``DataLoader``'s iterator draws when it is created: the same draw, same generator."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=loader.generator).item())


def _pin_flag(loader: DataLoader[Any]) -> bool:
    if loader.pin_memory and accelerator() is None:
        warnings.warn(
            "'pin_memory' argument is set as true but no accelerator is found, "
            "then device pinned memory won't be used.",
            stacklevel=4,
        )
    return bool(loader.pin_memory) and accelerator() is not None


def _pin(data: Any) -> Any:
    """``data`` with every host tensor in pinned memory (already pinned ones are kept)."""
    return map_tensors(data, lambda _, t: t if t.is_pinned() or t.device.type != "cpu" else t.pin_memory())


class _Batches(Iterator[Any]):
    """One epoch without workers: indices, the dataset's batch, the collate, in this thread.

    Small batches of a dataset whose batches split along rows are built a few at a time
    (:mod:`zcopy_data._batch_groups`): the same batches, one Python round trip per group.
    """

    def __init__(self, loader: ZeroCopyDataLoader, allocation: Allocation, skip: int = 0) -> None:
        self._loader = loader
        self._name = f"enumerate(DataLoader)#{type(self).__name__}.__next__"
        self._base_seed = _draw_base_seed(loader)  # before the sampler's draws, as DataLoader's iterator
        self._indices = _indices_for(loader, skip)
        self._pin = _pin_flag(loader)
        self._fetch = _fetcher(loader, allocation)
        self._group = _group_for(loader, allocation)
        self._allocation = allocation
        self._ready: deque[Any] = deque()  # built batches of a group, index batches to build, an error

    def __iter__(self) -> _Batches:
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def __next__(self) -> Any:
        if _profiling():
            with torch.autograd.profiler.record_function(self._name):
                return self._next()
        if self._group > 1:
            return self._next_of_group()
        data = self._fetch(next(self._indices))  # _next, inlined: this runs once per batch
        return _pin(data) if self._pin else data

    def _next(self) -> Any:
        if self._group > 1:
            return self._next_of_group()
        data = self._fetch(next(self._indices))
        return _pin(data) if self._pin else data

    def _next_of_group(self) -> Any:
        ready = self._ready
        if not ready:
            batches: list[Any] = []
            failed: BaseException | None = None
            try:
                for _ in range(self._group):
                    batches.append(next(self._indices))
            except StopIteration:
                if not batches:
                    raise
            except Exception as err:  # the sampler's error, raised after the batches drawn before it
                failed = err
            built = build_group(self._loader.dataset, batches, self._allocation)
            ready.extend(batches if built is None else (_Ready(data, records) for data, records in built))
            if failed is not None:
                ready.append(_Failed(failed))
        item = ready.popleft()
        if type(item) is _Ready:
            record_all(item.records)  # this batch's share of the group's work, counted as it is handed out
            data = item.data
        elif type(item) is _Failed:
            raise item.error
        else:
            data = self._fetch(item)  # an index batch, built alone at its turn
        return _pin(data) if self._pin else data


def _group_for(loader: ZeroCopyDataLoader, allocation: Allocation) -> int:
    """How many index batches one build covers (see :mod:`zcopy_data._batch_groups`)."""
    sampler = loader.batch_sampler
    if sampler is None or loader.collate_fn is not zero_copy_collate or not isinstance(loader.dataset, ZeroCopyDataset):
        return 1
    if type(loader.dataset).__getitems__ is not ZeroCopyDataset.__getitems__:
        return 1  # a dataset that hands out its own requests is asked for each batch, as before
    size = getattr(sampler, "batch_size", None)
    if not isinstance(size, int):
        return 1
    try:
        return group_size(loader.dataset, size, allocation)
    except Exception:  # a source that cannot be read yet raises at its first batch, as before
        return 1


def _indices_for(loader: ZeroCopyDataLoader, skip: int = 0) -> Iterator[Any]:
    """Index batches from batch ``skip`` on (int64 arrays where the dataset takes them, as ours
    do; the sampler's lists otherwise), or single indices."""
    loader._progress.begin_draws(loader)
    if loader.batch_sampler is None:
        return _dropped(iter(loader.sampler), skip)
    if isinstance(loader.dataset, ZeroCopyDataset):
        return index_batches(loader.batch_sampler, skip)
    if skip:
        return _as_lists(index_batches(loader.batch_sampler, skip))
    return iter(loader.batch_sampler)


def _dropped(it: Iterator[Any], skip: int) -> Iterator[Any]:
    """``it`` without its first ``skip`` items (indices: nothing is read)."""
    if skip:
        next(itertools.islice(it, skip - 1, skip), None)
    return it


def _as_lists(batches: Iterator[Any]) -> Iterator[Any]:
    for b in batches:
        yield b.tolist() if hasattr(b, "tolist") else b


class _ResumableIndices:
    """The batch sampler (or sampler) as worker processes' iterator sees it: whole epochs, or
    one starting at batch ``skip`` when a loaded state says so (its lists, as the sampler's)."""

    def __init__(self, source: Any, begin_draws: Callable[[], None]) -> None:
        self.source = source
        self.skip = 0
        self._begin_draws = begin_draws

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        # PyTorch's iterator calls iter() twice as it starts (in __init__ and in _reset): each
        # call sees the same skip, which the loader clears once the iterator is built
        return self._rest(self.skip)

    def _rest(self, skip: int) -> Iterator[Any]:
        # a generator: the draws happen at the first index, as the sampler's own would
        self._begin_draws()
        if not skip:
            yield from self.source
        elif known_order(self.source) is None:
            yield from _dropped(iter(self.source), skip)
        else:
            yield from _as_lists(index_batches(self.source, skip))


def _collate_for(loader: DataLoader[Any], allocation: Allocation) -> Callable[[Any], Any]:
    fn: Callable[..., Any] = loader.collate_fn
    return functools.partial(fn, allocation=allocation) if _is_zero_copy_collate(fn) else fn


def _fetcher(loader: DataLoader[Any], allocation: Allocation) -> Callable[[Any], Any]:
    """What ``DataLoader`` does with one index batch of a map-style dataset: fetch, then collate."""
    dataset: Any = loader.dataset
    collate = _collate_for(loader, allocation)
    if loader.batch_sampler is None:
        return lambda index: collate(dataset[index])
    getitems = getattr(dataset, "__getitems__", None)
    if getitems and loader.collate_fn is zero_copy_collate:
        return functools.partial(_request_and_build, getitems, allocation)
    if getitems:
        return lambda index: collate(getitems(index))
    return lambda index: collate([dataset[i] for i in index])


def _request_and_build(getitems: Callable[[Any], Any], allocation: Allocation, index: Any) -> Any:
    """``zero_copy_collate(getitems(index), allocation=allocation)``, one call fewer per batch."""
    request = getitems(index)
    if type(request) is BatchRequest:
        idx, run = request.resolve()
        return request.dataset.build_batch(idx, run, allocation)  # type: ignore[attr-defined]
    return zero_copy_collate(request, allocation=allocation)


class _Failed:
    """An error met while queueing a batch, raised when that batch is due, as a thread's would be."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Group:
    """Several gather requests built by one thread in one call (see :mod:`zcopy_data._batch_groups`)."""

    __slots__ = ("future", "requests")

    def __init__(self, future: Future[Any], requests: list[BatchRequest]) -> None:
        self.future = future
        self.requests = requests


class _Ready:
    """A batch of a group, built, with its share of the group's ledger records."""

    __slots__ = ("data", "records")

    def __init__(self, data: Any, records: Any) -> None:
        self.data = data
        self.records = records


class _ThreadBatches(Iterator[Any]):
    """``num_workers`` gather threads, ``num_workers * prefetch_factor`` batches ahead, in order."""

    def __init__(self, loader: ZeroCopyDataLoader, allocation: Allocation, skip: int = 0) -> None:
        # no reference to the loader: a loader keeps its persistent threads, so that would be a
        # cycle, and the threads would outlive a dropped loader until the next garbage collection
        self._name = f"enumerate(DataLoader)#{type(self).__name__}.__next__"
        self._dataset: Any = loader.dataset
        self._num_workers = loader.num_workers
        self._timeout = loader.timeout
        self._persistent = loader.persistent_workers
        self._ahead = self._num_workers * (loader.prefetch_factor or 2)
        self._lookahead = max(4 * self._ahead, 32)
        self._pin = _pin_flag(loader)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Any] = deque()  # futures, requests built when due, groups, errors
        # only zero_copy_collate's own requests are known to be views before they are built
        self._inline = _is_zero_copy_collate(loader.collate_fn) and isinstance(self._dataset, ZeroCopyDataset)
        self._base_seed = _draw_base_seed(loader)
        self._start(loader, allocation, skip)

    def _start(self, loader: ZeroCopyDataLoader, allocation: Allocation, skip: int) -> None:
        # what len(DataLoader) measures for a map-style dataset, asked only when len() is
        self._index_source: Any = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        self._indices = _indices_for(loader, skip)
        self._fetch = _fetcher(loader, allocation)
        self._collate_fn = _collate_for(loader, allocation)
        self._allocation = allocation
        self._direct = self._inline and loader.collate_fn is zero_copy_collate  # its own requests, built here
        # small batches: a thread builds several per call, so the hand-off is paid once per group
        self._group = _group_for(loader, allocation) if self._direct else 1
        self._forming: list[BatchRequest] = []  # gather requests of the next group, in order
        self._gathers = 0  # futures in _pending
        self._views = 0.0  # running share of views among recent batches
        self._exhausted = False

    def next_epoch(self, loader: ZeroCopyDataLoader, allocation: Allocation, skip: int = 0) -> None:
        """Persistent workers: the same threads, the next epoch's indices (no new seed drawn)."""
        self._cancel_pending()
        self._start(loader, allocation, skip)

    def __iter__(self) -> _ThreadBatches:
        return self

    def __len__(self) -> int:
        return len(self._index_source)

    def __next__(self) -> Any:
        if _profiling():
            with torch.autograd.profiler.record_function(self._name):
                return self._next_data()
        return self._next_data()

    def _build(self, index: Any) -> Any:
        data = self._fetch(index)
        return _pin(data) if self._pin else data

    def _collate(self, request: BatchRequest) -> Any:
        data = self._collate_fn(request)
        return _pin(data) if self._pin else data

    def _submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._num_workers, thread_name_prefix="zcopy_data-worker")
        self._gathers += 1
        return self._pool.submit(fn, arg)

    def _fill(self) -> None:
        """Queue batches until ``_ahead`` gathers are with the threads (views wait for their turn).

        Queued views cost nothing until they are built, so the look-ahead runs past them, up to
        ``_lookahead`` batches, to find the next gathers early.
        """
        pending = self._pending
        while self._gathers < self._ahead and len(pending) < self._lookahead:
            try:
                index = next(self._indices)
            except StopIteration:
                self._exhausted = True
                break
            if not self._inline:
                pending.append(self._submit(self._build, index))
                continue
            try:
                request, view = self._request(index)
                # Views are built when due: they cost what they cost without workers. So is a
                # gather among mostly views: a thread would wait for the GIL, which this thread
                # holds while it builds views.
                if view or self._views > 0.5:
                    self._flush_group()
                    pending.append(request)
                elif self._group > 1 and type(request) is BatchRequest:
                    self._forming.append(request)
                    if len(self._forming) >= self._group:
                        self._flush_group()
                else:
                    pending.append(self._submit(self._collate, request))
            except Exception as e:  # raised in its turn, by _next_data
                self._flush_group()
                pending.append(_Failed(e))
        self._flush_group()

    def _flush_group(self) -> None:
        """Queue the gather requests collected so far: one thread call for all of them."""
        forming = self._forming
        if not forming:
            return
        self._forming = []
        if len(forming) == 1:
            self._pending.append(self._submit(self._collate, forming[0]))
        else:
            self._pending.append(_Group(self._submit(self._build_group, forming), forming))

    def _build_group(self, requests: list[BatchRequest]) -> list[Any] | None:
        return build_group(self._dataset, [r.indices for r in requests], self._allocation)

    def _next_data(self) -> Any:
        if self._views > 0.5 and not self._pending and not self._exhausted:
            return self._next_in_turn()
        if not self._exhausted:
            self._fill()
        if not self._pending:
            if not self._persistent:
                self._shutdown()
            raise StopIteration
        item = self._pending.popleft()
        if type(item) is BatchRequest:
            return self._collate(item)
        if type(item) is _Failed:
            raise item.error
        if type(item) is _Ready:
            record_all(item.records)  # its share of the group's work, counted as it is handed out
            return _pin(item.data) if self._pin else item.data
        if type(item) is _Group:
            return self._first_of_group(item)
        self._gathers -= 1
        future: Future[Any] = item
        if not self._exhausted:
            self._fill()  # a thread is free once this batch is done: give it the next gather now
        return self._result(future)

    def _result(self, future: Future[Any]) -> Any:
        """A thread's result, within the loader's ``timeout`` as ``DataLoader`` words its error."""
        try:
            return future.result(timeout=self._timeout if self._timeout > 0 else None)
        except FutureTimeout:
            raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds") from None

    def _first_of_group(self, group: _Group) -> Any:
        self._gathers -= 1
        if not self._exhausted:
            self._fill()
        built = self._result(group.future)
        if built is None:  # built one by one instead, here, in order: each error at its own batch
            self._pending.extendleft(reversed(group.requests))
        else:
            self._pending.extendleft(reversed([_Ready(data, records) for data, records in built]))
        return self._next_data()

    def _next_in_turn(self) -> Any:
        """Mostly views and nothing in flight: build the next batch here, exactly as without workers."""
        try:
            index = next(self._indices)
        except StopIteration:
            self._exhausted = True
            return self._next_data()
        if self._direct:  # what zero_copy_collate does with its own request, one call fewer per batch
            request = self._dataset.__getitems__(index)
            if type(request) is BatchRequest:
                idx, run = request.resolve()
                view = self._dataset.batch_is_view(run)
                self._views = 0.9 * self._views + (0.1 if view else 0.0)
                data = self._dataset.build_batch(idx, run, self._allocation)
                return _pin(data) if self._pin else data
            return self._collate(request)
        request, _ = self._request(index)  # enough gathers in a row and they go to the threads again
        return self._collate(request)

    def _request(self, index: Any) -> tuple[Any, bool]:
        """The dataset's request for ``index``, whether it is a view, and the running share of views."""
        request = self._dataset.__getitems__(index)
        view = isinstance(request, BatchRequest) and request.is_view()
        self._views = 0.9 * self._views + (0.1 if view else 0.0)
        return request, view

    def _cancel_pending(self) -> None:
        for item in self._pending:  # batches of an epoch that was left early
            if isinstance(item, Future):
                item.cancel()
            elif type(item) is _Group:
                item.future.cancel()
        self._pending.clear()
        self._forming = []
        self._gathers = 0

    def _shutdown(self) -> None:
        self._cancel_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        # an epoch left early (or a loader dropped with persistent threads): the threads go too;
        # at interpreter exit concurrent.futures joins them itself
        if not sys.is_finalizing() and hasattr(self, "_gathers"):
            self._shutdown()
