"""The one gather: a view for a contiguous run, else one ``index_select`` per field into its buffer.

Every source uses it -- in-memory and memory-mapped columns, Arrow record batches, the labels of
an image folder -- so the rules live here once: a contiguous run is a view (zero bytes copied),
any other batch is exactly one copy per field straight into a buffer of the allocation handed
down, and unsigned dtypes that ``index_select`` has no kernel for move the same bits as signed.
Every byte is counted in the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from zcopy_data._storage import nbytes
from zcopy_data.ledger import COLLATE, record
from zcopy_data.memory.policy import Allocation

__all__ = ["gather_fields", "select_rows", "take_rows", "view_rows"]

_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def take_rows(src: torch.Tensor, rows: torch.Tensor, allocation: Allocation) -> torch.Tensor:
    """``src[rows]`` as one ``index_select`` into a buffer from ``allocation``."""
    return select_rows(src, rows, allocation((rows.numel(), *src.shape[1:]), src.dtype))


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
    for name, src in sources.items():
        buf = take_rows(src, rows, allocation)
        record(stage, name, gather_why, copied=nbytes(buf))
        out[name] = buf
    return out
