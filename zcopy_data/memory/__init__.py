"""Batch memory: where buffers come from, when they may be reused, and how they cross processes.

* :mod:`~zcopy_data.memory.reuse` -- the one reuse rule (no references, no pending copy);
* :mod:`~zcopy_data.memory.policy` -- allocation policies handed down by loaders and device stages;
* :mod:`~zcopy_data.memory.pinned` -- exact-size pinned blocks and batch-slot pools;
* :mod:`~zcopy_data.memory.shared` and :mod:`~zcopy_data.memory.segment` -- a worker's
  shared-memory pool and the hand-off protocol of one segment;
* :mod:`~zcopy_data.memory.crossing` -- how a worker's tensors cross as handles or descriptors;
* :mod:`~zcopy_data.memory.gather` -- the one view-or-gather stage (who copies: the allocation says);
* :mod:`~zcopy_data.memory.inflight` -- host memory held until the device copies reading it end.

The copy-on-write file mappings and their registry sit one layer below, in
:mod:`zcopy_data._mapping`, because the strict conversion path maps files too.
"""

from zcopy_data.memory.policy import (
    Allocation,
    ExactPinnedAllocation,
    GatherThreadAllocation,
    HostAllocation,
    PinnedAllocation,
    SharedAllocation,
    default_allocation,
)

__all__ = [
    "Allocation",
    "ExactPinnedAllocation",
    "GatherThreadAllocation",
    "HostAllocation",
    "PinnedAllocation",
    "SharedAllocation",
    "default_allocation",
]
