import numpy as np
import torch
from torch.utils.data import DataLoader

import zcopy_data as z


def test_contiguous_batch_is_a_view_of_the_file(npy_files):
    ds = z.NumpyDataset({k: str(v) for k, v in npy_files.items()})
    batch = next(iter(DataLoader(ds, batch_size=10, collate_fn=z.zero_copy_collate)))
    assert batch["image"].data_ptr() == ds.columns()["image"].ctypes.data
    assert torch.equal(batch["label"], torch.arange(10))
    assert np.array_equal(batch["image"].numpy(), np.load(npy_files["image"])[:10])
