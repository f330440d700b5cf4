"""``TokenDataset``: a flat token file served as language-model windows, zero-copy.

Sample ``i`` is the window ``tokens[i * stride : i * stride + seq_len + 1]``, delivered as
``{"input": window[:-1], "target": window[1:]}``, both contiguous, in the stored dtype (``uint16``
travels as 2 bytes a token, not 8; widen it on the device with ``Cast(torch.int64)``). A batch of
consecutive windows with ``stride == seq_len`` is a view of the file (input and target are two
overlapping views of the same tokens); any other batch is one ``index_select`` per field over a
strided view of the tokens -- one gather per batch, not one per window. Nothing reads the tokens
when the dataset is built, and with :class:`~zcopy_data.samplers.LazyShuffleSampler` no index
array of the dataset's length is built either: the first shuffled batch over 10**9 tokens costs
what it costs over 10**4.

Document boundaries -- a Megatron-LM ``.idx``, or ``eos_id`` -- give the optional fields
``position_ids`` (restarting at 0 at each document start and at the window start, as Megatron's
``reset_position_ids``), ``doc_ids`` (0 at the window start, +1 at each document start) and
``cu_seqlens`` (``int32`` boundaries of the batch's documents in the flattened ``(B * seq_len)``
input, row starts included: the layout of FlashAttention's varlen kernels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets._token_files import Source, TokenSource, open_tokens
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import CopyRequiredError, FileChangedError, SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.gather import select_rows
from zcopy_data.memory.policy import Allocation, HostAllocation
from zcopy_data.schema import Field, Schema

__all__ = ["TokenDataset"]

_BOUNDARY_FIELDS = ("position_ids", "doc_ids", "cu_seqlens")
_FIELDS = ("input", "target", *_BOUNDARY_FIELDS)


class TokenDataset(ZeroCopyDataset):
    """Windows of ``seq_len + 1`` tokens of a flat token source, as ``input``/``target`` pairs.

    Args:
        source: a 1-D integer NumPy array, a ``.npy`` file, a raw ``.bin`` (give ``dtype``:
            nanoGPT writes ``uint16``), or a Megatron-LM pair (its prefix, ``.bin`` or ``.idx``).
        seq_len: tokens per ``input`` (and per ``target``).
        stride: tokens between window starts. Default ``seq_len``: disjoint inputs, every token a
            target once. ``1``: every offset, nanoGPT's sampling (a shuffled batch then holds
            windows from anywhere, but consecutive windows share all but one token).
        dtype: the tokens' dtype: required for a raw ``.bin``, checked against the others.
        eos_id: the end-of-document token, for the boundary fields when there is no ``.idx``.
        fields: which fields a batch holds, from ``input``, ``target``, ``position_ids``,
            ``doc_ids`` and ``cu_seqlens``.
        copy: copy consecutive batches too (in-place ops on a batch never reach other batches).

    >>> ds = TokenDataset(np.arange(10, dtype=np.uint16), seq_len=4)
    >>> len(ds), ds[1]["input"].tolist(), ds[1]["target"].tolist()
    (2, [4, 5, 6, 7], [5, 6, 7, 8])
    """

    def __init__(
        self,
        source: Source,
        seq_len: int,
        *,
        stride: int | None = None,
        dtype: Any = None,
        eos_id: int | None = None,
        fields: Sequence[str] = ("input", "target"),
        copy: bool = False,
    ) -> None:
        for name, value in (("seq_len", seq_len), ("stride", seq_len if stride is None else stride)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SchemaError(f"TokenDataset: {name}={value!r} should be a positive integer")
        self.seq_len = int(seq_len)
        self.stride = self.seq_len if stride is None else int(stride)
        self.copy = copy
        self.eos_id = None if eos_id is None else int(eos_id)
        self.fields = tuple(fields)
        unknown = [f for f in self.fields if f not in _FIELDS]
        if unknown or not self.fields or len(set(self.fields)) != len(self.fields):
            raise SchemaError(f"TokenDataset: fields={list(fields)!r}; choose distinct names from {list(_FIELDS)}")
        self._source = source
        self._dtype = dtype
        src = self._open({})
        if not src.tokens.flags.writeable and not copy:
            raise CopyRequiredError(
                "the token array is read-only, and a zero-copy batch over it could be written through; "
                "pass a writable array, a file path, or copy=True"
            )
        self.kind = src.kind
        self.token_count = int(src.tokens.shape[0])
        self.token_dtype = src.tokens.dtype
        self.documents = None if src.doc_starts is None else int(src.doc_starts.size - 1)
        self._files = dict(src.files)
        if self.token_count < self.seq_len + 1:
            raise SchemaError(
                f"TokenDataset: seq_len={self.seq_len} needs windows of {self.seq_len + 1} tokens, the source has "
                f"{self.token_count}; use a smaller seq_len or more data"
            )
        if self.eos_id is not None:
            info = np.iinfo(self.token_dtype)
            if not info.min <= self.eos_id <= info.max:
                raise SchemaError(
                    f"TokenDataset: eos_id={self.eos_id} is not a {self.token_dtype.name} token "
                    f"({info.min}..{info.max}); pass the end-of-document id the tokens were written with"
                )
        wants = [f for f in self.fields if f in _BOUNDARY_FIELDS]
        if wants and src.doc_starts is None and self.eos_id is None:
            raise SchemaError(
                f"TokenDataset: fields {wants} need document boundaries; pass eos_id= (the end-of-document token) "
                "or a Megatron-LM .bin/.idx pair"
            )
        self._windows = (self.token_count - self.seq_len - 1) // self.stride + 1
        self._pair = tuple((f, ("input", "target").index(f)) for f in self.fields if f in ("input", "target"))
        self._boundaries = bool(wants)
        self.schema = Schema({f: self._field(f) for f in self.fields})
        self._state: TokenSource | FileChangedError | None = src

    # -- sources -------------------------------------------------------------------------
    def _open(self, known: dict[str, Any]) -> TokenSource:
        return open_tokens(self._source, self._dtype, known)

    def _src(self) -> TokenSource:
        state = self._state
        if isinstance(state, FileChangedError):
            raise state
        if state is None:
            state = self._state = self._open(self._files)
        return state

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.get("_zc_tens")
        if cache is None:
            tokens = torch.from_numpy(self._src().tokens)
            n, length, step = self._windows, self.seq_len, self.stride
            base = tokens.storage_offset()
            cache = (
                tokens.as_strided((n, length), (step, 1), base),
                tokens.as_strided((n, length), (step, 1), base + 1),
            )
            self.__dict__["_zc_tens"] = cache
        return cache

    def check_sources(self) -> None:
        """The token files are still the ones the dataset was built on (one ``stat`` each)."""
        self._src().check_unchanged()

    # -- schema and size -----------------------------------------------------------------
    def _field(self, name: str) -> Field:
        if name in ("input", "target"):
            return Field(self.token_dtype, (self.seq_len,))
        if name == "cu_seqlens":
            return Field(torch.int32, (None,))
        return Field(torch.int64, (self.seq_len,))

    @property
    def window_overlap(self) -> int:
        """Input tokens two consecutive windows share (0 unless ``stride < seq_len``)."""
        return max(0, self.seq_len - self.stride)

    @property
    def threads_suffice(self) -> bool:
        return True  # views and index_select: kernels that release the GIL

    @property
    def splits_by_rows(self) -> bool:
        return "cu_seqlens" not in self.fields  # per batch; positions and document ids are per row

    def batch_is_view(self, run: Run | None) -> bool:
        return run is not None and self.stride == self.seq_len and not self.copy

    def __len__(self) -> int:
        return self._windows

    # -- batches -------------------------------------------------------------------------
    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, torch.Tensor]:
        self._src().check_unchanged()
        inputs, targets = self._tensors()
        pair = self._pair
        out: dict[str, torch.Tensor] = {}
        if run is not None and self.stride == self.seq_len and not self.copy:
            start, stop = run
            for name, k in pair:
                t = (inputs, targets)[k][start:stop]
                record(COLLATE, name, "view: consecutive token windows", viewed=nbytes(t))
                out[name] = t
        elif pair:
            rows = torch.from_numpy(indices)
            why = "gather: copy=True" if self.copy and run is not None else "gather: windows not consecutive"
            # one buffer for both fields: one allocation, and one shared-memory segment from a worker
            buf = allocation((len(pair), indices.size, self.seq_len), inputs.dtype)
            for j, (name, k) in enumerate(pair):
                t = select_rows((inputs, targets)[k], rows, buf[j])
                record(COLLATE, name, why, copied=nbytes(t))
                out[name] = t
        if self._boundaries:
            first = self._starts_document(indices * self.stride, out.get("input"), inputs, indices)
            self._boundary_fields(first, allocation, out)
            return {name: out[name] for name in self.fields}
        return out

    def _starts_document(
        self, starts: np.ndarray[Any, Any], batch_input: torch.Tensor | None, inputs: torch.Tensor, rows: Indices
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """``(B, seq_len)`` bools: True where an input token starts a document (column 0 always)."""
        length = self.seq_len
        first = np.zeros((starts.size, length), dtype=np.bool_)
        first[:, 0] = True
        doc_starts = self._src().doc_starts
        if doc_starts is not None:
            lo = np.searchsorted(doc_starts, starts, side="right")
            hi = np.searchsorted(doc_starts, starts + length, side="left")
            counts = hi - lo
            if counts.sum():
                row = np.repeat(np.arange(starts.size), counts)
                offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
                first[row, doc_starts[np.repeat(lo, counts) + offsets] - starts[row]] = True
        if self.eos_id is not None:
            tokens = (batch_input if batch_input is not None else inputs[torch.from_numpy(rows)]).numpy()
            first[:, 1:] |= tokens[:, :-1] == np.asarray(self.eos_id).astype(tokens.dtype)
        return first

    def _boundary_fields(
        self, first: np.ndarray[Any, np.dtype[np.bool_]], allocation: Allocation, out: dict[str, torch.Tensor]
    ) -> None:
        batch, length = first.shape
        if "position_ids" in self.fields:
            cols = np.arange(length, dtype=np.int64)
            last = np.maximum.accumulate(np.where(first, cols, 0), axis=1)
            buf = allocation((batch, length), torch.int64)
            np.subtract(cols, last, out=buf.numpy())
            record(COLLATE, "position_ids", "computed: positions from document starts", copied=nbytes(buf))
            out["position_ids"] = buf
        if "doc_ids" in self.fields:
            buf = allocation((batch, length), torch.int64)
            np.cumsum(first, axis=1, out=buf.numpy())
            buf -= 1
            record(COLLATE, "doc_ids", "computed: document numbers from document starts", copied=nbytes(buf))
            out["doc_ids"] = buf
        if "cu_seqlens" in self.fields:
            flat = np.flatnonzero(first.reshape(-1))
            buf = allocation((flat.size + 1,), torch.int32)
            view = buf.numpy()
            view[:-1] = flat
            view[-1] = batch * length
            record(COLLATE, "cu_seqlens", "computed: document boundaries of the batch", copied=nbytes(buf))
            out["cu_seqlens"] = buf

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = as_index(index)
        n = self._windows
        if not -n <= i < n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {n} windows", index=i)
        i %= n
        inputs, targets = self._tensors()
        sample: dict[str, torch.Tensor] = {}
        if "input" in self.fields:
            sample["input"] = inputs[i]
        if "target" in self.fields:
            sample["target"] = targets[i]
        if any(f in _BOUNDARY_FIELDS for f in self.fields):
            starts = np.array([i * self.stride], dtype=np.int64)
            first = self._starts_document(starts, None, inputs, np.array([i], dtype=np.int64))
            extra: dict[str, torch.Tensor] = {}
            self._boundary_fields(first, HostAllocation(per_shape=1), extra)
            for name, t in extra.items():
                sample[name] = t if name == "cu_seqlens" else t[0]
        return {name: sample[name] for name in self.fields}

    # -- pickling ------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_zc_tens", None)
        # files travel as their paths (each process maps them); arrays travel with their data
        state["_state"] = self._state if self.kind == "array" else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._state is None:
            try:
                self._state = self._open(self._files)
            except FileChangedError as err:
                self._state = err  # raised at the first batch, where the loader reports it

    def __repr__(self) -> str:
        where = os.fspath(self._source) if isinstance(self._source, (str, os.PathLike)) else "array"
        docs = "" if self.documents is None else f", {self.documents} documents"
        return (
            f"TokenDataset({where!r}: {self.token_count} {self.token_dtype.name} tokens{docs}, "
            f"{len(self)} windows of seq_len={self.seq_len}, stride={self.stride})"
        )
