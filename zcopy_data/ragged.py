"""Variable-length fields: values + offsets in, packed, padded or nested batches out.

A ragged column stores its samples back to back: ``values`` of shape ``(total, *inner)`` and
``offsets`` of ``n + 1`` non-decreasing integers, sample ``i`` being
``values[offsets[i]:offsets[i + 1]]`` -- the layout of Arrow ``list`` columns and of a pair of
``.npy`` files. Its schema field is ``Field(dtype, (None, *inner))``. A batch comes out as the
user declares (``output=``):

* ``"packed"``: ``{"values": (sum of lengths, *inner), "cu_seqlens": int32 (B + 1,)}``, the layout
  of FlashAttention's varlen kernels. A contiguous run of samples is a view of the values plus
  its ``B + 1`` rebased offsets; any other batch is one vectorised copy of its segments;
* ``"padded"``: ``{"values": (B, max_len, *inner)`` filled with ``pad_value``, ``"lengths"``:
  int64 ``(B,)``, ``"mask"``: bool ``(B, max_len)}``;
* ``"nested"``: a ``torch.nested`` jagged tensor over the packed values.

Every byte written is counted in the ledger; offsets are checked once, when the column is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from zcopy_data._storage import nbytes
from zcopy_data.errors import SchemaError, ShapeMismatchError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.gather import select_rows
from zcopy_data.memory.policy import HOST, Allocation
from zcopy_data.strict import strict_asarray

__all__ = [
    "OUTPUTS",
    "Ragged",
    "check_offsets",
    "gather_segments",
    "gather_target",
    "length_histogram",
    "ragged_batch",
    "ragged_settings",
    "segment_rows",
    "segments_output",
    "stack_ragged",
    "view_segments",
]

OUTPUTS = ("packed", "padded", "nested")
_Ints = np.ndarray[Any, np.dtype[np.int64]]


def _check_output(output: str, pad_value: Any) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}: a ragged field is batched as one of {list(OUTPUTS)}")
    if not isinstance(pad_value, (int, float, bool)):
        raise ValueError(f"pad_value={pad_value!r} should be a number")


def check_offsets(offsets: np.ndarray[Any, Any], values: int, name: str, *, where: str = "", row0: int = 0) -> _Ints:
    """``offsets`` as int64 after the checks every batch relies on; a clear error otherwise.

    ``where`` (a file and record batch) prefixes the messages; ``row0`` is the dataset index of
    the first sample these offsets describe, so a bad one is named by its dataset index.
    """
    at = f"{where}: " if where else ""
    if offsets.ndim != 1 or offsets.size < 1 or offsets.dtype.kind not in "iu":
        raise SchemaError(
            f"{at}field {name!r}: offsets must be a 1-D integer array of n + 1 entries, found "
            f"{offsets.dtype} of shape {offsets.shape}",
            field=name,
        )
    off = offsets.astype(np.int64, copy=False)
    if int(off[0]) < 0:
        raise SchemaError(f"{at}field {name!r}: offsets start at {int(off[0])}, a negative position", field=name)
    steps = np.diff(off)
    if steps.size and int(steps.min()) < 0:
        i = int(np.flatnonzero(steps < 0)[0])
        raise SchemaError(
            f"{at}field {name!r} at index {row0 + i}: offsets decrease ({int(off[i])} then {int(off[i + 1])}); "
            "sample i is values[offsets[i]:offsets[i + 1]], so offsets never decrease",
            field=name,
            index=row0 + i,
        )
    if int(off[-1]) > values:
        raise SchemaError(
            f"{at}field {name!r}: offsets end at {int(off[-1])}, past the {values} values; "
            "the offsets do not belong to these values",
            field=name,
        )
    return off


class Ragged:
    """A variable-length column for :class:`~zcopy_data.NumpyDataset` and other columnar datasets.

    Args:
        values: ``(total, *inner)`` array (or ``.npy`` path, for ``NumpyDataset``).
        offsets: ``n + 1`` integers (or ``.npy`` path): sample ``i`` is ``values[offsets[i]:offsets[i + 1]]``.
        output: ``"packed"`` (default), ``"padded"`` or ``"nested"`` -- see the module docstring.
        pad_value: what ``"padded"`` fills past each sample's length.

    >>> col = Ragged(np.arange(6, dtype=np.int32), np.array([0, 2, 2, 6]))
    >>> col.n, col.lengths.tolist()
    (3, [2, 0, 4])
    """

    def __init__(self, values: Any, offsets: Any, *, output: str = "packed", pad_value: Any = 0) -> None:
        _check_output(output, pad_value)
        self.values = values
        self.offsets = offsets
        self.output = output
        self.pad_value = pad_value
        self._off: _Ints | None = None

    @property
    def is_open(self) -> bool:
        return isinstance(self.values, (np.ndarray, torch.Tensor)) and isinstance(
            self.offsets, (np.ndarray, torch.Tensor)
        )

    def opened(self, values: Any, offsets: Any) -> Ragged:
        """The same column over these arrays (a dataset opens its files with this)."""
        return Ragged(values, offsets, output=self.output, pad_value=self.pad_value)

    def checked(self, name: str) -> _Ints:
        """The int64 offsets, checked against the values once (cached)."""
        if self._off is None:
            values = np.asarray(self.values) if not isinstance(self.values, torch.Tensor) else self.values
            if values.ndim < 1:
                raise SchemaError(f"field {name!r}: ragged values need at least one axis", field=name)
            off = self.offsets.numpy() if isinstance(self.offsets, torch.Tensor) else np.asarray(self.offsets)
            self._off = check_offsets(off, int(values.shape[0]), name)
        return self._off

    @property
    def n(self) -> int:
        """Samples in the column."""
        return int(np.asarray(self.offsets).shape[0]) - 1

    @property
    def lengths(self) -> _Ints:
        off = np.asarray(self.offsets, dtype=np.int64)
        return off[1:] - off[:-1]

    @property
    def ragged_spec(self) -> tuple[torch.dtype, tuple[int | None, ...]]:
        """``(dtype, (None, *inner))``: the schema field of one sample."""
        t = torch.from_numpy(np.asarray(self.values[:0])) if not isinstance(self.values, torch.Tensor) else self.values
        return t.dtype, (None, *t.shape[1:])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_off": None}

    def __repr__(self) -> str:
        return f"Ragged({self.n} samples, output={self.output!r})"


def segment_rows(begins: _Ints, lengths: _Ints, step: int = 1) -> tuple[_Ints, _Ints]:
    """The batch's offsets and the source row of every value, for samples at ``begins`` (rows ``step`` apart)."""
    cu = np.zeros(begins.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    within = np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1], lengths)
    return cu, np.repeat(begins, lengths) + (within if step == 1 else within * step)


