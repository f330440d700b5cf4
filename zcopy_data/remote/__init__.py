"""Shards in object storage (``s3://``), fetched once into a bounded local cache, then read zero-copy.

>>> from zcopy_data.remote import ShardShuffleSampler
>>> sampler = ShardShuffleSampler([4, 4, 4], batch_size=2, window=2, num_replicas=1, rank=0)
>>> sorted(i for batch in sampler for i in batch)
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
"""

from zcopy_data.remote._cache import RemoteShards, default_remote_cache_dir
from zcopy_data.remote._dataset import remote_arrow_dataset, shard_rows
from zcopy_data.remote._download import RetryPolicy
from zcopy_data.remote._listing import RemoteShard
from zcopy_data.remote._sampler import ShardShuffleSampler

__all__ = [
    "RemoteShard",
    "RemoteShards",
    "RetryPolicy",
    "ShardShuffleSampler",
    "default_remote_cache_dir",
    "remote_arrow_dataset",
    "shard_rows",
]
