"""``PackedDataset``: whole documents packed into rows of exactly ``seq_len`` tokens.

Each sample is one row: documents placed back to back (greedy in a seeded order, or best-fit
decreasing), the rest padded with ``pad_id``; a batch carries ``cu_seqlens`` (``int32``, the
documents' boundaries in the flattened ``(B * seq_len)`` batch, pad runs included as their own
segment) and ``position_ids`` restarting at each document, so attention never crosses a
document. Documents longer than ``seq_len`` are split into consecutive ``seq_len`` pieces (counted
in :attr:`PackedDataset.split_documents`) rather than cut: no token is dropped. The plan depends
on the seed only, so it is the same in every process and every resumed run; shuffle the rows with
a sampler (:class:`~zcopy_data.samplers.LazyShuffleSampler`) for a new order each epoch. A batch
is one vectorised gather of its documents' tokens into one buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.gather import select_rows
from zcopy_data.memory.policy import Allocation, HostAllocation
from zcopy_data.ragged import check_offsets
from zcopy_data.schema import Field, Schema
from zcopy_data.strict import strict_asarray

__all__ = ["PackedDataset", "pack"]

_Ints = np.ndarray[Any, np.dtype[np.int64]]
_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
METHODS = ("greedy", "best_fit")


def _pieces(starts: _Ints, lengths: _Ints, seq_len: int) -> tuple[_Ints, _Ints]:
    """Documents longer than ``seq_len`` as consecutive pieces of at most ``seq_len`` tokens."""
    count = np.maximum(1, -(-lengths // seq_len))
    owner = np.repeat(np.arange(lengths.size), count)
    k = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    piece_starts = starts[owner] + k * seq_len
    piece_lengths = np.minimum(lengths[owner] - k * seq_len, seq_len)
    return piece_starts, piece_lengths


def pack(lengths: _Ints, seq_len: int, *, method: str = "greedy", seed: int = 0) -> tuple[_Ints, _Ints]:
    """Rows of documents with at most ``seq_len`` tokens each: ``(order, row_of)`` -- the documents
    in placement order and the row each one goes to (rows numbered from 0, in order)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: packing is one of {list(METHODS)}")
    if lengths.size and int(lengths.max()) > seq_len:
        raise ValueError(f"a document of {int(lengths.max())} tokens does not fit rows of {seq_len}")
    n = lengths.size
    rows = np.empty(n, dtype=np.int64)
    if method == "greedy":
        order = np.random.default_rng(seed).permutation(n)
        row, used = 0, 0
        for pos, length in enumerate(lengths[order].tolist()):  # one pass: each document once
            if used + length > seq_len:
                row, used = row + 1, 0
            rows[pos] = row
            used += length
        return order, rows
    # best-fit decreasing: the longest first, each into the row it leaves least room in
    order = np.argsort(-lengths, kind="stable")
    by_room: list[list[int]] = [[] for _ in range(seq_len + 1)]  # rows, by the room they have left
    count = 0
    for pos, length in enumerate(lengths[order].tolist()):
        room = next((r for r in range(length, seq_len + 1) if by_room[r]), None)
        if room is None:
            row, room = count, seq_len
            count += 1
        else:
            row = by_room[room].pop()
        rows[pos] = row
        by_room[room - length].append(row)
    return order, rows


