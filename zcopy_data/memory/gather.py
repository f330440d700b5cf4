"""The one gather: a view for a contiguous run, else one copy per field into its buffer.

Every source uses it -- in-memory and memory-mapped columns, Arrow record batches, the labels of
an image folder -- so the rules live here once: a contiguous run is a view (zero bytes copied),
any other batch is exactly one copy per field straight into a buffer of the allocation handed
down, and unsigned dtypes that ``index_select`` has no kernel for move the same bits as signed.
Every byte is counted in the ledger.

Who copies is the allocation's word too: by default one ``index_select`` on torch's intra-op
threads (all cores, for a batch assembled alone); under an allocation whose ``gather_threads``
is 1 -- what a loader hands its gather threads, several batches being in flight at once -- the
calling thread alone, so the threads in use never exceed the cores the loader was given.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from zcopy_data._storage import nbytes
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation

__all__ = ["gather_fields", "one_thread", "select_rows", "take_on_this_thread", "take_rows", "view_rows"]

_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


# the same bits as an integer NumPy has, by element size: a one-thread copy of any dtype
_NUMPY_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def one_thread(allocation: Allocation) -> bool:
    """Whether ``allocation`` asks for gathers on the calling thread alone (see :mod:`.policy`)."""
    return getattr(allocation, "gather_threads", None) == 1


def take_rows(src: torch.Tensor, rows: torch.Tensor, allocation: Allocation) -> torch.Tensor:
    """``src[rows]`` as one gather into a buffer from ``allocation``."""
    out = allocation((rows.numel(), *src.shape[1:]), src.dtype)
    return take_on_this_thread(src, rows, out) if one_thread(allocation) else select_rows(src, rows, out)


def take_on_this_thread(src: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``src[rows]`` written into ``out`` by the calling thread alone; returns ``out``.

    ``np.take`` over the same bits: one thread whatever torch's intra-op setting, and the GIL is
    released while it copies, so gather threads neither oversubscribe the cores nor wait for
    each other. ``rows`` must be valid positions (``mode="clip"`` writes straight into ``out``;
    every caller passes indices a batch request checked). Anything NumPy cannot view (a device
    tensor, an element size it has no integer for) goes to :func:`select_rows`, and so does a
    source that is not C-contiguous: ``np.take`` would first copy all of it, and a sharded
    source's strided span over several mappings also covers the unmapped gaps between them.
    """
    bits = _NUMPY_BITS.get(src.element_size())
    if (
        bits is None
        or src.device.type != "cpu"
        or out.device.type != "cpu"
        or not out.is_contiguous()
        or not src.is_contiguous()
    ):
        return select_rows(src, rows, out)
    np.take(src.view(bits).numpy(), rows.numpy(), axis=0, mode="clip", out=out.view(bits).numpy())
    return out


def select_rows(src: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``src[rows]`` written into ``out`` by one ``index_select``; returns ``out``."""
    bits = _SAME_BITS.get(src.dtype)
    if bits is None:
        torch.index_select(src, 0, rows, out=out)
    else:  # index_select has no kernels for wide unsigned types: move the same bits as signed
        torch.index_select(src.view(bits), 0, rows, out=out.view(bits))
    return out


def view_rows(src: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``src``: a view."""
    return src[start:stop]


def gather_fields(
    sources: Mapping[str, torch.Tensor],
    rows: torch.Tensor,
    run: tuple[int, int] | None,
    allocation: Allocation,
    *,
    view_why: str = "view: indices contiguous",
    gather_why: str = "gather: indices not contiguous",
    stage: str = COLLATE,
) -> dict[str, torch.Tensor]:
    """Each field's batch: a view when ``run`` is given, else one gather of ``rows``."""
    out: dict[str, torch.Tensor] = {}
    if run is not None:
        start, stop = run
        for name, src in sources.items():
            t = src[start:stop]
            record(stage, name, view_why, viewed=nbytes(t))
            out[name] = t
        return out
    k = rows.numel()
    take = take_on_this_thread if one_thread(allocation) else select_rows
    for name, src in sources.items():  # take_rows, inlined: this runs per field and batch
        buf = take(src, rows, allocation((k, *src.shape[1:]), src.dtype))
        record(stage, name, gather_why, copied=buf.numel() * buf.element_size())
        out[name] = buf
    return out
