from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import NumpyDataset, zero_copy_collate
from zcopy_data.ledger import capture
from zcopy_data.transfer import Cast, DevicePrefetcher, to_device
from zcopy_data.transfer.device import leaves

MEAN = [0.5, 0.25, 0.125]
CAST = {"image": Cast(torch.float16, scale=1 / 255, mean=MEAN, std=[0.5, 0.5, 0.5])}
Pair = namedtuple("Pair", ["x", "y"])


def _dataset(n: int = 64) -> NumpyDataset:
    rng = np.random.default_rng(0)
    return NumpyDataset(
        {"image": rng.integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8), "label": np.arange(n, dtype=np.int64)}
    )


def _reference(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cast computed by hand, in float32, rounded once."""
    x = batch["image"].float() * (1 / 255)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    return {"image": ((x - mean) / 0.5).half(), "label": batch["label"]}


def test_to_cpu_moves_nothing_and_keeps_the_structure():
    t = torch.arange(6).view(2, 3)
    batch = {"a": t, "b": [t[0], (t[1], "s")], "c": Pair(t, 3), "d": None}
    with capture() as records:
        out = to_device(batch, "cpu")
    assert out["a"] is t and out["b"][0] is batch["b"][0] and out["b"][1][0] is batch["b"][1][0]
    assert isinstance(out["b"][1], tuple) and out["b"][1][1] == "s"
    assert isinstance(out["c"], Pair) and out["c"].x is t and out["c"].y == 3 and out["d"] is None
    assert [r[1] for r in records] == ["a", "b[0]", "b[1][0]", "c[0]"]
    assert all(r[0] == "host->device" and r[2].startswith("skipped") and r[4] == 0 for r in records)


def test_leaves_name_nested_fields():
    batch = {"a": {"b": torch.zeros(1)}, "c": [torch.zeros(1), torch.zeros(1)]}
    assert [n for n, _ in leaves(batch)] == ["a.b", "c[0]", "c[1]"]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only build")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0], ids=["type", "type-index", "index"])
def test_an_absent_accelerator_is_a_clear_error(device):
    with pytest.raises(ValueError, match="use device='cpu'"):
        to_device({"x": torch.zeros(1)}, device)
    with pytest.raises(ValueError, match="use device='cpu'"):
        DevicePrefetcher([], device)


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_depth_must_be_a_positive_int(depth):
    with pytest.raises(ValueError, match="depth"):
        DevicePrefetcher([], "cpu", depth=depth)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetched_batches_equal_the_loader_batches_cast(workers, shuffle):
    ds = _dataset()

    def loader() -> DataLoader:
        g = torch.Generator().manual_seed(7)
        return DataLoader(
            ds, batch_size=10, shuffle=shuffle, generator=g, num_workers=workers, collate_fn=zero_copy_collate
        )

    plain = [{k: v.clone() for k, v in b.items()} for b in loader()]
    got = list(DevicePrefetcher(loader(), "cpu", depth=3, cast=CAST))
    assert len(got) == len(plain) == 7
    for g, p in zip(got, plain, strict=True):
        want = _reference(p)
        assert g["image"].dtype == torch.float16 and g["label"].dtype == torch.int64
        assert torch.equal(g["image"], want["image"])
        assert torch.equal(g["label"], want["label"])


def test_prefetcher_without_cast_yields_the_loaders_own_tensors():
    ds = _dataset(16)
    loader = DataLoader(ds, batch_size=8, collate_fn=zero_copy_collate)
    got = list(DevicePrefetcher(loader, "cpu"))
    assert got[0]["image"].data_ptr() == ds.columns()["image"].ctypes.data  # still a view of the source


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_prefetcher_keeps_depth_batches_ahead_in_order(depth):
    pulled: list[int] = []

    def source():
        for k in range(6):
            pulled.append(k)
            yield {"k": torch.tensor([k])}

    seen = []
    for batch in DevicePrefetcher(source(), "cpu", depth=depth):
        k = int(batch["k"])
        seen.append(k)
        assert len(pulled) == min(k + 1 + depth, 6)  # batch k is out, k+1 .. k+depth are in flight
    assert seen == list(range(6))


def test_prefetcher_iterates_again_for_each_epoch_and_has_a_length():
    loader = DataLoader(_dataset(20), batch_size=8, collate_fn=zero_copy_collate)
    pf = DevicePrefetcher(loader, "cpu", cast={"image": torch.float32})
    assert len(pf) == 3
    first = [b["label"].tolist() for b in pf]
    second = [b["label"].tolist() for b in pf]
    assert first == second and sum(len(x) for x in first) == 20


def test_cpu_ledger_says_pinning_was_skipped():
    loader = DataLoader(_dataset(16), batch_size=8, collate_fn=zero_copy_collate)
    with capture() as records:
        list(DevicePrefetcher(loader, "cpu", cast={"image": torch.float32}))
    pins = [r for r in records if r[0] == "pin"]
    assert len(pins) == 4 and all(r[2] == "skipped: no accelerator to pin for" and r[4] == 0 for r in pins)
    assert sum(r[4] for r in records if r[0] == "host->device") == 0
    assert sum(r[4] for r in records if r[0] == "cast") == 2 * 8 * 48 * 4


def test_unpinned_batches_are_staged_into_exact_pool_slots():
    """The staging step of the accelerator path, run on host memory (the pool is unpinned here)."""
    from zcopy_data.memory.pinned import is_pool_memory

    pf = DevicePrefetcher([], "cpu", depth=2)
    full = {"image": torch.randint(0, 255, (8, 3, 2, 2), dtype=torch.uint8), "label": torch.arange(8), "tag": "a"}
    with capture() as records:
        staged, slot = pf._stage(full)
    assert pf.pool is not None and pf.pool.slots == 4  # depth + 2
    assert pf.pool.specs == {"image": ((8, 3, 2, 2), torch.uint8), "label": ((8,), torch.int64)}
    assert slot is not None and staged["tag"] == "a"
    for name in ("image", "label"):
        assert torch.equal(staged[name], full[name]) and is_pool_memory(staged[name])
    assert [(r[0], r[1], r[4]) for r in records] == [("pin", "image", 96), ("pin", "label", 64)]
    slot.release()

    last = {"image": full["image"][:5], "label": full["label"][:5]}  # a short last batch uses a slot's prefix
    staged, slot = pf._stage(last)
    assert slot is not None and staged["image"].shape == (5, 3, 2, 2) and is_pool_memory(staged["label"])
    assert torch.equal(staged["label"], torch.arange(5))
    slot.release()

    odd = {"image": torch.zeros((8, 3, 3, 3), dtype=torch.uint8), "label": torch.arange(8)}
    staged, slot = pf._stage(odd)  # does not fit the slots: left as it is (its copy will be synchronous)
    assert slot is None and staged is odd


def _walked(batch: dict[str, torch.Tensor]) -> tuple[list[tuple[str, str, str, int, int]], dict[str, torch.Tensor]]:
    """The CPU stage's records and output for ``batch``, through the general walk (a subclass of
    dict is not the flat fast path) and through the flat one."""

    class Batch(dict):  # type: ignore[type-arg]
        pass

    out = {}
    recs = []
    for b in (Batch(batch), dict(batch)):
        pf = DevicePrefetcher([b], "cpu", cast={"image": torch.float32, "label": torch.int64})
        with capture() as records:
            (got,) = list(pf)
        recs.append(records)
        out[type(b).__name__] = got
    assert recs[0] == recs[1]  # the same records, in the same order
    assert type(out["Batch"]) is Batch and type(out["dict"]) is dict  # each keeps its type
    return recs[1], out["dict"]


def test_the_flat_cpu_stage_records_and_casts_as_the_general_walk() -> None:
    batch = {"image": torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2), "label": torch.tensor([3, 4])}
    records, got = _walked(batch)
    assert [r[0] for r in records] == ["pin", "pin", "host->device", "host->device", "cast", "cast"]
    assert records[4] == ("cast", "image", "uint8 -> float32 on cpu", 0, 24 * 4)
    assert records[5] == ("cast", "label", "already int64: nothing to do", 16, 0)
    assert torch.equal(got["image"], batch["image"].float()) and got["label"] is batch["label"]


def test_cpu_cast_outputs_are_reused_only_once_nothing_holds_them() -> None:
    loader = DataLoader(_dataset(64), batch_size=8, collate_fn=zero_copy_collate)
    pf = DevicePrefetcher(loader, "cpu", depth=1, cast={"image": torch.float32})
    held = list(pf)  # every batch held: eight distinct buffers, each the loader's batch cast
    assert len({b["image"].data_ptr() for b in held}) == 8
    for b, ref in zip(held, loader, strict=True):
        assert torch.equal(b["image"], ref["image"].float()) and b["image"].is_contiguous()
    ptrs = [b["image"].data_ptr() for b in pf]  # none held: a few buffers, reused
    assert len(set(ptrs)) < 8
    strided = {"image": torch.zeros(3, 4, dtype=torch.uint8).t()}
    (out,) = list(DevicePrefetcher([strided], "cpu", cast={"image": torch.float32}))
    assert out["image"].stride() == strided["image"].float().stride()  # as .to(): strides kept
