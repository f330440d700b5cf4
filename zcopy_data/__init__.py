"""zcopy_data: zero-copy PyTorch data loading that counts every copy it makes.

>>> import numpy as np
>>> from torch.utils.data import DataLoader
>>> from zcopy_data import NumpyDataset, zero_copy_collate
>>> ds = NumpyDataset({"image": np.zeros((32, 3, 8, 8), np.uint8), "label": np.arange(32)})
>>> batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=zero_copy_collate)))
>>> batch["image"].shape, batch["label"].dtype
(torch.Size([8, 3, 8, 8]), torch.int64)
"""

from typing import TYPE_CHECKING

from zcopy_data.collate import zero_copy_collate
from zcopy_data.datasets import NumpyDataset, PackedDataset, TokenDataset, ZeroCopyDataset
from zcopy_data.errors import (
    CopyRequiredError,
    CorruptFileError,
    DeviceMemoryError,
    DtypeDriftError,
    FileChangedError,
    PoolExhaustedError,
    ResumeStateError,
    SampleIndexError,
    SchemaError,
    ShapeMismatchError,
    SharedMemoryExhaustedError,
    SkippedFileWarning,
    UnsupportedColumnError,
    ZeroCopyError,
)
from zcopy_data.explain import explain
from zcopy_data.ledger import LEDGER, CopyLedger
from zcopy_data.loader import ZeroCopyDataLoader
from zcopy_data.ragged import Ragged
from zcopy_data.samplers import BlockShuffleSampler, LazyShuffleSampler
from zcopy_data.schema import Field, Schema
from zcopy_data.strict import strict_asarray
from zcopy_data.transfer import (
    Cast,
    DeviceCast,
    DevicePrefetcher,
    DeviceResidentDataset,
    PinnedBufferPool,
    to_device,
    to_device_resident,
    validate_cast,
)

if TYPE_CHECKING:
    from zcopy_data.datasets import ArrowDataset, ImageFolderDataset
    from zcopy_data.writer import WriteReport, write

__version__ = "0.1.0"

__all__ = [
    "LEDGER",
    "ArrowDataset",
    "BlockShuffleSampler",
    "Cast",
    "CopyLedger",
    "CopyRequiredError",
    "CorruptFileError",
    "DeviceCast",
    "DeviceMemoryError",
    "DevicePrefetcher",
    "DeviceResidentDataset",
    "DtypeDriftError",
    "Field",
    "FileChangedError",
    "ImageFolderDataset",
    "LazyShuffleSampler",
    "NumpyDataset",
    "PackedDataset",
    "PinnedBufferPool",
    "PoolExhaustedError",
    "Ragged",
    "ResumeStateError",
    "SampleIndexError",
    "Schema",
    "SchemaError",
    "ShapeMismatchError",
    "SharedMemoryExhaustedError",
    "SkippedFileWarning",
    "TokenDataset",
    "UnsupportedColumnError",
    "WriteReport",
    "ZeroCopyDataLoader",
    "ZeroCopyDataset",
    "ZeroCopyError",
    "__version__",
    "explain",
    "strict_asarray",
    "to_device",
    "to_device_resident",
    "validate_cast",
    "write",
    "zero_copy_collate",
]


def __getattr__(name: str) -> object:
    # ArrowDataset needs pyarrow and ImageFolderDataset Pillow (optional extras): imported on first use.
    if name in ("ArrowDataset", "ImageFolderDataset"):
        import zcopy_data.datasets as datasets

        return getattr(datasets, name)
    if name in ("WriteReport", "write"):  # the writer needs pyarrow too
        import zcopy_data.writer as writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
