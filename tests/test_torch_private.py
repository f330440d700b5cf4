"""The private torch names zcopy_data relies on still exist and still mean what we read them as.

Two, both in :mod:`zcopy_data.loader`: ``torch.autograd._profiler_enabled``, which tells whether a
profiler records, so batches are labelled as ``DataLoader`` labels them only then; and
``DataLoader._index_sampler``, where PyTorch's own iterators (worker processes) take an epoch's
indices, so a resumed epoch starts at its batch there. A torch release that drops or changes either
fails here, loudly, rather than silently losing the labels or replaying an epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

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


def test_dataloader_iterators_take_their_indices_from_index_sampler() -> None:
    assert isinstance(DataLoader.__dict__["_index_sampler"], property)
    ds = NumpyDataset({"x": np.arange(100, dtype=np.int64)})

    class Offset(DataLoader):  # type: ignore[type-arg]
        @property
        def _index_sampler(self) -> list[list[int]]:
            return [[7, 8], [9]]

    for workers in (0, 2):  # the single-process iterator and the worker processes' one
        got = [b["x"].tolist() for b in Offset(ds, batch_size=10, num_workers=workers)]
        assert got == [[7, 8], [9]]
    resumed = ZeroCopyDataLoader(ds, batch_size=10, num_workers=2, worker_mode="processes")
    first = ZeroCopyDataLoader(ds, batch_size=10)
    it = iter(first)
    next(it)
    resumed.load_state_dict(first.state_dict())
    assert [b["x"][0].item() for b in resumed] == list(range(10, 100, 10))
