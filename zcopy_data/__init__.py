"""zcopy_data: zero-copy PyTorch data loading that counts every copy it makes.

>>> import numpy as np
>>> from torch.utils.data import DataLoader
>>> from zcopy_data import NumpyDataset, zero_copy_collate
>>> ds = NumpyDataset({"image": np.zeros((32, 3, 8, 8), np.uint8), "label": np.arange(32)})
>>> batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=zero_copy_collate)))
>>> batch["image"].shape, batch["label"].dtype
(torch.Size([8, 3, 8, 8]), torch.int64)
"""

from zcopy_data.collate import zero_copy_collate
from zcopy_data.datasets import NumpyDataset, ZeroCopyDataset
from zcopy_data.errors import (
    CopyRequiredError,
    DtypeDriftError,
    SampleIndexError,
    SchemaError,
    ShapeMismatchError,
    ZeroCopyError,
)
from zcopy_data.explain import explain
from zcopy_data.ledger import LEDGER, CopyLedger
from zcopy_data.schema import Field, Schema
from zcopy_data.strict import strict_asarray
from zcopy_data.transfer import Cast, DeviceCast, DevicePrefetcher, PinnedBufferPool, to_device, validate_cast

__version__ = "0.1.0"

__all__ = [
    "LEDGER",
    "Cast",
    "CopyLedger",
    "CopyRequiredError",
    "DeviceCast",
    "DevicePrefetcher",
    "DtypeDriftError",
    "Field",
    "NumpyDataset",
    "PinnedBufferPool",
    "SampleIndexError",
    "Schema",
    "SchemaError",
    "ShapeMismatchError",
    "ZeroCopyDataset",
    "ZeroCopyError",
    "__version__",
    "explain",
    "strict_asarray",
    "to_device",
    "validate_cast",
    "zero_copy_collate",
]