def ragged_batch(
    name: str,
    column: Ragged,
    values: torch.Tensor,
    indices: _Ints,
    run: tuple[int, int] | None,
    alloc: Allocation,
) -> Any:
    """The batch of ``indices`` of one ragged column, as ``column.output`` says."""
    off = column.checked(name)
    if column.output != "padded" and run is not None:
        return view_segments(name, column.output, values, off[run[0] : run[1] + 1], alloc)
    begins, lengths = off[indices], off[indices + 1] - off[indices]
    return gather_segments(name, column.output, column.pad_value, values, begins, lengths, alloc)


def gather_segments(
    name: str,
    output: str,
    pad_value: Any,
    source: torch.Tensor,
    begins: _Ints,
    lengths: _Ints,
    alloc: Allocation,
    step: int = 1,
) -> Any:
    """The batch of samples ``source[begins[j] + k * step for k < lengths[j]]``, one copy of their values.

    ``source`` is the rows every sample's values live in (a column's values, or a strided view
    over a file mapping whose rows are ``step`` apart); ``output`` says how the batch comes out.
    """
    cu64, flat = segment_rows(begins, lengths, step)
    shape = (flat.size, *source.shape[1:])
    seg = select_rows(source, torch.from_numpy(flat), gather_target(output, alloc)(shape, source.dtype))
    return segments_output(name, output, pad_value, seg, lengths, cu64, alloc)


