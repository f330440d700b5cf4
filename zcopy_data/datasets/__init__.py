"""Datasets that hand batches to ``zero_copy_collate`` as views or one gather."""

from typing import TYPE_CHECKING

from zcopy_data.datasets.base import BatchRequest, SampleBatch, ZeroCopyDataset
from zcopy_data.datasets.concat import ConcatZeroCopyDataset, concat
from zcopy_data.datasets.numpy import NumpyDataset
from zcopy_data.datasets.packed import PackedDataset
from zcopy_data.datasets.tokens import TokenDataset
from zcopy_data.errors import CorruptFileError, SkippedFileWarning, UnsupportedColumnError

if TYPE_CHECKING:
    from zcopy_data.datasets.arrow import ArrowDataset
    from zcopy_data.datasets.images import ImageFolderDataset

__all__ = [
    "ArrowDataset",
    "BatchRequest",
    "ConcatZeroCopyDataset",
    "CorruptFileError",
    "ImageFolderDataset",
    "NumpyDataset",
    "PackedDataset",
    "SampleBatch",
    "SkippedFileWarning",
    "TokenDataset",
    "UnsupportedColumnError",
    "ZeroCopyDataset",
    "concat",
]


def __getattr__(name: str) -> object:
    # pyarrow and Pillow are optional extras: import them only when their dataset is used.
    if name == "ArrowDataset":
        try:
            from zcopy_data.datasets.arrow import ArrowDataset
        except ImportError as err:
            raise ImportError(f"ArrowDataset needs pyarrow: pip install 'zcopy-data[arrow]' ({err})") from None
        return ArrowDataset
    if name == "ImageFolderDataset":
        try:
            from zcopy_data.datasets.images import ImageFolderDataset
        except ImportError as err:
            raise ImportError(f"ImageFolderDataset needs Pillow: pip install 'zcopy-data[images]' ({err})") from None
        return ImageFolderDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
