"""The private torch names zcopy_data relies on still exist and still mean what we read them as.

One today: ``torch.autograd._profiler_enabled`` (in :mod:`zcopy_data.loader`), which tells whether a
profiler records, so batches are labelled as ``DataLoader`` labels them only then. A torch release
that drops or changes it fails here, loudly, rather than silently losing the labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from zcopy_data import NumpyDataset, ZeroCopyDataLoader


def test_profiler_enabled_exists_and_follows_the_profiler() -> None:
    assert callable(torch.autograd._profiler_enabled)  # type: ignore[attr-defined]
    assert torch.autograd._profiler_enabled() is False  # type: ignore[attr-defined]
    ds = NumpyDataset({"x": np.arange(64, dtype=np.float32)})
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        assert torch.autograd._profiler_enabled() is True  # type: ignore[attr-defined]
        assert sum(len(b["x"]) for b in ZeroCopyDataLoader(ds, batch_size=16)) == 64
    labels = [e.name for e in prof.events() if e.name.startswith("enumerate(DataLoader)#")]
    assert len(labels) >= 4 and all(name.endswith(".__next__") for name in labels)
