from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, default_collate

from zcopy_data import DtypeDriftError, Field, Schema, SchemaError, ZeroCopyDataset, zero_copy_collate
from zcopy_data.datasets import BatchRequest, SampleBatch


class Columns(ZeroCopyDataset):
    def __init__(self, n=20):
        self.x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        self.y = np.arange(n, dtype=np.int64)

    def columns(self):
        return {"x": self.x, "y": self.y}


class PerSample(ZeroCopyDataset):
    schema: ClassVar = Schema({"x": Field(torch.float32, (2,)), "y": Field(torch.int64)})

    def __init__(self, bad_at=None):
        self.bad_at = bad_at

    def __len__(self):
        return 10

    def __getitem__(self, i):
        dtype = np.float64 if i == self.bad_at else np.float32
        return {"x": np.full(2, i, dtype=dtype), "y": i}


class Frozen(ZeroCopyDataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return (torch.full((3,), i, dtype=torch.int16), np.float32(i))


def test_columnar_gets_len_getitem_getitems():
    ds = Columns()
    assert len(ds) == 20
    assert ds[3]["y"] == 3 and np.shares_memory(ds[3]["x"], ds.x)
    req = ds.__getitems__([4, 5])
    assert isinstance(req, BatchRequest) and len(req) == 2
    assert ds.schema == Schema({"x": Field(torch.float32, (2,)), "y": Field(torch.int64)})


def test_batch_request_is_accepted_by_default_collate_too():
    ds = Columns()
    ours = zero_copy_collate(ds.__getitems__([7, 2, 9]))
    theirs = default_collate(ds.__getitems__([7, 2, 9]))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k])


def test_declared_class_schema_is_used_and_checked():
    ds = PerSample()
    assert ds.schema["x"] == Field(torch.float32, (2,))
    batch = DataLoader(ds, batch_size=5, collate_fn=zero_copy_collate)
    first = next(iter(batch))
    assert first["x"].dtype == torch.float32 and first["y"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DtypeDriftError, match="field 'x' at index 7: expected float32"):
        list(DataLoader(PerSample(bad_at=7), batch_size=5, collate_fn=zero_copy_collate))
    with pytest.raises(DtypeDriftError, match="field 'x' at index 0: expected float32, found float64"):
        list(DataLoader(PerSample(bad_at=0), batch_size=5, collate_fn=zero_copy_collate))


def test_schema_frozen_from_sample_zero_and_tuple_samples_collate_to_lists():
    ds = Frozen()
    assert ds.schema == Schema({"0": Field(torch.int16, (3,)), "1": Field(torch.float32)})
    samples = ds.__getitems__([0, 1, 2])
    assert isinstance(samples, SampleBatch) and samples.indices == [0, 1, 2]
    out = zero_copy_collate(samples)
    ref = default_collate([ds[i] for i in range(3)])
    assert isinstance(out, list) and len(out) == 2
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]) and out[1].dtype == ref[1].dtype


def test_instance_schema_assignment():
    ds = Columns()
    ds.schema = {"x": Field(torch.float32, (2,)), "y": Field(torch.int64)}
    assert isinstance(ds.schema, Schema)
    ds.schema = {"x": Field(torch.float64, (2,)), "y": Field(torch.int64)}
    with pytest.raises(DtypeDriftError):
        _ = ds.schema


def test_columns_must_be_arrays_of_equal_length():
    class Bad(ZeroCopyDataset):
        def columns(self):
            return {"a": np.zeros(3), "b": np.zeros(4)}

    with pytest.raises(SchemaError, match="field 'b': has 4 samples but field 'a' has 3"):
        len(Bad())

    class Listy(ZeroCopyDataset):
        def columns(self):
            return {"a": [1, 2]}

    with pytest.raises(SchemaError, match="field 'a': a column must be a NumPy array or tensor, found list"):
        len(Listy())


def test_empty_per_sample_dataset_has_no_frozen_schema():
    class Empty(ZeroCopyDataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    with pytest.raises(SchemaError, match="no schema can be frozen"):
        _ = Empty().schema
    assert list(DataLoader(Empty(), batch_size=4, collate_fn=zero_copy_collate)) == []


def test_subset_forwards_batched_fetch():
    ds = Columns()
    sub = Subset(ds, [10, 11, 12, 3])
    batches = list(DataLoader(sub, batch_size=4, collate_fn=zero_copy_collate))
    assert batches[0]["y"].tolist() == [10, 11, 12, 3]


def test_tensor_columns_work():
    class T(ZeroCopyDataset):
        def __init__(self):
            self.t = torch.arange(12, dtype=torch.int32).reshape(6, 2)

        def columns(self):
            return {"t": self.t}

    ds = T()
    view = zero_copy_collate(ds.__getitems__([1, 2]))["t"]
    assert view.data_ptr() == ds.t[1].data_ptr()
    assert zero_copy_collate(ds.__getitems__([5, 0]))["t"].tolist() == [[10, 11], [0, 1]]