class PackedDataset(ZeroCopyDataset):
    """Rows of ``seq_len`` tokens packed from whole documents of a values + offsets column.

    Args:
        values: the 1-D token array (a NumPy array or tensor: a ``np.load(mmap_mode="c")`` file too).
        offsets: ``n_docs + 1`` integers: document ``d`` is ``values[offsets[d]:offsets[d + 1]]``.
        seq_len: tokens per row.
        method: ``"greedy"`` (documents in a seeded order, a new row when the next does not fit)
            or ``"best_fit"`` (longest first, each into the fullest row it fits: fewer pad tokens).
        seed: the packing plan's seed.
        pad_id: the token that fills the rest of a row.

    >>> ds = PackedDataset(np.arange(1, 8, dtype=np.int32), np.array([0, 3, 5, 7]), seq_len=4, method="best_fit")
    >>> len(ds), ds[0]["tokens"].tolist(), ds[0]["cu_seqlens"].tolist()
    (2, [1, 2, 3, 0], [0, 3, 4])
    """

    def __init__(
        self,
        values: Any,
        offsets: Any,
        seq_len: int,
        *,
        method: str = "greedy",
        seed: int = 0,
        pad_id: int = 0,
    ) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise SchemaError(f"PackedDataset: seq_len={seq_len!r} should be a positive integer")
        tokens = values if isinstance(values, torch.Tensor) else strict_asarray(values, field="tokens")
        if tokens.ndim != 1 or tokens.dtype.is_floating_point:
            raise SchemaError(
                f"PackedDataset: tokens must be a 1-D integer array, found {tokens.dtype} {tuple(tokens.shape)}"
            )
        off = check_offsets(np.asarray(offsets), int(tokens.shape[0]), "tokens")
        low, high = (int(torch.iinfo(tokens.dtype).min), int(torch.iinfo(tokens.dtype).max))
        if not low <= int(pad_id) <= high:
            raise SchemaError(
                f"PackedDataset: pad_id={pad_id} is not a {tokens.dtype} token ({low}..{high}); choose one the "
                "tokens' dtype holds"
            )
        self.seq_len, self.method, self.seed, self.pad_id = seq_len, method, seed, int(pad_id)
        self._tokens = tokens
        starts, lengths = _pieces(off[:-1], off[1:] - off[:-1], seq_len)
        self.split_documents = int(np.count_nonzero(off[1:] - off[:-1] > seq_len))
        keep = lengths > 0
        starts, lengths = starts[keep], lengths[keep]
        order, rows = pack(lengths, seq_len, method=method, seed=seed)
        # documents grouped by row, in placement order within each row
        by_row = np.argsort(rows, kind="stable")
        self._doc_starts = starts[order][by_row]
        self._doc_lengths = lengths[order][by_row]
        row_of = rows[by_row]
        self._rows = int(row_of[-1]) + 1 if row_of.size else 0
        self._row_first = np.searchsorted(row_of, np.arange(self._rows + 1))  # each row's first document
        self.schema = Schema({"tokens": Field(tokens.dtype, (seq_len,)), "position_ids": Field(torch.int64, (seq_len,)),
                              "cu_seqlens": Field(torch.int32, (None,))})  # fmt: skip

    @property
    def pad_fraction(self) -> float:
        """The share of pad tokens over all rows."""
        return 1.0 - float(self._doc_lengths.sum()) / max(1, self._rows * self.seq_len)

    @property
    def threads_suffice(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._rows

    def build_batch(  # rows are always gathered: a run is no view here
        self, indices: Indices, run: Run | None, allocation: Allocation  # noqa: ARG002
    ) -> dict[str, torch.Tensor]:
        first, last = self._row_first[indices], self._row_first[indices + 1]
        docs_per_row = last - first
        group = _first_of(docs_per_row)  # where each row's documents start in ``docs``
        docs = np.repeat(first - group, docs_per_row) + np.arange(int(docs_per_row.sum()))
        lengths, starts = self._doc_lengths[docs], self._doc_starts[docs]
        row = np.repeat(np.arange(indices.size), docs_per_row)
        ahead = _first_of(lengths)  # tokens before each document in the batch
        in_row = ahead - np.repeat(ahead[group[docs_per_row > 0]], docs_per_row[docs_per_row > 0])
        total = int(lengths.sum())
        tok_doc = np.repeat(np.arange(lengths.size), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = starts[tok_doc] + within
        dst = row[tok_doc] * self.seq_len + in_row[tok_doc] + within
        batch, width = indices.size, self.seq_len
        out = allocation((batch, width), self._tokens.dtype)
        out.fill_(self.pad_id)
        gathered = select_rows(self._tokens, torch.from_numpy(src), torch.empty(total, dtype=self._tokens.dtype))
        bits = _SAME_BITS.get(out.dtype, out.dtype)  # index_copy_ has no kernels for wide unsigned types
        out.view(bits).view(-1).index_copy_(0, torch.from_numpy(dst), gathered.view(bits))
        record(COLLATE, "tokens", "pack: documents gathered into rows", copied=nbytes(gathered) + nbytes(out))
        # segments: every document, and each row's pad run, in the flattened batch
        used = np.bincount(row, weights=lengths, minlength=batch).astype(np.int64)
        starts_flat = row * width + in_row
        pad_starts = np.flatnonzero(used < width) * width + used[used < width]
        bounds = np.union1d(np.concatenate([starts_flat, pad_starts, np.arange(batch) * width]), [batch * width])
        cu = allocation((bounds.size,), torch.int32)
        cu.numpy()[:] = bounds
        pos = allocation((batch, width), torch.int64)
        flat_first = np.zeros(batch * width, dtype=np.bool_)
        flat_first[bounds[:-1]] = True
        cols = np.arange(batch * width, dtype=np.int64)
        np.subtract(cols, np.maximum.accumulate(np.where(flat_first, cols, 0)), out=pos.numpy().reshape(-1))
        record(COLLATE, "cu_seqlens", "computed: document boundaries of the rows", copied=nbytes(cu) + nbytes(pos))
        return {"tokens": out, "position_ids": pos, "cu_seqlens": cu}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = as_index(index)
        if not -self._rows <= i < self._rows:
            raise SampleIndexError(f"index {i} is out of range for {self._rows} packed rows", index=i)
        batch = self.build_batch(np.array([i % self._rows], dtype=np.int64), None, HostAllocation(per_shape=1))
        return {
            "tokens": batch["tokens"][0],
            "position_ids": batch["position_ids"][0],
            "cu_seqlens": batch["cu_seqlens"],
        }

    def __repr__(self) -> str:
        return (
            f"PackedDataset({len(self._doc_lengths)} documents into {self._rows} rows of {self.seq_len}, "
            f"{self.method}, {self.pad_fraction:.1%} padding)"
        )


def _first_of(counts: _Ints) -> _Ints:
    """For each group of ``counts`` consecutive items, the index of its first item."""
    out: _Ints = np.cumsum(counts) - counts
    return out
