"""``ZeroCopyDataset``: the base class, and the batch requests it hands to the collate.

Two ways to subclass:

* **columnar** — override :meth:`ZeroCopyDataset.columns` to return ``field -> array`` whose first
  axis is the sample index. ``__len__``, ``__getitem__`` and ``__getitems__`` come for free;
  PyTorch then fetches a whole batch at once and :func:`~zcopy_data.zero_copy_collate` turns it
  into one view (contiguous indices) or one vectorised gather per field.
* **per-sample** — implement ``__getitem__`` (a dict or tuple of arrays, tensors or numbers) and
  ``__len__``. The collate stacks each field with exactly one copy into one output buffer.

Sources that are neither (chunked files, images decoded into the batch) override
:meth:`ZeroCopyDataset.build_batch`, the one hook the collate calls for a batch request.

The schema is ``schema`` when the subclass declares it (class attribute or ``self.schema = ...``),
otherwise it is frozen from the columns, or from sample 0, the first time it is needed: the same
in every worker process. Declared schemas are checked against the columns once, at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from zcopy_data._mapping import register_file_array
from zcopy_data._requests import BatchRequest, Indices, Run, SampleBatch, as_index, contiguous_run
from zcopy_data.errors import SampleIndexError, SchemaError, describe
from zcopy_data.memory.gather import gather_fields
from zcopy_data.memory.policy import Allocation
from zcopy_data.ragged import Ragged, ragged_batch
from zcopy_data.schema import Schema
from zcopy_data.strict import strict_asarray

__all__ = ["BatchRequest", "SampleBatch", "ZeroCopyDataset", "as_index", "contiguous_run"]

# caches rebuilt in every process (mappings, tensors, file checks), never pickled
_PER_PROCESS = ("_zc_cols", "_zc_tens", "_zc_schema", "_zc_rag", "_zc_checks")


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

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, torch.Tensor]:
        """Build the batch of ``indices``: what :func:`~zcopy_data.zero_copy_collate` calls.

        ``indices`` are validated int64 dataset indices, ``run`` is ``(start, stop)`` when they
        are one contiguous ascending run, ``allocation`` makes output buffers of the kind the
        batch's consumer needs (shared memory inside a worker, pinned memory for a device...).
        The default, for columnar datasets, is a view of every column for a run and one gather
        per field otherwise (:mod:`zcopy_data.memory.gather`). Sources that are neither columns
        nor per-sample (chunked Arrow files, images decoded into the batch) override it, allocate
        every output with ``allocation`` and count every byte with :func:`zcopy_data.ledger.record`.
        """
        if not self.is_columnar:
            raise NotImplementedError(f"{type(self).__name__} must implement columns() or build_batch()")
        self.check_sources()
        view = self.batch_is_view(run)
        tensors = self.column_tensors()
        ragged = self._zc_ragged()
        out: dict[str, Any] = gather_fields(
            {n: t for n, t in tensors.items() if n not in ragged} if ragged else tensors,
            torch.from_numpy(indices),
            run if view else None,
            allocation,
            gather_why="gather: copy=True" if self.copy and run is not None else "gather: indices not contiguous",
        )
        if not ragged:
            return out  # already in the columns' order
        for name, column in ragged.items():
            out[name] = ragged_batch(name, column, tensors[name], indices, run if view else None, allocation)
        return {n: out[n] for n in tensors}

    def check_sources(self) -> None:
        """Called before each batch is built: raise when a source changed underneath (default: nothing).

        File-backed datasets check here that their files are still the ones they were built on.
        """

    @property
    def is_columnar(self) -> bool:
        """True when the subclass overrides ``columns()``."""
        return type(self).columns is not ZeroCopyDataset.columns

    @property
    def gathers_batches(self) -> bool:
        """True when the subclass overrides ``build_batch()`` (its batches are not plain column views)."""
        return type(self).build_batch is not ZeroCopyDataset.build_batch

    @property
    def splits_by_rows(self) -> bool:
        """True when the batch of several index batches, cut along its first dimension, is each
        of those batches: every field one fixed-shape row per index, built alike whichever
        indices share a batch. The loader then builds small batches a few at a time (one
        Python round trip for several). Columnar datasets with fixed-shape fields are; a
        ``build_batch`` override says so itself."""
        return self.is_columnar and not self.gathers_batches and all(f.is_fixed for f in self.schema.values())

    @property
    def threads_suffice(self) -> bool:
        """True when a batch is assembled by kernels that release the GIL (views, ``index_select``).

        :class:`~zcopy_data.ZeroCopyDataLoader` then runs its workers as threads in this
        process: as parallel as processes for such work, with nothing to send between processes.
        True for columnar datasets; a ``build_batch`` subclass says so by overriding this.
        """
        return self.is_columnar and not self.gathers_batches

    def batch_is_view(self, run: Run | None) -> bool:
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
        lengths: dict[str, int] = {}
        for name, col in cols.items():
            if isinstance(col, Ragged):
                if not col.is_open:
                    raise SchemaError(f"field {name!r}: a Ragged column of paths needs NumpyDataset", field=name)
                col.checked(name)
                for part in (col.values, col.offsets):
                    if isinstance(part, np.ndarray):
                        register_file_array(part)
                lengths[name] = col.n
                continue
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
                register_file_array(col)  # a column over a np.memmap crosses from workers as descriptors
            lengths[name] = int(col.shape[0])
        _check_lengths(lengths)
        self.__dict__["_zc_cols"] = cols
        return cols

    def column_tensors(self) -> dict[str, torch.Tensor]:
        """Whole columns as tensors over the same memory (the gather source), cached per process.

        With ``copy=True`` every batch is a copy, so a read-only column is only ever read here and
        is accepted; otherwise views of it would be handed out, and it is refused with the fix.
        """
        cache = self.__dict__.get("_zc_tens")
        if cache is None:
            cache = {
                n: strict_asarray(c.values if isinstance(c, Ragged) else c, field=n, allow_read_only=self.copy)
                for n, c in self._zc_columns().items()
            }
            self.__dict__["_zc_tens"] = cache
        return cache

    def __len__(self) -> int:
        if not self.is_columnar:
            raise NotImplementedError(f"{type(self).__name__} must implement __len__ or columns()")
        col = next(iter(self._zc_columns().values()))
        return col.n if isinstance(col, Ragged) else int(col.shape[0])

    def _zc_ragged(self) -> dict[str, Ragged]:
        """The variable-length columns (cached per process)."""
        cache = self.__dict__.get("_zc_rag")
        if cache is None:
            cache = {n: c for n, c in self._zc_columns().items() if isinstance(c, Ragged)}
            self.__dict__["_zc_rag"] = cache
        return cache

    def __getitem__(self, index: int) -> Any:
        if not self.is_columnar:
            raise NotImplementedError(f"{type(self).__name__} must implement __getitem__ or columns()")
        cols = self._zc_columns()
        n = len(self)
        i = as_index(index)
        if not -n <= i < n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {n} samples", index=i)
        out = {}
        for name, col in cols.items():
            if isinstance(col, Ragged):
                off, j = col.checked(name), i % n
                out[name] = col.values[int(off[j]) : int(off[j + 1])]
            else:
                out[name] = col[i]
        return out

    def __getitems__(self, indices: Sequence[int]) -> BatchRequest | SampleBatch:
        """Called by ``DataLoader`` with a whole batch of indices (PyTorch >= 2.1)."""
        if self.is_columnar or self.gathers_batches:
            return BatchRequest(self, indices)
        given = indices.tolist() if isinstance(indices, np.ndarray) else list(indices)  # ints, as PyTorch passes
        samples = SampleBatch(self[i] for i in given)
        samples.indices = given
        samples.schema = self._zc_schema_or_none()
        return samples

    def __getstate__(self) -> dict[str, Any]:
        # Per-process caches (mappings, tensors) are rebuilt in the receiving process.
        return {k: v for k, v in self.__dict__.items() if k not in _PER_PROCESS}


def _check_lengths(lengths: Mapping[str, int]) -> None:
    """Every column holds one row per sample: the first one that differs from the first field is named."""
    (first, length), *rest = lengths.items()
    for name, n in rest:
        if n != length:
            raise SchemaError(
                f"field {name!r}: has {n} samples but field {first!r} has {length}; "
                "every field needs one row per sample",
                field=name,
            )