def gather_target(output: str, alloc: Allocation) -> Allocation:
    """Where a batch's values are gathered: the batch's own buffer, or a scratch one that padding reads."""
    return HOST if output == "padded" else alloc


def segments_output(
    name: str,
    output: str,
    pad_value: Any,
    values: torch.Tensor,
    lengths: _Ints,
    cu64: _Ints,
    alloc: Allocation,
    where: str = "",
) -> Any:
    """A batch's gathered values (its samples back to back, lengths ``lengths``) as ``output`` says.

    ``where``: appended to the values' ledger reason (a sharded source names its shards there)."""
    if output == "padded":
        return _padded(name, pad_value, values, lengths, cu64, alloc, where)
    record(COLLATE, name, f"gather: ragged segments of the batch{where}", copied=nbytes(values))
    cu = alloc((lengths.size + 1,), torch.int32)
    cu.numpy()[:] = cu64
    record(COLLATE, f"{name}.cu_seqlens", "offsets: the batch's", copied=nbytes(cu))
    return _as_output(output, values, cu)


def view_segments(
    name: str, output: str, values: torch.Tensor, offsets: _Ints, alloc: Allocation, where: str = ""
) -> Any:
    """A contiguous run of samples as a view of ``values`` (its first value to its last) plus rebased offsets.

    ``offsets``: the run's ``B + 1`` offsets into ``values``' rows; ``output`` is "packed" or "nested";
    ``where`` is appended to the view's ledger reason.
    """
    vals = values[int(offsets[0]) : int(offsets[-1])]
    record(COLLATE, name, f"view: ragged values of contiguous samples{where}", viewed=nbytes(vals))
    cu = alloc((offsets.size,), torch.int32)
    np.subtract(offsets, offsets[0], out=cu.numpy(), casting="unsafe")
    record(COLLATE, f"{name}.cu_seqlens", "offsets: rebased for the batch", copied=nbytes(cu))
    return _as_output(output, vals, cu)


def _as_output(output: str, vals: torch.Tensor, cu: torch.Tensor) -> Any:
    if output == "nested":
        return torch.nested.nested_tensor_from_jagged(vals, offsets=cu.to(torch.int64))
    return {"values": vals, "cu_seqlens": cu}


def _padded(
    name: str, pad_value: Any, seg: torch.Tensor, lengths: _Ints, cu64: _Ints, alloc: Allocation, where: str = ""
) -> dict[str, torch.Tensor]:
    """The samples ``seg`` holds back to back, placed in a ``(B, max_len, *inner)`` buffer filled with ``pad_value``."""
    batch, inner = lengths.size, seg.shape[1:]
    width = int(lengths.max()) if batch else 0
    buf = alloc((batch, width, *inner), seg.dtype)
    buf.fill_(pad_value)
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)
    cols = np.arange(seg.shape[0], dtype=np.int64) - np.repeat(cu64[:-1], lengths)
    buf.view(batch * width, *inner).index_copy_(0, torch.from_numpy(rows * width + cols), seg)
    why = f"pad: segments gathered, then placed in a padded buffer{where}"
    record(COLLATE, name, why, copied=nbytes(seg) + nbytes(buf))
    lens = alloc((batch,), torch.int64)
    lens.numpy()[:] = lengths
    mask = alloc((batch, width), torch.bool)
    np.less(np.arange(width), lengths[:, None], out=mask.numpy())
    record(COLLATE, f"{name}.lengths", "computed: lengths and mask", copied=nbytes(lens) + nbytes(mask))
    return {"values": buf, "lengths": lens, "mask": mask}


