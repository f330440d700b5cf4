"""Drop-in cases a ``DataLoader`` user expects, and the errors that keep a batch from being silently wrong.

Keys beyond a batch's first sample, errors from worker processes that keep their field and index,
``explain`` leaving every RNG as it found it, the arguments PyTorch accepts (``batch_size=None``,
``requires_grad`` samples, ``int`` indices), the environment validated where the user looks, and
buffers that belong to the loader that needed them.
"""

from __future__ import annotations

import gc
import random
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from tests.support import loader_raises
from zcopy_data import (
    DtypeDriftError,
    NumpyDataset,
    SchemaError,
    ZeroCopyDataLoader,
    ZeroCopyDataset,
    explain,
    zero_copy_collate,
)
from zcopy_data.memory import policy

pytestmark = pytest.mark.reliability


class _Samples(ZeroCopyDataset):
    """Per-sample dicts; sample ``odd`` gets an extra key, sample ``short`` lacks one."""

    def __init__(self, n: int = 16, odd: int | None = None, short: int | None = None) -> None:
        self.n, self.odd, self.short = n, odd, short

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        s: dict[str, Any] = {"x": np.full(3, i, np.float32), "y": i}
        if i == self.odd:
            s["extra"] = np.zeros(2)
        if i == self.short:
            del s["y"]
        return s


@pytest.mark.parametrize("workers", [0, 2])
def test_an_extra_or_missing_key_beyond_the_first_sample_is_a_schema_error(workers: int) -> None:
    for ds, key, index, what in (
        (_Samples(odd=5), "extra", 5, "has extra key"),
        (_Samples(short=6), "y", 6, "lacks key"),
    ):
        loader = DataLoader(
            ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
        )
        with loader_raises(SchemaError, match=rf"field '{key}' at index {index}: the sample {what} '{key}'") as err:
            list(loader)
        assert "every sample of a batch needs the same keys" in str(err.value)
        assert (err.value.field, err.value.index) == (key, index)  # kept across the worker boundary too


