"""Property tests: ``zero_copy_collate`` is a drop-in for ``default_collate``.

Random nested sample structures (dicts, lists, tuples, namedtuples) with random leaves (tensors,
NumPy arrays and scalars, Python numbers, strings, bytes) of random dtypes and shapes must collate
to the same structure, types, dtypes, shapes and bytes. The one deliberate difference: values of
one field that disagree on dtype or Python type raise ``DtypeDriftError`` instead of being promoted.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

from zcopy_data import DtypeDriftError, ShapeMismatchError, zero_copy_collate
from zcopy_data.datasets import SampleBatch

pytestmark = pytest.mark.reliability

Pair = namedtuple("Pair", "first second")
Triple = namedtuple("Triple", "a b c")

NUMPY_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
]
# default_collate cannot batch NumPy uint64 *scalars* (torch.as_tensor raises); the collate can.
SCALAR_DTYPES = [d for d in NUMPY_DTYPES if d is not np.uint64]
TORCH_ONLY_DTYPES = [torch.bfloat16]

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


# -- a template is a structure whose leaves are specs; samples are drawn from it ------------------
leaf_specs = st.one_of(
    st.tuples(st.just("tensor"), st.sampled_from(NUMPY_DTYPES + TORCH_ONLY_DTYPES), shapes, st.booleans()),
    st.tuples(st.just("ndarray"), st.sampled_from(NUMPY_DTYPES), shapes, st.booleans()),
    st.tuples(st.just("npscalar"), st.sampled_from(SCALAR_DTYPES)),
    st.tuples(st.just("int")),
    st.tuples(st.just("float")),
    st.tuples(st.just("bool")),
    st.tuples(st.just("str")),
    st.tuples(st.just("bytes")),
)

keys = st.text("abcdefgh", min_size=1, max_size=4)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(keys, children, min_size=1, max_size=3).map(lambda d: ("dict", d)),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: ("list", xs)),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: ("tuple", xs)),
        st.tuples(children, children).map(lambda xs: ("pair", list(xs))),
        st.tuples(children, children, children).map(lambda xs: ("triple", list(xs))),
    )


templates = st.recursive(leaf_specs.map(lambda s: ("leaf", s)), _containers, max_leaves=6)


def _values(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    np_dtype = np.dtype(np.float32 if dtype is torch.bfloat16 else dtype)
    if np_dtype.kind == "b":
        out = rng.integers(0, 2, size=shape).astype(np.bool_)
    elif np_dtype.kind in "iu":
        info = np.iinfo(np_dtype)
        out = rng.integers(info.min, info.max, size=shape, dtype=np_dtype, endpoint=True)
    elif np_dtype.kind == "c":
        out = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        out = rng.standard_normal(shape) * 100
    return np.asarray(out).astype(np_dtype)


def _leaf(spec: tuple[Any, ...], rng: np.random.Generator) -> Any:
    kind = spec[0]
    if kind in ("tensor", "ndarray"):
        _, dtype, shape, transposed = spec
        arr = _values(rng, dtype, shape)
        if kind == "ndarray":
            return arr.T if transposed else arr  # a transposed array is not C-contiguous
        t = torch.from_numpy(arr.copy())
        if dtype is torch.bfloat16:
            t = t.to(torch.bfloat16)
        return t.T if transposed and t.ndim == 2 else t
    if kind == "npscalar":
        return _values(rng, spec[1], ())[()]
    if kind == "int":
        return int(rng.integers(-(2**62), 2**62))
    if kind == "float":
        return float(rng.standard_normal())
    if kind == "bool":
        return bool(rng.integers(0, 2))
    if kind == "str":
        return "".join(rng.choice(list("xyz"), size=int(rng.integers(0, 4))))
    return bytes(rng.integers(0, 256, size=int(rng.integers(0, 4)), dtype=np.uint8))


def _sample(template: tuple[str, Any], rng: np.random.Generator) -> Any:
    kind, body = template
    if kind == "leaf":
        return _leaf(body, rng)
    if kind == "dict":
        return {k: _sample(v, rng) for k, v in body.items()}
    children = [_sample(v, rng) for v in body]
    if kind == "list":
        return children
    if kind == "tuple":
        return tuple(children)
    if kind == "pair":
        return Pair(*children)
    return Triple(*children)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN-safe, dtype-agnostic equality)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same(ours: Any, theirs: Any, path: str = "batch") -> None:
    """Equal structure, container types, dtypes, shapes and bytes."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{path}: {type(ours).__name__} instead of a tensor"
        assert ours.dtype == theirs.dtype, f"{path}: dtype {ours.dtype} != {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{path}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
        assert torch.equal(_bits(ours), _bits(theirs)), f"{path}: values differ"
        return
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} != {type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), f"{path}: keys {list(ours)} != {list(theirs)}"
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{path}: length {len(ours)} != {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"


@SETTINGS
@given(template=templates, batch_size=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_collate_equals_default_collate(template: tuple[str, Any], batch_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = [_sample(template, rng) for _ in range(batch_size)]
    theirs = default_collate(batch)
    ours = zero_copy_collate(batch)
    assert_same(ours, theirs)


@SETTINGS
@given(template=templates, seed=st.integers(0, 2**32 - 1))
def test_collate_never_aliases_the_samples(template: tuple[str, Any], seed: int) -> None:
    """Per-sample values are stacked once into a fresh buffer: mutating the batch leaves samples intact."""
    rng = np.random.default_rng(seed)
    batch = [_sample(template, rng) for _ in range(3)]
    before = default_collate(batch)
    ours = zero_copy_collate(batch)

    def scribble(x: Any) -> None:
        if isinstance(x, torch.Tensor) and x.numel():
            x.view(torch.uint8).fill_(0xA5) if x.is_contiguous() else x.zero_()
        elif isinstance(x, dict):
            for v in x.values():
                scribble(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                scribble(v)

    scribble(ours)
    assert_same(default_collate(batch), before)


def test_strings_nested_in_a_sequence_keep_default_collate_tuple_type() -> None:
    """``default_collate`` returns the strings of a tuple/list/namedtuple field as a tuple (``zip(*batch)``)."""
    for batch in ([(1, "a"), (2, "b")], [[b"x", 1.0], [b"y", 2.0]], [Pair("s", 1), Pair("t", 2)]):
        assert_same(zero_copy_collate(batch), default_collate(batch))  # container types compared exactly


# -- the deliberate difference: drift raises instead of promoting ---------------------------------
PROMOTIONS = [
    (np.float32, np.float64),
    (np.int32, np.int64),
    (np.uint8, np.int16),
    (np.float16, np.float32),
    (np.int64, np.float64),
    (np.bool_, np.uint8),
]


@SETTINGS
@given(
    pair=st.sampled_from(PROMOTIONS),
    kind=st.sampled_from(["ndarray", "tensor", "npscalar"]),
    shape=shapes,
    batch_size=st.integers(2, 6),
    data=st.data(),
)
def test_mixed_dtypes_in_a_field_raise_drift_naming_field_and_index(
    pair: tuple[Any, Any], kind: str, shape: tuple[int, ...], batch_size: int, data: st.DataObject
) -> None:
    first, other = pair
    bad = data.draw(st.integers(1, batch_size - 1), label="first drifting sample")
    known = data.draw(
        st.none() | st.lists(st.integers(0, 10**6), min_size=batch_size, max_size=batch_size, unique=True),
        label="dataset indices (None: a plain list)",
    )
    rng = np.random.default_rng(0)

    def value(dtype: Any) -> Any:
        if kind == "npscalar":
            return _values(rng, dtype, ())[()]
        arr = _values(rng, dtype, shape)
        return torch.from_numpy(arr) if kind == "tensor" else arr

    batch: list[Any] = [{"x": {"y": value(other if i >= bad else first)}} for i in range(batch_size)]
    if known is not None:  # what a ZeroCopyDataset hands over: the samples and their dataset indices
        batch = SampleBatch(batch)
        batch.indices = known
    with pytest.raises(DtypeDriftError) as err:
        zero_copy_collate(batch)
    assert err.value.field == "x.y"
    if known is None:
        assert err.value.index is None
        assert f"field 'x.y' at batch position {bad}" in str(err.value)
    else:
        assert err.value.index == known[bad]
        assert f"field 'x.y' at index {known[bad]}" in str(err.value)
    want = str(torch.from_numpy(np.zeros(1, first)).dtype).removeprefix("torch.")
    found = str(torch.from_numpy(np.zeros(1, other)).dtype).removeprefix("torch.")
    assert f"expected {want}" in str(err.value)
    assert f"found {found}" in str(err.value)


@pytest.mark.parametrize(
    ("values", "promoted"),
    [([1, 2.5], torch.float32), ([1, True], torch.int64), ([2.5, 1], torch.float64)],
)
def test_mixed_python_number_types_raise_drift_where_default_collate_promotes(
    values: list[Any], promoted: torch.dtype
) -> None:
    batch = [(v,) for v in values]
    assert default_collate(batch)[0].dtype == promoted
    with pytest.raises(DtypeDriftError, match=r"field '0' at batch position 1: expected a (int|float)"):
        zero_copy_collate(batch)


def test_numpy_arrays_of_mixed_dtypes_promote_in_default_collate_but_raise_here() -> None:
    batch = [{"x": np.zeros(3, np.float32)}, {"x": np.zeros(3, np.float64)}]
    assert default_collate(batch)["x"].dtype == torch.float64  # silent promotion: the peer behaviour
    with pytest.raises(DtypeDriftError, match=r"field 'x' at batch position 1: expected float32 .* found float64"):
        zero_copy_collate(batch)


@SETTINGS
@given(shape=shapes.filter(lambda s: len(s) > 0), batch_size=st.integers(2, 5), data=st.data())
def test_mixed_shapes_in_a_field_raise_shape_mismatch(
    shape: tuple[int, ...], batch_size: int, data: st.DataObject
) -> None:
    bad = data.draw(st.integers(1, batch_size - 1))
    other = (*shape[:-1], shape[-1] + 1)
    batch = [{"img": np.zeros(other if i == bad else shape, np.uint8)} for i in range(batch_size)]
    with pytest.raises(ShapeMismatchError) as err:
        zero_copy_collate(batch)
    assert err.value.field == "img"
    assert f"field 'img' at batch position {bad}" in str(err.value)
    assert str(other) in str(err.value)


def test_uint64_numpy_scalars_collate_where_default_collate_fails() -> None:
    batch = [np.uint64(2**64 - 1), np.uint64(0)]
    with pytest.raises(TypeError):
        default_collate(batch)
    out = zero_copy_collate(batch)
    assert out.dtype == torch.uint64
    assert out.view(torch.int64).tolist() == [-1, 0]
