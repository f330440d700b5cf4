"""``zero_copy_collate``: a drop-in ``collate_fn`` that views, gathers once, or stacks once.

* a :class:`~zcopy_data.datasets.base.BatchRequest`: the dataset builds it
  (:meth:`~zcopy_data.ZeroCopyDataset.build_batch`) with the allocation handed down -- for
  columns one view per field when the indices are one contiguous run, else exactly one
  ``index_select`` per field straight into the output buffer (:mod:`zcopy_data.memory.gather`);
* a list of samples: the same structure ``default_collate`` returns, with arrays and tensors
  stacked by exactly one copy into one output buffer (shared memory inside a worker), dtypes and
  shapes checked per field, never cast.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from zcopy_data._dtypes import dtype_name
from zcopy_data._requests import BatchRequest, SampleBatch
from zcopy_data._storage import nbytes
from zcopy_data._tree import join, rebuild
from zcopy_data.errors import DtypeDriftError, SchemaError, ShapeMismatchError, describe
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation, default_allocation
from zcopy_data.ragged import ragged_settings, stack_ragged
from zcopy_data.schema import value_spec
from zcopy_data.strict import strict_asarray

__all__ = ["zero_copy_collate"]

_SAMPLE = "<sample>"  # the name of a sample that is a single value


def zero_copy_collate(
    batch: Any, *, allocation: Allocation | None = None, ragged: Mapping[str, str | Mapping[str, Any]] | None = None
) -> Any:
    """Collate a batch with the fewest copies; a drop-in for ``default_collate``.

    Args:
        batch: what the dataset's ``__getitems__`` returned (a batch request of a
            :class:`~zcopy_data.ZeroCopyDataset`, or a list of samples).
        allocation: where output buffers come from (see :mod:`zcopy_data.memory.policy`);
            loaders and device stages hand theirs down. Default: chosen from the context --
            shared memory inside a worker, pinned memory with an accelerator, else reused host
            buffers. ``functools.partial(zero_copy_collate, allocation=HostAllocation())``
            keeps gathers out of pinned memory.
        ragged: per-sample fields whose first dimension varies, by name: ``"packed"``,
            ``"padded"`` or ``"nested"`` (or ``{"output": "padded", "pad_value": -1}``), batched as
            :mod:`zcopy_data.ragged` describes with one copy of their values. A columnar dataset's
            variable-length columns (:class:`~zcopy_data.ragged.Ragged`) say this themselves.

    >>> import numpy as np
    >>> from zcopy_data.datasets import NumpyDataset
    >>> ds = NumpyDataset({"x": np.arange(8, dtype=np.float32)})
    >>> zero_copy_collate(ds.__getitems__([2, 3, 4]))["x"]
    tensor([2., 3., 4.])

    .. note:: Unlike ``default_collate``, samples whose dtypes or shapes differ within a field
       raise :class:`~zcopy_data.DtypeDriftError` / :class:`~zcopy_data.ShapeMismatchError`
       instead of being promoted, and samples whose keys differ raise
       :class:`~zcopy_data.SchemaError` instead of being cut to the first sample's keys.
    """
    alloc = default_allocation() if allocation is None else allocation
    if isinstance(batch, BatchRequest):
        idx, run = batch.resolve()
        return batch.dataset.build_batch(idx, run, alloc)  # type: ignore[attr-defined]
    if len(batch) == 0:
        return default_collate(batch)
    indices = batch.indices if isinstance(batch, SampleBatch) else None
    schema = batch.schema if isinstance(batch, SampleBatch) else None
    if schema is not None:
        schema.check_sample(batch[0], index=None if indices is None else indices[0])
    return _Collate(alloc, indices, ragged_settings(ragged))(batch, None)


# -- per-sample: the default_collate structure, one copy per leaf ----------------------------
def _join(path: str | None, key: object) -> str:
    return join(path or "", key)


def _index(indices: list[int] | None, pos: int) -> int | None:
    return None if indices is None else int(indices[pos])


def _where(path: str | None, indices: list[int] | None, pos: int) -> str:
    """``field 'x' at index 7`` when dataset indices are known, else the position in the batch."""
    if indices is None:
        return f"field {path or '<sample>'!r} at batch position {pos}"
    return describe(path or "<sample>", int(indices[pos]))


def _first(indices: list[int] | None) -> str:
    return "the batch's first sample" if indices is None else f"sample {int(indices[0])}"


class _Collate:
    """One per-sample batch: the structure of ``default_collate``, every leaf stacked once."""

    __slots__ = ("alloc", "indices", "ragged")

    def __init__(self, alloc: Allocation, indices: list[int] | None, ragged: dict[str, tuple[str, Any]]) -> None:
        self.alloc = alloc
        self.indices = indices
        self.ragged = ragged

    def __call__(self, batch: Sequence[Any], path: str | None) -> Any:
        indices = self.indices
        elem = batch[0]
        if isinstance(elem, torch.Tensor):
            return self._stack_tensors(batch, path)
        if isinstance(elem, np.ndarray):
            if elem.dtype.kind in "US":
                return default_collate(batch)  # type: ignore[arg-type]  # raises the same TypeError default_collate does
            tensors = [
                strict_asarray(  # only read: stacked into a fresh buffer, so read-only samples are fine
                    a,
                    field=path if indices else f"{path or '<sample>'} (batch position {i})",
                    index=_index(indices, i),
                    allow_read_only=True,
                )
                for i, a in enumerate(batch)
            ]
            return self._stack_tensors(tensors, path)
        if isinstance(elem, (np.bool_, np.number)):
            return self._stack_scalars(batch, path)
        if isinstance(elem, (bool, int, float)):
            _check_same_type(batch, path, indices)
            return self._stack_scalars(batch, path)
        if isinstance(elem, (str, bytes)):
            return batch
        if isinstance(elem, collections.abc.Mapping):
            _check_same_keys(batch, path, indices)
            return rebuild(elem, {k: self([d[k] for d in batch], _join(path, k)) for k in elem})
        if isinstance(elem, collections.abc.Sequence):
            size = len(elem)
            for pos, sample in enumerate(batch):
                if len(sample) != size:
                    raise ShapeMismatchError(
                        f"{_where(path, indices, pos)}: has {len(sample)} elements, "
                        f"{_first(indices)} has {size}; every sample needs the same structure",
                        field=path,
                        index=_index(indices, pos),
                    )
            # Transposed columns are tuples, exactly as default_collate passes them on.
            columns = [self(col, _join(path, i)) for i, col in enumerate(zip(*batch, strict=True))]
            if isinstance(elem, tuple) and not hasattr(elem, "_fields"):
                return columns  # default_collate turns tuples of fields into lists
            return rebuild(elem, columns)
        return default_collate(batch)  # type: ignore[arg-type]

    def _stack_tensors(self, batch: Sequence[torch.Tensor], path: str | None) -> torch.Tensor:
        elem = batch[0]
        if elem.is_nested or elem.layout != torch.strided:
            return default_collate(batch)  # type: ignore[arg-type,no-any-return]  # same error default_collate gives for nested / sparse
        how = self.ragged.get(path or _SAMPLE)
        if how is not None:
            return stack_ragged(batch, path or _SAMPLE, how[0], how[1], self.alloc)  # type: ignore[no-any-return]
        _check_uniform([(t.dtype, tuple(t.shape)) for t in batch], path, self.indices)
        name = path or _SAMPLE
        if any(t.requires_grad for t in batch):
            out = torch.stack(list(batch), 0)  # autograd keeps the graph; stack(out=) refuses it
            record(COLLATE, name, "stack: per-sample values requiring grad (autograd's buffer)", copied=nbytes(out))
            return out
        if elem.device.type != "cpu":
            out = torch.empty((len(batch), *elem.shape), dtype=elem.dtype, device=elem.device)
        else:
            out = self.alloc((len(batch), *elem.shape), elem.dtype)
        torch.stack(list(batch), 0, out=out)
        record(COLLATE, name, "stack: per-sample values", copied=nbytes(out))
        return out

    def _stack_scalars(self, batch: Sequence[Any], path: str | None) -> torch.Tensor:
        specs = [value_spec(v) for v in batch]
        _check_uniform(specs, path, self.indices)  # type: ignore[arg-type]
        dtype = specs[0][0]  # type: ignore[index]
        out = self.alloc((len(batch),), dtype)
        out.numpy()[:] = batch
        record(COLLATE, path or _SAMPLE, "stack: per-sample values", copied=nbytes(out))
        return out


def _check_same_keys(batch: Sequence[Any], path: str | None, indices: list[int] | None) -> None:
    """Every sample has the first sample's keys: ``default_collate`` would drop extras silently."""
    keys = batch[0].keys()
    for pos, sample in enumerate(batch):
        if not isinstance(sample, collections.abc.Mapping):
            raise SchemaError(
                f"{_where(path, indices, pos)}: expected a mapping with keys {list(keys)} like "
                f"{_first(indices)}, found a {type(sample).__name__}; return one structure per sample",
                field=path,
                index=_index(indices, pos),
            )
        if sample.keys() != keys:
            extra = [k for k in sample if k not in keys]
            missing = [k for k in keys if k not in sample]
            key = (extra or missing)[0]
            what = f"has extra key {key!r}" if extra else f"lacks key {key!r}"
            raise SchemaError(
                f"{_where(_join(path, key), indices, pos)}: the sample {what} (keys {list(sample)}; "
                f"{_first(indices)} has {list(keys)}); every sample of a batch needs the same keys",
                field=_join(path, key),
                index=_index(indices, pos),
            )


