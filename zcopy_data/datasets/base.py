"""``ZeroCopyDataset``: the base class, and the batch requests it hands to the collate.

Two ways to subclass:

* **columnar** — override :meth:`ZeroCopyDataset.columns` to return ``field -> array`` whose first
  axis is the sample index. ``__len__``, ``__getitem__`` and ``__getitems__`` come for free;
  PyTorch then fetches a whole batch at once and :func:`~zcopy_data.zero_copy_collate` turns it
  into one view (contiguous indices) or one vectorised gather per field.
* **per-sample** — implement ``__getitem__`` (a dict or tuple of arrays, tensors or numbers) and
  ``__len__``. The collate stacks each field with exactly one copy into one output buffer.

The schema is ``schema`` when the subclass declares it (class attribute or ``self.schema = ...``),
otherwise it is frozen from the columns, or from sample 0, the first time it is needed: the same
in every worker process. Declared schemas are checked against the columns once, at that moment.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from zcopy_data.errors import SampleIndexError, SchemaError, describe
from zcopy_data.schema import Schema
from zcopy_data.strict import strict_asarray

__all__ = ["BatchRequest", "SampleBatch", "ZeroCopyDataset"]


class ZeroCopyDataset(Dataset[Any]):
    """Base class for datasets that feed :func:`~zcopy_data.zero_copy_collate` without copies.

    Attributes:
        copy: when True, contiguous batches are copied too (counted in the ledger), so in-place
            ops on a batch never reach the source mapping. Default False: contiguous batches are
            views, and an in-place op on one is seen by later reads in the same process (never by
            the file, which is mapped copy-on-write).

    >>> import numpy as np
    >>> class Points(ZeroCopyDataset):
    ...     def __init__(self, xy):
    ...         self.xy = xy
    ...     def columns(self):
    ...         return {"xy": self.xy}
    >>> len(Points(np.zeros((10, 2), np.float32)))
    10
    """

    copy: bool = False
    _declared: ClassVar[Schema | None] = None

    # -- hooks ---------------------------------------------------------------------------
    def columns(self) -> Mapping[str, Any]:
        """Columnar subclasses return ``field -> array`` (first axis = sample index)."""
        raise NotImplementedError

    def gather_batch(self, indices: np.ndarray[Any, Any], run: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        """Advanced hook for sources that are neither plain columns nor per-sample: build a batch.

        ``indices`` are validated int64 dataset indices, ``run`` is ``(start, stop)`` when they are
        contiguous. Allocate outputs with :func:`zcopy_data.collate.buffers.allocate` (shared memory
        inside a worker) and count every byte with :func:`zcopy_data.ledger.record`. Chunked
        Arrow files and images decoded straight into the batch buffer use it.
        """
        raise NotImplementedError

    @property
    def is_columnar(self) -> bool:
        """True when the subclass overrides ``columns()``."""
        return type(self).columns is not ZeroCopyDataset.columns

    @property
    def gathers_batches(self) -> bool:
        """True when the subclass overrides ``gather_batch()``."""
        return type(self).gather_batch is not ZeroCopyDataset.gather_batch

    @property
    def threads_suffice(self) -> bool:
        """True when a batch is assembled by kernels that release the GIL (views, ``index_select``).

        :class:`~zcopy_data.ZeroCopyDataLoader` then runs its workers as threads in this
        process: as parallel as processes for such work, with nothing to send between processes.
        True for columnar datasets; a ``gather_batch`` subclass says so by overriding this.
        """
        return self.is_columnar and not self.gathers_batches

    def batch_is_view(self, run: tuple[int, int] | None) -> bool:
        """Whether a batch of the contiguous run ``(start, stop)`` is a view, built without a copy."""
        return run is not None and self.is_columnar and not self.gathers_batches and not self.copy

    # -- schema --------------------------------------------------------------------------
    def _zc_schema_or_none(self) -> Schema | None:
        if "_zc_schema" in self.__dict__:
            cached: Schema | None = self.__dict__["_zc_schema"]
            return cached
        declared = self.__dict__.get("_zc_declared", type(self)._declared)
        frozen: Schema | None
        if self.is_columnar:
            frozen = Schema.from_columns(self._zc_columns())
            if declared is not None:
                if list(declared) != list(frozen):
                    raise SchemaError(
                        f"{type(self).__name__}: declared fields {list(declared)} differ from the "
                        f"columns {list(frozen)}"
                    )
                frozen.check_compatible(declared, ours="columns", theirs="declared schema")
                frozen = declared
        elif declared is not None:
            frozen = declared
        elif len(self) == 0:
            frozen = None
        else:
            try:
                frozen = Schema.from_sample(self[0])
            except SchemaError:
                frozen = None
        self.__dict__["_zc_schema"] = frozen
        return frozen

    @property
    def schema(self) -> Schema:
        """The declared schema, or the one frozen from the columns / sample 0."""
        frozen = self._zc_schema_or_none()
        if frozen is None:
            raise SchemaError(
                f"{type(self).__name__}: sample 0 has fields that are not arrays or numbers, so no "
                "schema can be frozen from it; declare `schema` to have batches checked"
            )
        return frozen

    @schema.setter
    def schema(self, value: Schema | Mapping[str, Any] | None) -> None:
        self.__dict__["_zc_declared"] = (
            None if value is None else (value if isinstance(value, Schema) else Schema(value))
        )
        self.__dict__.pop("_zc_schema", None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("schema")
        if isinstance(declared, (Schema, Mapping)):
            # A class-level ``schema = Schema(...)``: keep the property, remember the declaration.
            cls._declared = declared if isinstance(declared, Schema) else Schema(declared)
            del cls.schema

    # -- columnar machinery --------------------------------------------------------------
    def _zc_columns(self) -> dict[str, Any]:
        """The validated columns, cached per process."""
        cache = self.__dict__.get("_zc_cols")
        if cache is not None:
            return cache  # type: ignore[no-any-return]
        cols = dict(self.columns())
        if not cols:
            raise SchemaError(f"{type(self).__name__}.columns() returned no fields")
        length = None
        for name, col in cols.items():
            if not isinstance(col, (np.ndarray, torch.Tensor)):
                raise SchemaError(
                    f"{describe(name, None)}: a column must be a NumPy array or tensor, "
                    f"found {type(col).__name__}; wrap it with np.asarray once at build time",
                    field=name,
                )
            if col.ndim == 0:
                raise SchemaError(f"field {name!r}: a column needs a sample axis, found a 0-d array", field=name)
            if isinstance(col, np.ndarray):
                strict_asarray(col[:0], field=name)  # a bad dtype or byte order is reported here, once
            n = int(col.shape[0])
            if length is None:
                length, first = n, name
            elif n != length:
                raise SchemaError(
                    f"field {name!r}: has {n} samples but field {first!r} has {length}; "
                    "every field needs one row per sample",
                    field=name,
                )
        self.__dict__["_zc_cols"] = cols
        return cols

    def _zc_tensors(self) -> dict[str, torch.Tensor]:
        """Whole columns as tensors over the same memory (the gather source), cached per process."""
        cache = self.__dict__.get("_zc_tens")
        if cache is None:
            cache = {n: strict_asarray(c, field=n) for n, c in self._zc_columns().items()}
            self.__dict__["_zc_tens"] = cache
        return cache

    def __len__(self) -> int:
        if not self.is_columnar:
            raise NotImplementedError(f"{type(self).__name__} must implement __len__ or columns()")
        return int(next(iter(self._zc_columns().values())).shape[0])

    def __getitem__(self, index: int) -> Any:
        if not self.is_columnar:
            raise NotImplementedError(f"{type(self).__name__} must implement __getitem__ or columns()")
        cols = self._zc_columns()
        n = len(self)
        i = as_index(index)
        if not -n <= i < n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {n} samples", index=i)
        return {name: col[i] for name, col in cols.items()}

    def __getitems__(self, indices: Sequence[int]) -> BatchRequest | SampleBatch:
        """Called by ``DataLoader`` with a whole batch of indices (PyTorch >= 2.1)."""
        if self.is_columnar or self.gathers_batches:
            return BatchRequest(self, indices)
        samples = SampleBatch(self[i] for i in indices)
        samples.indices = list(indices)
        samples.schema = self._zc_schema_or_none()
        return samples

    def __getstate__(self) -> dict[str, Any]:
        # Per-process caches (mappings, tensors) are rebuilt in the receiving process.
        return {k: v for k, v in self.__dict__.items() if k not in ("_zc_cols", "_zc_tens", "_zc_schema")}


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

    def __init__(self, dataset: ZeroCopyDataset, indices: Sequence[int]) -> None:
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
        if self._resolved is None:
            self._resolved = self._resolve()
        return self._resolved

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
        if 0 <= first and last < n and last - first == k - 1 and (k == 1 or bool((np.diff(idx) == 1).all())):
            return idx, (first, last + 1)  # the common sequential case: no min/max pass
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
