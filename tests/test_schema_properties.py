"""Property tests: a schema accepts exactly the matching samples and names the first mismatch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tests.support import consume
from zcopy_data import (
    DtypeDriftError,
    Field,
    NumpyDataset,
    Schema,
    SchemaError,
    ShapeMismatchError,
    ZeroCopyDataset,
    zero_copy_collate,
)

pytestmark = pytest.mark.reliability

SETTINGS = settings(max_examples=100, deadline=None)
DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
          torch.float64, torch.complex64]  # fmt: skip
NAMES = ["image", "label", "mask", "depth", "id", "0"]

fields = st.builds(
    Field,
    st.sampled_from(DTYPES),
    st.lists(st.one_of(st.none(), st.integers(0, 4)), max_size=3),
)
schemas = st.dictionaries(st.sampled_from(NAMES), fields, min_size=1, max_size=4).map(Schema)


def _value(field: Field, rng: np.random.Generator, kind: str) -> Any:
    shape = tuple(int(rng.integers(0, 4)) if d is None else d for d in field.shape)
    arr = torch.zeros(shape, dtype=field.dtype).numpy()
    if kind == "tensor":
        return torch.from_numpy(arr)
    if kind == "python" and shape == ():
        if field.dtype == torch.int64:
            return 7
        if field.dtype == torch.float64:
            return 0.5
        if field.dtype == torch.bool:
            return True
    if kind == "scalar" and shape == ():
        return arr[()]
    return arr


def _other_dtype(dtype: torch.dtype) -> torch.dtype:
    return DTYPES[(DTYPES.index(dtype) + 1) % len(DTYPES)]


def _other_shape(shape: tuple[int | None, ...], rng: np.random.Generator) -> tuple[int, ...]:
    fixed = [i for i, d in enumerate(shape) if d is not None]
    if fixed and rng.integers(0, 2):
        i = fixed[int(rng.integers(0, len(fixed)))]
        return tuple((d or 0) + (1 if j == i else 0) for j, d in enumerate(shape))
    return (*(d or 1 for d in shape), 1)  # one more dimension: never accepted


@SETTINGS
@given(schema=schemas, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["array", "tensor", "python", "scalar"]))
def test_a_matching_sample_is_accepted(schema: Schema, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    sample = {name: _value(f, rng, kind) for name, f in schema.items()}
    schema.check_sample(sample, index=3)
    frozen = Schema.from_sample(sample)
    frozen.check_sample(sample)
    schema.check_compatible(frozen)  # the frozen schema is at least as specific as the declared one


@SETTINGS
@given(schema=schemas, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_the_error_names_the_first_mismatching_field(schema: Schema, seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    names = list(schema)
    broken = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="broken fields")
    how = {n: data.draw(st.sampled_from(["dtype", "shape", "text"]), label=f"how {n}") for n in broken}
    index = data.draw(st.integers(0, 10**6), label="index")
    sample: dict[str, Any] = {}
    for name, f in schema.items():
        if how.get(name) == "dtype":
            sample[name] = _value(Field(_other_dtype(f.dtype), f.shape), rng, "array")
        elif how.get(name) == "shape":
            sample[name] = np.zeros(_other_shape(f.shape, rng), dtype=torch.zeros(0, dtype=f.dtype).numpy().dtype)
        elif how.get(name) == "text":
            sample[name] = "not a number"
        else:
            sample[name] = _value(f, rng, "array")
    first = next(n for n in names if n in broken)
    expected = {"dtype": DtypeDriftError, "shape": ShapeMismatchError, "text": SchemaError}[how[first]]
    with pytest.raises(SchemaError) as err:
        schema.check_sample(sample, index=index)
    assert type(err.value) is expected
    assert err.value.field == first
    assert err.value.index == index
    assert str(err.value).startswith(f"field {first!r} at index {index}: expected ")


@SETTINGS
@given(schema=schemas, data=st.data())
def test_missing_extra_or_reordered_fields_are_refused(schema: Schema, data: st.DataObject) -> None:
    rng = np.random.default_rng(0)
    sample = {name: _value(f, rng, "array") for name, f in schema.items()}
    change = data.draw(st.sampled_from(["drop", "add", "reorder"]))
    if change == "drop":
        sample.pop(data.draw(st.sampled_from(list(sample))))
    elif change == "add":
        sample["extra_field"] = np.zeros(1)
    else:
        if len(sample) < 2:
            sample["extra_field"] = np.zeros(1)
        sample = dict(reversed(list(sample.items())))
    with pytest.raises(SchemaError, match=r"sample at index 5: expected fields \[.*\], found \[.*\]") as err:
        schema.check_sample(sample, index=5)
    assert err.value.index == 5


@SETTINGS
@given(ours=schemas, data=st.data())
def test_configuration_drift_is_reported_before_the_first_batch(ours: Schema, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(ours)))
    theirs = Schema({name: Field(_other_dtype(ours[name].dtype), ours[name].shape)})
    with pytest.raises(DtypeDriftError, match=f"field {name!r}: the dataset gives .* the model expects"):
        ours.check_compatible(theirs)
    ours.check_compatible(Schema({name: ours[name]}))


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("not_a_dtype", ()), (object, ()), (torch.float32, (-1,)), (torch.float32, (1.5,)), (torch.float32, (True,))],
)
def test_invalid_field_declarations_are_schema_errors(dtype: Any, shape: tuple[Any, ...]) -> None:
    with pytest.raises(SchemaError):
        Field(dtype, shape)


def test_declared_schema_that_disagrees_with_the_columns_fails_at_construction() -> None:
    cols = {"image": np.zeros((4, 2, 2), np.uint8), "label": np.zeros(4, np.int32)}
    with pytest.raises(DtypeDriftError, match=r"field 'label': the columns gives? int32\[\], the declared schema"):
        NumpyDataset(cols, schema={"image": Field(torch.uint8, (2, 2)), "label": Field(torch.int64)})
    with pytest.raises(ShapeMismatchError, match="field 'image'"):
        NumpyDataset(cols, schema={"image": Field(torch.uint8, (3, 2)), "label": Field(torch.int32)})
    with pytest.raises(SchemaError, match=r"declared fields \['label', 'image'\] differ from the columns"):
        NumpyDataset(cols, schema={"label": Field(torch.int32), "image": Field(torch.uint8, (2, 2))})


class _Drifting(ZeroCopyDataset):
    """Per-sample dataset whose sample ``bad`` has another dtype (float64 instead of float32)."""

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        dtype = np.float64 if i == self.bad else np.float32
        return {"x": np.full(2, i, dtype), "y": i}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("bad", [0, 13])
def test_per_sample_drift_names_the_dataset_index_through_a_loader(workers: int, bad: int) -> None:
    ds = _Drifting(20, bad)
    if bad == 0:
        ds.schema = {"x": Field(torch.float32, (2,)), "y": Field(torch.int64)}
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with pytest.raises(
        DtypeDriftError, match=rf"field 'x' at index {bad}: expected float32( \(as sample \d+\))?, found float64"
    ):
        consume(loader)