def stack_ragged(
    samples: Sequence[torch.Tensor], name: str, output: str, pad_value: Any, alloc: Allocation
) -> Any:
    """Per-sample arrays of differing first dimension, batched as ``output`` (one copy of the values)."""
    _check_output(output, pad_value)
    first = samples[0]
    for pos, t in enumerate(samples):
        if t.ndim < 1 or t.dtype != first.dtype or t.shape[1:] != first.shape[1:]:
            raise ShapeMismatchError(
                f"field {name!r} at batch position {pos}: a ragged field varies only in its first dimension; "
                f"expected {first.dtype} of shape (?, {', '.join(map(str, first.shape[1:]))}), "
                f"found {t.dtype} of shape {tuple(t.shape)}",
                field=name,
            )
    values = [strict_asarray(t, field=name, allow_read_only=True) for t in samples]
    lengths = np.array([v.shape[0] for v in values], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    packed = alloc((int(offsets[-1]), *first.shape[1:]), first.dtype)
    torch.cat(values, 0, out=packed)
    record(COLLATE, name, "cat: ragged per-sample values", copied=nbytes(packed))
    if output == "padded":
        return _padded(name, pad_value, packed, lengths, offsets, alloc)
    cu = alloc((len(values) + 1,), torch.int32)
    cu.numpy()[:] = offsets
    record(COLLATE, f"{name}.cu_seqlens", "offsets: the batch's", copied=nbytes(cu))
    return _as_output(output, packed, cu)


def ragged_settings(ragged: Mapping[str, str | Mapping[str, Any]] | None) -> dict[str, tuple[str, Any]]:
    """``{field: (output, pad_value)}`` from a ``ragged=`` argument.

    Each value is an output name (``"packed"``) or ``{"output": ..., "pad_value": ...}``.
    """
    out: dict[str, tuple[str, Any]] = {}
    for name, how in (ragged or {}).items():
        if isinstance(how, str):
            out[name] = (how, 0)
        elif isinstance(how, Mapping) and set(how) <= {"output", "pad_value"}:
            out[name] = (str(how.get("output", "packed")), how.get("pad_value", 0))
        else:
            raise ValueError(
                f"ragged[{name!r}]={how!r}: give 'packed', 'padded' or 'nested', or {{'output': ..., 'pad_value': ...}}"
            )
        _check_output(*out[name])
    return out


def length_histogram(lengths: np.ndarray[Any, Any]) -> str:
    """``min 0, median 17, max 39; 0: 12, 1-2: 30, ...``: samples per power-of-two length bucket.

    >>> length_histogram(np.array([0, 1, 2, 3, 7, 8, 9]))
    'min 0, median 3, max 9; 0: 1, 1: 1, 2: 1, 3-4: 1, 5-8: 2, 9-16: 1'
    """
    if lengths.size == 0:
        return "none (no samples)"
    lo, mid, hi = int(lengths.min()), int(np.median(lengths)), int(lengths.max())
    buckets = np.zeros(max(hi - 1, 0).bit_length() + 2, dtype=np.int64)
    nonzero = lengths[lengths > 0]
    buckets[0] = lengths.size - nonzero.size
    # bucket k >= 1 holds lengths 2**(k-2) + 1 .. 2**(k-1): 1, 2, 3-4, 5-8, ...
    np.add.at(buckets, np.ceil(np.log2(nonzero)).astype(np.int64) + 1, 1)
    parts = []
    for k, count in enumerate(buckets.tolist()):
        if not count:
            continue
        first, last = (0, 0) if k == 0 else ((1 << (k - 2)) + 1 if k >= 2 else 1, 1 << (k - 1))
        parts.append(f"{first}: {count}" if first == last else f"{first}-{last}: {count}")
    return f"min {lo}, median {mid}, max {hi}; " + ", ".join(parts)