def _check_same_type(batch: Sequence[Any], path: str | None, indices: list[int] | None) -> None:
    first = type(batch[0])
    for pos, v in enumerate(batch):
        if type(v) is not first:
            raise DtypeDriftError(
                f"{_where(path, indices, pos)}: expected a {first.__name__} like "
                f"{_first(indices)}, found a {type(v).__name__}; return one type per field",
                field=path,
                index=_index(indices, pos),
            )


def _check_uniform(
    specs: list[tuple[torch.dtype, tuple[int, ...]]], path: str | None, indices: list[int] | None
) -> None:
    dtype, shape = specs[0]
    for pos, (d, s) in enumerate(specs):
        if d != dtype:
            raise DtypeDriftError(
                f"{_where(path, indices, pos)}: expected {dtype_name(dtype)} "
                f"(as {_first(indices)}), found {dtype_name(d)}; store every sample as "
                f"{dtype_name(dtype)} (nothing is cast on the host)",
                field=path,
                index=_index(indices, pos),
            )
        if s != shape:
            raise ShapeMismatchError(
                f"{_where(path, indices, pos)}: expected shape {tuple(shape)} "
                f"(as {_first(indices)}), found {tuple(s)}; resize or pad samples to one "
                "shape, or, when only the first dimension varies, declare the field ragged: "
                f"functools.partial(zero_copy_collate, ragged={{{path or _SAMPLE!r}: 'packed'}}) "
                "('padded' and 'nested' too)",
                field=path,
                index=_index(indices, pos),
            )
