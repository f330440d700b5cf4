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

With any worker count, index batches of PyTorch's sequential and random batch samplers and of
:class:`~zcopy_data.samplers.BlockShuffleSampler` are produced as int64 arrays, in the same order
as the samplers' own lists (see :mod:`zcopy_data._index_batches`).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.pin_memory import pin_memory as _pin
from torch.utils.data.dataloader import _BaseDataLoaderIter, _DatasetKind, _SingleProcessDataLoaderIter

from zcopy_data._index_batches import index_batches
from zcopy_data.collate import zero_copy_collate
from zcopy_data.collate.buffers import keep_at_least
from zcopy_data.datasets.base import BatchRequest, ZeroCopyDataset

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
        **kwargs: Any,
    ) -> None:
        if worker_mode not in _MODES:
            raise ValueError(f"worker_mode={worker_mode!r} should be one of {', '.join(map(repr, _MODES))}")
        self.worker_mode: WorkerMode = worker_mode  # before DataLoader's checks, which read it
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=zero_copy_collate if collate_fn is None else collate_fn,
            **kwargs,
        )
        if worker_mode == "threads" and self.num_workers > 0:
            why = self._why_not_threads(strict=True)
            if why:
                raise ValueError(f"worker_mode='threads' {why}; use worker_mode='processes'")

    def _why_not_threads(self, strict: bool = False) -> str | None:
        """Why the workers must be processes (``None``: threads will do)."""
        if self._dataset_kind != _DatasetKind.Map or not self._auto_collation:
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

    def _get_iterator(self) -> _BaseDataLoaderIter:
        if self.num_workers == 0:
            return _SingleIter(self)
        if self.uses_threads:
            return _ThreadIter(self)
        return super()._get_iterator()


def _is_zero_copy_collate(fn: Any) -> bool:
    """``zero_copy_collate``, or a wrapper of it that exposes it as ``.collate_fn`` (ledger recorders)."""
    return fn is zero_copy_collate or getattr(fn, "collate_fn", None) is zero_copy_collate


def _indices_for(it: _BaseDataLoaderIter) -> Any:
    # arrays only where the dataset takes them (ours do); anything else keeps the sampler's lists
    if isinstance(it._dataset, ZeroCopyDataset) and it._auto_collation:
        return index_batches(it._index_sampler)
    return iter(it._index_sampler)


class _Unprofiled:
    """``__next__`` without the profiler's ``record_function`` (~6 us a batch) unless it is recording."""

    _dataset_kind: int
    _num_yielded: int
    _next_data: Callable[[], Any]

    def __next__(self) -> Any:
        if self._dataset_kind != _DatasetKind.Map or torch.autograd._profiler_enabled():  # type: ignore[attr-defined]
            return super().__next__()  # type: ignore[misc]
        data = self._next_data()
        self._num_yielded += 1
        return data


class _SingleIter(_Unprofiled, _SingleProcessDataLoaderIter):
    """PyTorch's single-process iterator, with index batches as arrays where possible."""

    def __init__(self, loader: ZeroCopyDataLoader) -> None:
        super().__init__(loader)
        self._sampler_iter = _indices_for(self)

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        self._sampler_iter = _indices_for(self)


class _Failed:
    """An error met while queueing a batch, raised when that batch is due, as a thread's would be."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _ThreadIter(_Unprofiled, _BaseDataLoaderIter):
    """``num_workers`` gather threads, ``num_workers * prefetch_factor`` batches ahead, in order."""

    def __init__(self, loader: ZeroCopyDataLoader) -> None:
        super().__init__(loader)
        self._fetcher = _DatasetKind.create_fetcher(  # type: ignore[no-untyped-call]
            self._dataset_kind, self._dataset, self._auto_collation, self._collate_fn, self._drop_last
        )
        self._ahead = self._num_workers * (loader.prefetch_factor or 2)
        self._lookahead = max(4 * self._ahead, 32)
        self._gathers = 0  # futures in _pending
        self._views = 0.0  # running share of views among recent batches
        keep_at_least(self._ahead + 2)  # in flight, plus the batch in use and the one before it
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any] | BatchRequest | _Failed] = deque()
        self._exhausted = False
        self._sampler_iter = _indices_for(self)
        # only zero_copy_collate's own requests are known to be views before they are built
        self._inline = _is_zero_copy_collate(self._collate_fn) and isinstance(self._dataset, ZeroCopyDataset)

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        self._sampler_iter = _indices_for(self)
        for item in self._pending:  # batches of an epoch that was left early
            if isinstance(item, Future):
                item.cancel()
        self._pending.clear()
        self._gathers = 0
        self._exhausted = False

    def _build(self, index: Any) -> Any:
        data = self._fetcher.fetch(index)
        return _pin(data, self._pin_memory_device) if self._pin_memory else data  # type: ignore[no-untyped-call]

    def _collate(self, request: BatchRequest) -> Any:
        data = self._collate_fn(request)  # type: ignore[arg-type]
        return _pin(data, self._pin_memory_device) if self._pin_memory else data  # type: ignore[no-untyped-call]

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
                index = self._next_index()  # type: ignore[no-untyped-call]
            except StopIteration:
                self._exhausted = True
                return
            if not self._inline:
                pending.append(self._submit(self._build, index))
                continue
            try:
                request, view = self._request(index)
                # Views are built when due: they cost what they cost without workers. So is a
                # gather among mostly views: a thread would wait for the GIL, which this thread
                # holds while it builds views.
                pending.append(request if view or self._views > 0.5 else self._submit(self._collate, request))
            except Exception as e:  # raised in its turn, by _next_data
                pending.append(_Failed(e))

    def _next_data(self) -> Any:
        if self._views > 0.5 and not self._pending and not self._exhausted:
            return self._next_in_turn()
        if not self._exhausted:
            self._fill()
        if not self._pending:
            if not self._persistent_workers:
                self._shutdown()
            raise StopIteration
        item = self._pending.popleft()
        if type(item) is BatchRequest:
            return self._collate(item)
        if type(item) is _Failed:
            raise item.error
        self._gathers -= 1
        future: Future[Any] = item  # type: ignore[assignment]
        if not self._exhausted:
            self._fill()  # a thread is free once this batch is done: give it the next gather now
        try:
            return future.result(timeout=self._timeout if self._timeout > 0 else None)
        except FutureTimeout:
            raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds") from None

    def _next_in_turn(self) -> Any:
        """Mostly views and nothing in flight: build the next batch here, exactly as without workers."""
        try:
            index = self._next_index()  # type: ignore[no-untyped-call]
        except StopIteration:
            self._exhausted = True
            return self._next_data()
        request, _ = self._request(index)  # enough gathers in a row and they go to the threads again
        return self._collate(request)

    def _request(self, index: Any) -> tuple[Any, bool]:
        """The dataset's request for ``index``, whether it is a view, and the running share of views."""
        request = self._dataset.__getitems__(index)  # type: ignore[attr-defined]
        view = isinstance(request, BatchRequest) and request.is_view()
        self._views = 0.9 * self._views + (0.1 if view else 0.0)
        return request, view

    def _shutdown(self) -> None:
        for item in self._pending:
            if isinstance(item, Future):
                item.cancel()
        self._pending.clear()
        self._gathers = 0
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        if not sys.is_finalizing() and hasattr(self, "_gathers"):  # at exit, concurrent.futures joins its threads
            self._shutdown()
