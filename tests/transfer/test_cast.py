from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import DtypeDriftError, Field, NumpyDataset, Schema, SchemaError, zero_copy_collate
from zcopy_data.ledger import capture
from zcopy_data.transfer import Cast, DeviceCast, DevicePrefetcher, to_device, validate_cast

SCHEMA = Schema({"image": Field(torch.uint8, (3, 4, 4)), "label": Field(torch.int64), "z": Field(torch.complex64)})
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@pytest.mark.parametrize(
    ("cast", "error", "words"),
    [
        ({"img": torch.float16}, SchemaError, ["'img'", "no such field", "'image'"]),
        ({"label": torch.float16, "imag": torch.float32}, SchemaError, ["'imag'", "no such field"]),
        ({"z": torch.float32}, DtypeDriftError, ["'z'", "complex64", "imaginary"]),
        ({"image": Cast(torch.float16, mean=[0.5, 0.5])}, SchemaError, ["'image'", "2 channels", "(3, 4, 4)"]),
        ({"label": Cast(torch.float32, mean=[0.1, 0.2, 0.3])}, SchemaError, ["'label'", "3 channels"]),
        ({"image": {"dtype": torch.int32, "scale": 2}}, SchemaError, ["'image'", "floating target"]),
        ({"image": {"dtype": torch.float32, "std": [1.0, 0.0, 1.0]}}, SchemaError, ["'image'", "non-zero"]),
        ({"image": "float17"}, SchemaError, ["'image'", "not a dtype"]),
        ({"image": {"dtype": torch.float16, "scal": 1}}, SchemaError, ["'image'", "unknown cast option", "scal"]),
        ({"image": {"scale": 1}}, SchemaError, ["'image'", "needs a 'dtype'"]),
        ({"image": {"dtype": torch.float16, "mean": float("nan")}}, SchemaError, ["'image'", "finite"]),
    ],
)
def test_bad_cast_maps_are_rejected_naming_the_field(cast, error, words):
    with pytest.raises(error) as info:
        validate_cast(SCHEMA, cast)
    for w in words:
        assert w in str(info.value)


def test_float_to_integer_is_rejected_as_truncating():
    schema = Schema({"x": Field(torch.float32, (2,))})
    with pytest.raises(DtypeDriftError, match=r"field 'x': cannot cast float32 to int64 \(values would be truncated"):
        validate_cast(schema, {"x": torch.int64})
    assert validate_cast(schema, {"x": torch.float16})["x"].dtype == torch.float16


def test_error_carries_the_field_attribute():
    with pytest.raises(SchemaError) as info:
        validate_cast(SCHEMA, {"nope": torch.float16})
    assert info.value.field == "nope"


def test_non_mapping_cast_is_rejected():
    with pytest.raises(SchemaError, match="cast must be a mapping"):
        DeviceCast(torch.float16)  # type: ignore[arg-type]


def test_prefetcher_rejects_a_bad_cast_before_any_batch():
    pulled = []
    ds = NumpyDataset({"image": np.zeros((8, 3, 4, 4), np.uint8), "label": np.arange(8)})

    class Watched(DataLoader):
        def __iter__(self):
            pulled.append(1)
            return super().__iter__()

    loader = Watched(ds, batch_size=4, collate_fn=zero_copy_collate)
    with pytest.raises(SchemaError, match="'imgae'"):
        DevicePrefetcher(loader, "cpu", cast={"imgae": torch.float16})
    with pytest.raises(DtypeDriftError, match="'label'"):
        DevicePrefetcher(loader, "cpu", cast={"label": torch.bool, "image": Cast(torch.float16, mean=[1.0])})
    assert pulled == []


def test_without_a_schema_the_first_batch_is_checked():
    batch = {"image": torch.zeros((2, 3, 4, 4), dtype=torch.uint8)}
    with pytest.raises(SchemaError, match="'label'"):
        to_device(batch, "cpu", cast={"label": torch.float32})
    with pytest.raises(SchemaError, match="2 channels"):
        to_device(batch, "cpu", cast={"image": Cast(torch.float32, std=[1.0, 2.0])})


def test_normalisation_matches_the_formula():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 4, 4)
    cast = DeviceCast({"image": Cast(torch.float32, scale=1 / 255, mean=MEAN, std=STD)}, SCHEMA)
    out = cast({"image": x, "label": torch.arange(2)})["image"]
    want = (x.double() / 255 - torch.tensor(MEAN).double().view(3, 1, 1)) / torch.tensor(STD).double().view(3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    half = DeviceCast({"image": Cast(torch.float16, scale=1 / 255, mean=MEAN, std=STD)})({"image": x})["image"]
    assert half.dtype == torch.float16
    assert torch.equal(half, out.half())  # one rounding, from the float32 result


def test_cast_never_writes_to_its_input_and_passes_other_fields_through():
    x = torch.rand(4, 3, 2, 2)
    before = x.clone()
    label = torch.arange(4)
    out = DeviceCast({"x": Cast(torch.float32, mean=0.5, std=2.0)})({"x": x, "label": label, "name": "a"})
    assert torch.equal(x, before)
    assert out["x"].data_ptr() != x.data_ptr()
    torch.testing.assert_close(out["x"], (x - 0.5) / 2)
    assert out["label"] is label and out["name"] == "a"


def test_tuple_batches_are_named_by_position():
    batch = (torch.ones(2, 3, dtype=torch.uint8), torch.arange(2))
    out = to_device(batch, "cpu", cast={"0": Cast(torch.float16, scale=0.5)})
    assert isinstance(out, tuple)
    assert out[0].dtype == torch.float16 and torch.equal(out[0], torch.full((2, 3), 0.5, dtype=torch.float16))
    assert out[1] is batch[1]


def test_casts_are_counted_in_the_ledger():
    batch = {"image": torch.zeros((2, 3, 4, 4), dtype=torch.uint8), "label": torch.arange(2)}
    with capture() as records:
        to_device(batch, "cpu", cast={"image": torch.float16, "label": torch.int64})
    casts = {r[1]: r for r in records if r[0] == "cast"}
    assert casts["image"][2].startswith("uint8 -> float16") and casts["image"][4] == 2 * 48 * 2
    assert casts["label"][2].startswith("already int64") and casts["label"][4] == 0


def test_output_schema_is_what_the_model_receives():
    cast = DeviceCast({"image": Cast(torch.float16, scale=1 / 255)})
    assert cast.output_schema(SCHEMA)["image"] == Field(torch.float16, (3, 4, 4))
    assert cast.output_schema(SCHEMA)["label"] == SCHEMA["label"]
