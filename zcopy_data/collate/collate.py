"""``zero_copy_collate``: a drop-in ``collate_fn`` that views, gathers once, or stacks once.

* a :class:`~zcopy_data.datasets.base.BatchRequest` (columnar dataset): one view per field when
  the indices are one contiguous run, else exactly one ``index_select`` per field straight into
  the output buffer;
* a list of samples: the same structure ``default_collate`` returns, with arrays and tensors
  stacked by exactly one copy into one output buffer (shared memory inside a worker), dtypes and
  shapes checked per field, never cast.
"""

from __future__ import annotations

import collections.abc
import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from zcopy_data._dtypes import dtype_name
from zcopy_data.collate.buffers import allocate, allocator, nbytes
from zcopy_data.collate.crossing import install as install_crossing
from zcopy_data.collate.descriptors import register_file_array
from zcopy_data.datasets.base import BatchRequest, SampleBatch
from zcopy_data.errors import DtypeDriftError, ShapeMismatchError, describe
from zcopy_data.ledger import record
from zcopy_data.schema import value_spec
from zcopy_data.strict import strict_asarray

__all__ = ["zero_copy_collate"]

STAGE = "collate"
_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def zero_copy_collate(batch: Any) -> Any:
    """Collate a batch with the fewest copies; a drop-in for ``default_collate``.

    >>> import numpy as np
    >>> from zcopy_data.datasets import NumpyDataset
    >>> ds = NumpyDataset({"x": np.arange(8, dtype=np.float32)})
    >>> zero_copy_collate(ds.__getitems__([2, 3, 4]))["x"]
    tensor([2., 3., 4.])

    .. note:: Unlike ``default_collate``, samples whose dtypes or shapes differ within a field
       raise :class:`~zcopy_data.DtypeDriftError` / :class:`~zcopy_data.ShapeMismatchError`
       instead of being promoted.
    """
    if isinstance(batch, BatchRequest):
        return _collate_request(batch)
    if len(batch) == 0:
        return default_collate(batch)
    indices = batch.indices if isinstance(batch, SampleBatch) else None
    schema = batch.schema if isinstance(batch, SampleBatch) else None
    if schema is not None:
        schema.check_sample(batch[0], index=None if indices is None else indices[0])
    return _collate(batch, None, indices)


# -- columnar: views and gathers -------------------------------------------------------------
def _collate_request(req: BatchRequest) -> dict[str, torch.Tensor]:
    ds = req.dataset
    idx, contiguous = req.resolve()
    if ds.gathers_batches:
        return ds.gather_batch(idx, contiguous)
    out: dict[str, torch.Tensor] = {}
    if contiguous is not None and ds.batch_is_view(contiguous):
        start, stop = contiguous
        if get_worker_info() is not None:
            # views of memory-mapped columns cross to the main process as file descriptors
            install_crossing()
            for col in ds._zc_columns().values():
                register_file_array(col)
        for name, src in ds._zc_tensors().items():  # whole columns as tensors, checked once
            t = src[start:stop]
            record(STAGE, name, "view: indices contiguous", viewed=nbytes(t))
            out[name] = t
        return out
    reason = "gather: copy=True" if ds.copy and contiguous else "gather: indices not contiguous"
    tensors = ds._zc_tensors()
    index = torch.from_numpy(idx)
    alloc = allocator()
    for name, src in tensors.items():
        buf = alloc((idx.size, *src.shape[1:]), src.dtype)
        bits = _SAME_BITS.get(src.dtype)
        if bits is None:
            torch.index_select(src, 0, index, out=buf)
        else:  # index_select has no kernels for wide unsigned types: move the same bits as signed
            torch.index_select(src.view(bits), 0, index, out=buf.view(bits))
        record(STAGE, name, reason, copied=nbytes(buf))
        out[name] = buf
    return out


# -- per-sample: the default_collate structure, one copy per leaf ----------------------------
def _join(path: str | None, key: object) -> str:
    if path is None:
        return str(key)
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _index(indices: list[int] | None, pos: int) -> int | None:
    return None if indices is None else int(indices[pos])


def _where(path: str | None, indices: list[int] | None, pos: int) -> str:
    """``field 'x' at index 7`` when dataset indices are known, else the position in the batch."""
    if indices is None:
        return f"field {path or '<sample>'!r} at batch position {pos}"
    return describe(path or "<sample>", int(indices[pos]))


def _first(indices: list[int] | None) -> str:
    return "the batch's first sample" if indices is None else f"sample {int(indices[0])}"


def _collate(batch: Sequence[Any], path: str | None, indices: list[int] | None) -> Any:
    elem = batch[0]
    if isinstance(elem, torch.Tensor):
        return _stack_tensors(batch, path, indices)
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind in "US":
            return default_collate(batch)  # type: ignore[arg-type]  # raises the same TypeError default_collate does
        tensors = [
            strict_asarray(
                a, field=path if indices else f"{path or '<sample>'} (batch position {i})", index=_index(indices, i)
            )
            for i, a in enumerate(batch)
        ]
        return _stack_tensors(tensors, path, indices)
    if isinstance(elem, (np.bool_, np.number)):
        return _stack_scalars(batch, path, indices)
    if isinstance(elem, (bool, int, float)):
        _check_same_type(batch, path, indices)
        return _stack_scalars(batch, path, indices)
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        fields = {k: _collate([d[k] for d in batch], _join(path, k), indices) for k in elem}
        if isinstance(elem, collections.abc.MutableMapping):
            clone = copy.copy(elem)
            clone.update(fields)
            return clone
        try:
            return type(elem)(fields)  # type: ignore[call-arg]
        except TypeError:
            return fields
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):
        return type(elem)(
            *(
                _collate(col, _join(path, f), indices)
                for col, f in zip(zip(*batch, strict=True), elem._fields, strict=True)
            )
        )
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
        fields_list = [_collate(col, _join(path, i), indices) for i, col in enumerate(zip(*batch, strict=True))]
        if isinstance(elem, tuple):
            return fields_list
        try:
            if isinstance(elem, collections.abc.MutableSequence):
                clone_seq = copy.copy(elem)
                for i, v in enumerate(fields_list):
                    clone_seq[i] = v
                return clone_seq
            return type(elem)(fields_list)  # type: ignore[call-arg]
        except TypeError:
            return fields_list
    return default_collate(batch)  # type: ignore[arg-type]


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
                "shape, or collate this field yourself",
                field=path,
                index=_index(indices, pos),
            )


def _stack_tensors(batch: Sequence[torch.Tensor], path: str | None, indices: list[int] | None) -> torch.Tensor:
    elem = batch[0]
    if elem.is_nested or elem.layout != torch.strided:
        return default_collate(batch)  # type: ignore[arg-type,no-any-return]  # same error default_collate gives for nested / sparse
    _check_uniform([(t.dtype, tuple(t.shape)) for t in batch], path, indices)
    out = allocate((len(batch), *elem.shape), elem.dtype, elem.device)
    torch.stack(list(batch), 0, out=out)
    record(STAGE, path or "<sample>", "stack: per-sample values", copied=nbytes(out))
    return out


def _stack_scalars(batch: Sequence[Any], path: str | None, indices: list[int] | None) -> torch.Tensor:
    specs = [value_spec(v) for v in batch]
    _check_uniform(specs, path, indices)  # type: ignore[arg-type]
    dtype = specs[0][0]  # type: ignore[index]
    out = allocate((len(batch),), dtype)
    out.numpy()[:] = batch
    record(STAGE, path or "<sample>", "stack: per-sample values", copied=nbytes(out))
    return out