def test_samples_of_a_plain_dataset_are_named_by_their_batch_position() -> None:
    class Plain(Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": i} if i != 3 else {"x": i, "z": 0}

    with pytest.raises(SchemaError, match=r"field 'z' at batch position 3: the sample has extra key 'z'"):
        list(DataLoader(Plain(), batch_size=4, collate_fn=zero_copy_collate))


class _Drifting(ZeroCopyDataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"x": np.zeros(3, np.float64 if i == 6 else np.float32)}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_drift_error_keeps_its_field_and_index_across_worker_processes(workers: int) -> None:
    loader = DataLoader(
        _Drifting(), batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with loader_raises(DtypeDriftError, match="expected float32 .* found float64") as err:
        list(loader)
    assert (err.value.field, err.value.index) == ("x", 6)


def _rng_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tobytes()  # type: ignore[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_explain_leaves_every_rng_as_it_found_it(workers: int) -> None:
    ds = NumpyDataset({"x": np.arange(400, dtype=np.int64)})

    def run(with_explain: bool) -> tuple[list[int], Any]:
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        g = torch.Generator().manual_seed(3)
        loader = ZeroCopyDataLoader(ds, batch_size=50, shuffle=True, generator=g, num_workers=workers)
        if with_explain:
            before = _rng_states()
            g_before = g.get_state()
            assert explain(loader, batches=3).batches == 3
            assert all(
                a == b if not isinstance(a, torch.Tensor) else torch.equal(a, b)
                for a, b in zip(before, _rng_states(), strict=True)
            )
            assert torch.equal(g.get_state(), g_before)
        order = torch.cat([b["x"] for b in loader]).tolist()
        return order, torch.rand(1).item()

    assert run(with_explain=True) == run(with_explain=False)  # the same training order, the same draws after


def test_explain_does_not_use_up_a_block_shuffled_epoch() -> None:
    from zcopy_data.samplers import BlockShuffleSampler

    ds = NumpyDataset({"x": np.arange(400, dtype=np.int64)})

    def epochs(with_explain: bool) -> list[list[int]]:
        loader = ZeroCopyDataLoader(ds, batch_sampler=BlockShuffleSampler(400, 50, seed=1))
        out = [torch.cat([b["x"] for b in loader]).tolist()]
        if with_explain:
            assert explain(loader, batches=3).batches == 3
        out.append(torch.cat([b["x"] for b in loader]).tolist())
        return out

    assert epochs(with_explain=True) == epochs(with_explain=False)  # epochs 0 then 1, explain or not


class _PerSample(ZeroCopyDataset):
    """A per-sample dataset that records what type of index it is given."""

    def __init__(self) -> None:
        self.seen: set[type] = set()

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.seen.add(type(i))
        return {"x": torch.full((2,), float(i))}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_per_sample_getitem_receives_python_ints(workers: int) -> None:
    ds = _PerSample()
    batches = list(
        ZeroCopyDataLoader(
            ds, batch_size=4, shuffle=True, num_workers=workers, worker_mode="threads" if workers else "auto"
        )
    )
    assert len(batches) == 5 and ds.seen == {int}


def test_batch_size_none_converts_like_pytorch() -> None:
    ds = NumpyDataset({"x": np.arange(6, dtype=np.float32).reshape(3, 2)})
    ours = list(ZeroCopyDataLoader(ds, batch_size=None))
    theirs = list(DataLoader(ds, batch_size=None))
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys() and torch.equal(a["x"], b["x"]) and a["x"].shape == (2,)


def test_samples_that_require_grad_collate_like_default_collate() -> None:
    samples = [{"w": torch.randn(3, requires_grad=True), "y": torch.tensor(i)} for i in range(4)]
    ours, theirs = zero_copy_collate(samples), default_collate(samples)
    assert ours["w"].requires_grad and theirs["w"].requires_grad
    assert torch.equal(ours["w"], theirs["w"]) and torch.equal(ours["y"], theirs["y"])
    ours["w"].sum().backward()  # gradients flow back to every sample, as through torch.stack
    assert all(torch.equal(s["w"].grad, torch.ones(3)) for s in samples)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ZCOPY_DATA_WORKER_SHM_WAIT_S", "nan", "a finite number"),
        ("ZCOPY_DATA_WORKER_SHM_WAIT_S", "inf", "a finite number"),
        ("ZCOPY_DATA_WORKER_SHM_BYTES", "0", "an integer >= 1"),
        ("ZCOPY_DATA_WORKER_SHM_BYTES", "0.5", "an integer >= 1"),
        ("ZCOPY_DATA_WORKER_SHM_BYTES", "nan", "an integer >= 1"),
    ],
)
def test_bad_environment_is_refused_in_the_main_process_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    ds = NumpyDataset({"x": np.arange(40, dtype=np.int64)})
    loader = ZeroCopyDataLoader(ds, batch_size=4, num_workers=2, worker_mode="processes")
    with pytest.raises(ValueError, match=rf"{variable}='{value}' should be {expected}") as err:
        iter(loader)
    assert "DataLoader worker" not in str(err.value)  # raised here, before any worker started


def test_gather_buffers_belong_to_the_loader_that_needed_them() -> None:
    ds = NumpyDataset({"x": np.arange(4000, dtype=np.float32).reshape(1000, 4)})
    host_limit = policy.HOST.pool.per_key
    loader = ZeroCopyDataLoader(ds, batch_size=10, shuffle=True, num_workers=2, prefetch_factor=200)
    assert sum(len(b["x"]) for b in loader) == 1000
    allocation = loader._own_allocation()
    assert allocation.pool.per_key == 2 * 200 + 4  # type: ignore[attr-defined]  # its own look-ahead
    assert policy.HOST.pool.per_key == host_limit  # the process-wide pool was not raised
    gone = weakref.ref(allocation)
    del loader, allocation
    gc.collect()
    assert gone() is None  # its buffers went with it
