"""Datasets that hand batches to ``zero_copy_collate`` as views or one gather."""

from zcopy_data.datasets.base import BatchRequest, SampleBatch, ZeroCopyDataset
from zcopy_data.datasets.numpy import NumpyDataset

__all__ = ["BatchRequest", "NumpyDataset", "SampleBatch", "ZeroCopyDataset"]
