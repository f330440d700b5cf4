"""What a dataset hands the collate for one batch: a request (indices, not yet read) or samples.

Both live below the datasets and the collate so that either side can build or read them without
importing the other: :class:`BatchRequest` names the dataset and the indices, the collate asks
the dataset to build it (:meth:`~zcopy_data.ZeroCopyDataset.build_batch`) with the allocation
the loader handed down; :class:`SampleBatch` is a list of per-sample results that remembers
their dataset indices, for error messages.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from zcopy_data.errors import SampleIndexError
from zcopy_data.schema import Schema

__all__ = ["BatchRequest", "Indices", "Run", "SampleBatch", "as_index", "contiguous_run"]

Indices = np.ndarray[Any, np.dtype[np.int64]]
Run = tuple[int, int]

_max = np.maximum.reduce
_INT64 = np.dtype(np.int64)  # compared by identity first: the dtype NumPy and torch arrays share


class BatchSource(Protocol):
    """What a request needs of its dataset."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def batch_is_view(self, run: Run | None) -> bool: ...


class SampleBatch(list):  # type: ignore[type-arg]
    """A list of per-sample results that also knows their dataset indices (for error messages).

    It *is* a list, so ``default_collate`` accepts it unchanged.
    """

    indices: list[int] | None = None
    schema: Schema | None = None


class BatchRequest(Sequence[Any]):
    """A batch of a columnar dataset, not yet materialised: the dataset and the indices.

    ``zero_copy_collate`` turns it into views or one gather per field. It is also a lazy
    sequence of samples, so ``default_collate`` accepts it too (at per-sample cost).
    """

    __slots__ = ("_resolved", "dataset", "indices")

    def __init__(self, dataset: BatchSource, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices
        self._resolved: tuple[np.ndarray[Any, np.dtype[np.int64]], tuple[int, int] | None] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.dataset[self.indices[i]]

    def resolve(self) -> tuple[np.ndarray[Any, np.dtype[np.int64]], tuple[int, int] | None]:
        """The indices as int64 (negatives resolved, range checked once for the whole batch),
        and ``(start, stop)`` when they are one contiguous ascending run."""
        resolved = self._resolved
        if resolved is None:
            given: Any = self.indices
            if type(given) is np.ndarray and given.dtype is _INT64 and given.ndim == 1:
                resolved = self._check(given)  # index batches of ZeroCopyDataLoader's samplers
            else:
                resolved = self._resolve()
            self._resolved = resolved
        return resolved

    def is_view(self) -> bool:
        """Whether this batch will be a view of the source (no copy)."""
        return self.dataset.batch_is_view(self.resolve()[1])

    def _resolve(self) -> tuple[np.ndarray[Any, np.dtype[np.int64]], tuple[int, int] | None]:
        given: Any = self.indices
        if type(given) is np.ndarray and given.dtype == np.int64 and given.ndim == 1:
            return self._check(given)  # index batches of ZeroCopyDataLoader's samplers
        try:
            raw = np.asarray(given)
        except (TypeError, ValueError, OverflowError):
            raise SampleIndexError(
                f"indices must be integers, found {type(self.indices).__name__} {list(self.indices)[:4]}..."
            ) from None
        if raw.size and raw.dtype.kind not in "iu":
            # Floats would be truncated and bools read as 0/1 (NumPy would read them as a mask):
            # either way a silently different batch. Python ints beyond int64 arrive as objects.
            big = raw.dtype.kind == "O" and all(isinstance(i, int) and not isinstance(i, bool) for i in raw.flat)
            shown = list(self.indices)[:4]
            raise SampleIndexError(
                f"indices {shown}... are out of range for a dataset of {len(self.dataset)} samples; check the sampler"
                if big
                else f"indices must be integers, found {raw.dtype} {shown}...; check the sampler"
            )
        if raw.dtype.kind == "u" and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
            raise SampleIndexError(
                f"index {int(raw.max())} is out of range for a dataset of {len(self.dataset)} samples; "
                "check the sampler",
                index=int(raw.max()),
            )
        idx = raw.astype(np.int64, copy=False)
        if idx.ndim != 1:
            raise SampleIndexError(f"a batch of indices must be 1-D, found shape {idx.shape}")
        return self._check(idx)

    def _check(
        self, idx: np.ndarray[Any, np.dtype[np.int64]]
    ) -> tuple[np.ndarray[Any, np.dtype[np.int64]], tuple[int, int] | None]:
        n = len(self.dataset)
        k = idx.size
        if k == 0:
            return idx, None
        first, last = int(idx[0]), int(idx[-1])
        if last - first == k - 1:
            if 0 <= first and last < n and (k == 1 or bool((np.diff(idx) == 1).all())):
                return idx, (first, last + 1)  # the common sequential case: no min/max pass
        elif int(_max(idx.view(np.uint64))) < n:
            return idx, None  # one pass: read as unsigned, a negative index is above every length
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -n or hi >= n:
            pos = int(np.flatnonzero((idx < -n) | (idx >= n))[0])
            raise SampleIndexError(
                f"index {int(idx[pos])} (position {pos} in the batch) is out of range for a dataset "
                f"of {n} samples; check the sampler",
                index=int(idx[pos]),
            )
        if lo < 0:
            idx = np.where(idx < 0, idx + n, idx)
            return idx, contiguous_run(idx)
        return idx, None

    def __repr__(self) -> str:
        return f"BatchRequest({type(self.dataset).__name__}, {len(self)} indices)"


def as_index(index: Any) -> int:
    """``index`` as an int; floats, bools and strings are refused rather than truncated or parsed."""
    if isinstance(index, (bool, np.bool_)) or (isinstance(index, torch.Tensor) and index.dtype == torch.bool):
        raise SampleIndexError(f"index must be an integer, found {type(index).__name__} {index!r}")
    try:
        return operator.index(index)
    except TypeError:
        raise SampleIndexError(f"index must be an integer, found {type(index).__name__} {index!r}") from None


def contiguous_run(idx: np.ndarray[Any, Any]) -> tuple[int, int] | None:
    """``(start, stop)`` when ``idx`` is ``start, start+1, ..., stop-1``; else ``None``."""
    n = idx.size
    if n == 0:
        return None
    start = int(idx[0])
    if int(idx[-1]) - start != n - 1:
        return None
    if n > 1 and not bool((np.diff(idx) == 1).all()):
        return None
    return start, start + n
