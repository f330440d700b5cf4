"""Collating batches: views, one gather, or one stack into a buffer of the allocation handed down."""

from zcopy_data.collate.collate import zero_copy_collate

__all__ = ["zero_copy_collate"]
