from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tests.support import loader_raises
from zcopy_data import DtypeDriftError, Field, Schema, SchemaError, ShapeMismatchError, zero_copy_collate
from zcopy_data.errors import CopyRequiredError, SampleIndexError, ZeroCopyError


@pytest.mark.parametrize("spec", [torch.uint8, np.uint8, np.dtype("uint8"), "uint8"])
def test_field_dtype_is_normalised(spec):
    assert Field(spec, (3, None)).dtype is torch.uint8
    assert Field(spec, [3, None]).shape == (3, None)


@pytest.mark.parametrize("shape", [(-1,), (1.5,), ("a",), (True,)])
def test_field_rejects_bad_shapes(shape):
    with pytest.raises(SchemaError, match="dimension"):
        Field(torch.float32, shape)


def test_field_rejects_non_dtype():
    with pytest.raises(SchemaError, match="not a dtype"):
        Field(object())
    with pytest.raises(SchemaError, match="no torch equivalent"):
        Field("U5")


def test_from_sample_dict_and_tuple():
    s = Schema.from_sample({"image": np.zeros((3, 4), np.uint8), "label": 3, "w": 0.5, "flag": True})
    assert s == Schema(
        {
            "image": Field(torch.uint8, (3, 4)),
            "label": Field(torch.int64),
            "w": Field(torch.float64),
            "flag": Field(torch.bool),
        }
    )
    t = Schema.from_sample((torch.zeros(2, dtype=torch.float16), np.int32(1)))
    assert list(t) == ["0", "1"] and t["1"].dtype is torch.int32


def test_from_sample_rejects_strings():
    with pytest.raises(SchemaError, match=r"field 'name'.*str"):
        Schema.from_sample({"name": "cat"})


def test_check_names_field_index_expected_found_and_fix():
    s = Schema({"image": Field(torch.uint8, (3, None))})
    s.check("image", torch.uint8, (3, 17))  # variable dimension accepts any size
    with pytest.raises(DtypeDriftError) as err:
        s.check("image", torch.float64, (3, 4), index=4171)
    msg = str(err.value)
    assert "field 'image' at index 4171: expected uint8, found float64" in msg
    assert "declare Field(torch.float64" in msg
    with pytest.raises(ShapeMismatchError, match=r"expected shape \(3, None\), found \(4, 4\)"):
        s.check("image", torch.uint8, (4, 4), index=1)
    with pytest.raises(SchemaError, match="not in the schema"):
        s.check("label", torch.int64, ())


def test_check_sample_names_first_mismatch():
    s = Schema({"a": Field(torch.float32), "b": Field(torch.int64, (2,))})
    s.check_sample({"a": np.float32(1), "b": np.zeros(2, np.int64)}, index=0)
    with pytest.raises(SchemaError, match=r"expected fields \['a', 'b'\], found \['a'\]"):
        s.check_sample({"a": np.float32(1)}, index=3)
    with pytest.raises(DtypeDriftError, match="field 'a' at index 9: expected float32, found float64"):
        s.check_sample({"a": 1.0, "b": np.zeros(2, np.int64)}, index=9)


def test_check_compatible_shows_both_sides():
    data = Schema({"image": Field(torch.uint8, (3, 8, 8)), "label": Field(torch.int64)})
    data.check_compatible(Schema({"image": Field(torch.uint8, (3, None, None))}))
    with pytest.raises(DtypeDriftError) as err:
        data.check_compatible(Schema({"image": Field(torch.float32, (3, 8, 8))}))
    assert "dataset gives uint8[3, 8, 8], the model expects float32[3, 8, 8]" in str(err.value)
    assert "cast={'image': torch.float32}" in str(err.value)
    with pytest.raises(ShapeMismatchError, match="model expects uint8"):
        data.check_compatible(Schema({"image": Field(torch.uint8, (1, 8, 8))}))
    with pytest.raises(SchemaError, match="has no such field"):
        data.check_compatible(Schema({"mask": Field(torch.bool)}))


@pytest.mark.parametrize(
    "cls", [ZeroCopyError, SchemaError, DtypeDriftError, ShapeMismatchError, CopyRequiredError, SampleIndexError]
)
def test_errors_rebuild_from_one_string(cls):
    err = cls("msg", field="f", index=1)
    again = cls(str(err))
    assert type(again) is cls and str(again) == "msg"


class _Drifting(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": np.zeros(2, np.float64 if i == 5 else np.float32)}


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_error_type_survives_worker_processes(ctx):
    loader = DataLoader(
        _Drifting(), batch_size=8, num_workers=1, collate_fn=zero_copy_collate, multiprocessing_context=ctx
    )
    with loader_raises(DtypeDriftError, match=r"field .x. at batch position 5: expected float32"):
        next(iter(loader))
