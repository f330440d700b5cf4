"""Storage use counts (the reuse rule's input) and the private torch name behind them.

``torch._C._storage_Use_Count`` is the only way torch offers to count references to a storage;
it lives in :mod:`zcopy_data._storage` alone. A torch release that removes or changes it fails
here first.
"""

from __future__ import annotations

import numpy as np
import torch

from zcopy_data._storage import nbytes, use_count


def test_the_private_use_count_still_exists() -> None:
    assert callable(torch._C._storage_Use_Count)


def test_every_view_array_and_storage_reference_counts() -> None:
    t = torch.zeros(16)
    base = use_count(t)
    v = t[2:5]
    assert use_count(t) == base + 1
    arr = v.numpy()  # a NumPy array over a view holds that view
    del v
    assert use_count(t) == base + 1
    del arr
    assert use_count(t) == base
    s = t.untyped_storage()
    assert use_count(s) == use_count(t)


def test_nbytes_counts_elements_not_the_storage() -> None:
    t = torch.zeros((10, 4), dtype=torch.float64)
    assert nbytes(t) == 320 and nbytes(t[2:3]) == 32 and nbytes(torch.from_numpy(np.zeros(0))) == 0
