"""Small batches built a few at a time: one ``build_batch`` call for several index batches.

A shuffled batch of 64 token windows moves 64 KiB; the Python around it (the request, the
index check, the allocation, the ledger) costs as much as the copy itself. When a dataset says
its batches split along rows (:attr:`~zcopy_data.ZeroCopyDataset.splits_by_rows`: every field
one fixed-shape row per index, nothing that depends on which indices share a batch), the loader
(without workers, or on one of its gather threads, where a hand-off per batch costs as much again)
builds up to :func:`group_size` consecutive index batches with one call, into
one buffer per field, and hands out views of it, one batch at a time: the same rows in the same
order as built one by one, each batch contiguous. The ledger counts a batch when it is handed
out, with its share of the group's work (:func:`zcopy_data.ledger.held`), so ``explain`` and
every capture see per-batch figures.

A group is not built, and each of its batches is built alone at its turn, when one of them
would be a view on its own (a contiguous run), when their sizes differ, or when building the
group fails: the error is then raised at the batch it belongs to, as without groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from zcopy_data._requests import BatchRequest
from zcopy_data.ledger import Record, held

__all__ = ["Built", "build_group", "group_size"]

GROUP_BYTES = 1 << 21  # a group's output at most: it is read back while still in cache
MAX_GROUP = 32  # past this the Python per batch is already small next to the copy
_INT64 = np.dtype(np.int64)
_GROUPED_KINDS = ("host", "pinned")

Built = tuple[dict[str, torch.Tensor], list[Record]]  # a batch and its ledger records


def group_size(dataset: Any, batch_size: int, allocation: Any) -> int:
    """How many index batches of ``batch_size`` to build at once (1: one by one).

    Groups are built in host buffers and in torch's pinned ones (its allocator keeps a pinned
    block until every copy reading any view of it has completed). Shared-memory and exact pinned
    buffers are per batch by contract: a worker sends each batch's segment, and a device stage
    waits on each batch's own buffer before reusing it.
    """
    if batch_size < 1 or getattr(allocation, "kind", None) not in _GROUPED_KINDS:
        return 1
    if not getattr(dataset, "splits_by_rows", False):
        return 1
    row: int = sum(math.prod(f.shape) * f.dtype.itemsize for f in dataset.schema.values())
    if row <= 0:
        return 1
    return max(1, min(MAX_GROUP, GROUP_BYTES // (row * batch_size)))


def build_group(dataset: Any, batches: Sequence[Any], allocation: Any) -> list[Built] | None:
    """Each of ``batches`` (index arrays) with its records, built by one ``build_batch`` call;
    ``None`` when they are to be built one by one instead."""
    k = len(batches)
    if k < 2:
        return None
    first = batches[0]
    size = first.size if type(first) is np.ndarray else 0
    for b in batches:
        if type(b) is not np.ndarray or b.dtype != _INT64 or b.ndim != 1 or b.size != size or size < 1:
            return None
    grid = np.stack(batches)
    if bool((grid[:, -1] - grid[:, 0] == size - 1).any()):
        return None  # one of them may be a contiguous run: alone, it would be a view
    total = k * size
    try:
        idx, run = BatchRequest(dataset, grid.reshape(-1)).resolve()  # type: ignore[arg-type]
        with held() as records:
            out = dataset.build_batch(idx, run, allocation)
    except Exception:  # rebuilt batch by batch, each raising at its own turn
        return None
    if type(out) is not dict or not all(type(t) is torch.Tensor and t.ndim and len(t) == total for t in out.values()):
        return None  # not one row per index: handed out as built one by one
    parts = [t.split(size) for t in out.values()]  # k views each, one call per field
    names = list(out)
    views_per_batch = zip(*parts, strict=True)
    return [(dict(zip(names, views, strict=True)), _share(records, k, j)) for j, views in enumerate(views_per_batch)]


def _share(records: list[Record], k: int, j: int) -> list[Record]:
    """Batch ``j``'s part of ``k`` batches' records: an equal share, the remainder on the last."""
    last = j == k - 1
    return [
        (stage, name, why, viewed // k + (viewed % k if last else 0), copied // k + (copied % k if last else 0))
        for stage, name, why, viewed, copied in records
    ]
