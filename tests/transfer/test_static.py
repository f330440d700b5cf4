"""Static (CUDA-graph-ready) batches: every batch in one of a ring of fixed-address buffer sets.

The CPU tests run everywhere (``device="cpu"``: the same ring, schedule and reuse rule); the
``cuda`` ones capture a real ``torch.cuda.graph`` per slot and replay it over delivered batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import NumpyDataset, ShapeMismatchError, ZeroCopyDataLoader, zero_copy_collate
from zcopy_data.ledger import CAST, TRANSFER, capture
from zcopy_data.transfer import Cast, DevicePrefetcher

NORM = {"image": Cast(torch.float32, scale=1 / 255, mean=[0.5, 0.25, 0.125], std=[0.5, 0.5, 0.5])}


def _dataset(n: int = 90) -> NumpyDataset:
    rng = np.random.default_rng(4)
    return NumpyDataset(
        {"image": rng.integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8), "label": np.arange(n, dtype=np.int64)}
    )


def _loader(ds: NumpyDataset, *, plain: bool = False, **kw: object) -> DataLoader:
    g = torch.Generator().manual_seed(5)
    if plain:
        return DataLoader(ds, batch_size=16, shuffle=True, generator=g, collate_fn=zero_copy_collate, **kw)
    return ZeroCopyDataLoader(ds, batch_size=16, shuffle=True, generator=g, **kw)


def _expected(ds: NumpyDataset, cast: object, epochs: int = 1, **kw: object) -> list[dict[str, torch.Tensor]]:
    """The same epochs through the non-static CPU path, cloned, one after the other."""
    pf = DevicePrefetcher(_loader(ds, **kw), "cpu", cast=cast)
    return [{k: v.clone() for k, v in b.items()} for _ in range(epochs) for b in pf]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("cast", [None, {"image": torch.float16}, NORM])
def test_every_batch_lives_in_one_of_the_rings_fixed_buffers_with_the_values_of_the_plain_path(plain, cast):
    ds = _dataset()
    pf = DevicePrefetcher(_loader(ds, plain=plain), "cpu", cast=cast, static=True)
    assert pf.ring is not None and pf.ring.slots == 3  # depth 2 + 1
    every = _expected(ds, cast, epochs=2, plain=plain)
    for epoch in range(2):
        expected = every[6 * epoch : 6 * epoch + 6]
        got = []
        for k, b in enumerate(pf):
            slot = pf.ring.slot_of(b)
            assert slot == k % 3
            for name, t in b.items():
                buf = pf.ring.buffers[slot][name]
                assert t.data_ptr() == buf.data_ptr()  # the slot's own memory, every batch and epoch
                assert t.shape[0] <= buf.shape[0]
            got.append({n: t.clone() for n, t in b.items()})
        assert len(got) == len(expected) == 6
        assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    pointers = {t.data_ptr() for slot in pf.ring.buffers for t in slot.values()}
    assert len(pointers) == 3 * 2  # three slots of two fields, allocated once


def test_the_last_short_batch_is_a_prefix_view_of_its_slot():
    ds = _dataset(40)  # batches of 16, 16, 8
    pf = DevicePrefetcher(_loader(ds), "cpu", static=True)
    batches = list(pf)
    last = batches[-1]
    assert last["image"].shape[0] == 8
    buf = pf.ring.buffers[pf.ring.slot_of(last)]["image"]
    assert last["image"].data_ptr() == buf.data_ptr() and buf.shape[0] == 16


@pytest.mark.parametrize(("slots", "depth", "valid_for"), [(3, 2, 1), (4, 2, 2), (1, 2, 1), (2, 1, 1)])
def test_a_batch_stays_unchanged_until_the_consumer_asks_for_the_one_slots_minus_depth_after_it(
    slots, depth, valid_for
):
    """The documented rule: batch ``k`` is rewritten when batch ``k + slots - depth`` is asked for."""
    ds = _dataset()
    expected = _expected(ds, None)
    pf = DevicePrefetcher(_loader(ds), "cpu", depth=depth, static=True, slots=slots)
    held: list[dict[str, torch.Tensor]] = []
    for k, b in enumerate(pf):
        assert _same(b, expected[k])
        # every batch handed out fewer than valid_for batches ago still holds its own values
        for j in range(max(0, k - valid_for + 1), k):
            assert _same(held[j], expected[j]), (k, j)
        held.append(b)
    assert len(held) == len(expected)
    if slots == 1:  # one slot: the one buffer set, every batch
        assert len({b["image"].data_ptr() for b in held}) == 1


def test_with_one_slot_each_copy_starts_when_its_batch_is_asked_for():
    ds = _dataset()
    expected = _expected(ds, None)
    pf = DevicePrefetcher(_loader(ds), "cpu", depth=3, static=True, slots=1)
    it = iter(pf)
    first = next(it)
    snapshot = first["label"].clone()
    assert torch.equal(snapshot, expected[0]["label"])  # not yet overwritten by a batch ahead
    second = next(it)
    assert second["label"] is first["label"] or second["label"].data_ptr() == first["label"].data_ptr()
    assert torch.equal(second["label"], expected[1]["label"])


def test_a_step_that_reads_the_slots_own_buffers_sees_each_delivered_batch():
    """What a captured graph does: it reads the addresses it was captured with, not the batch passed."""
    ds = _dataset()
    pf = DevicePrefetcher(_loader(ds, drop_last=True), "cpu", cast=NORM, static=True, slots=3, depth=2)
    w = torch.linspace(-1, 1, 3 * 4 * 4)
    steps = {}  # slot -> a closure over that slot's tensors (the "captured" step)
    replays = 0
    for b in pf:
        s = pf.ring.slot_of(b)
        if s not in steps:
            buf = pf.ring.buffers[s]
            steps[s] = lambda buf=buf: buf["image"].reshape(16, -1) @ w + buf["label"]
        replayed = steps[s]()
        eager = b["image"].reshape(16, -1) @ w + b["label"]
        assert torch.equal(replayed, eager)
        replays += 1
    assert sorted(steps) == [0, 1, 2] and replays == 90 // 16


def test_the_ledger_counts_one_copy_into_the_slot_and_the_cast_written_there():
    ds = _dataset(32)
    pf = DevicePrefetcher(_loader(ds), "cpu", cast={"image": torch.float16}, static=True)
    with capture() as records:
        batches = list(pf)
    assert len(batches) == 2
    transfer = [r for r in records if r[0] == TRANSFER]
    casts = [r for r in records if r[0] == CAST]
    assert {r[1] for r in transfer} == {"image", "label"} and len(transfer) == 4
    assert all("static slot" in r[2] for r in transfer + casts)
    assert sum(r[4] for r in transfer if r[1] == "image") == 32 * 3 * 4 * 4  # uint8 bytes copied once
    assert [r[4] for r in casts] == [16 * 3 * 4 * 4 * 2] * 2  # float16 written into the slot


def test_a_batch_of_another_shape_or_more_rows_is_refused_naming_the_field_and_the_fix():
    batches = [
        {"x": torch.zeros(4, 3), "y": torch.zeros(4)},
        {"x": torch.zeros(4, 5), "y": torch.zeros(4)},
    ]
    with pytest.raises(ShapeMismatchError, match=r"field 'x': expected torch.float32 rows of shape \(3,\).*drop_last"):
        list(DevicePrefetcher(batches, "cpu", static=True))
    bigger = [{"x": torch.zeros(4, 3)}, {"x": torch.zeros(6, 3)}]
    with pytest.raises(ShapeMismatchError, match="field 'x': 6 rows, more than the 4 of the first batch"):
        list(DevicePrefetcher(bigger, "cpu", static=True))
    other = [{"x": torch.zeros(4, 3)}, {"z": torch.zeros(4, 3)}]
    with pytest.raises(ShapeMismatchError, match=r"field 'z': not in the first batch \(it had \['x'\]\)"):
        list(DevicePrefetcher(other, "cpu", static=True))


def test_a_field_with_no_elements_does_not_mislead_slot_of():
    batches = [{"empty": torch.zeros(4, 0), "x": torch.full((4, 2), float(k))} for k in range(5)]
    pf = DevicePrefetcher(batches, "cpu", static=True)
    assert [pf.ring.slot_of(b) for b in pf] == [0, 1, 2, 0, 1]


def test_slots_without_static_and_bad_slot_counts_are_refused():
    with pytest.raises(ValueError, match="pass static=True"):
        DevicePrefetcher([], "cpu", slots=2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="should be an int >= 1"):
            DevicePrefetcher([], "cpu", static=True, slots=bad)  # type: ignore[arg-type]
    pf = DevicePrefetcher([], "cpu", static=True)
    with pytest.raises(ValueError, match="none of the slots"):
        pf.ring.slot_of({"x": torch.zeros(2)})


def test_resuming_through_a_static_prefetcher_starts_after_the_last_batch_handed_over():
    ds = _dataset()
    loader = _loader(ds)
    pf = DevicePrefetcher(loader, "cpu", static=True)
    it = iter(pf)
    seen = [next(it)["label"].clone() for _ in range(2)]
    state = loader.state_dict()
    del it
    again = _loader(ds)
    again.load_state_dict(state)
    rest = [b["label"].clone() for b in DevicePrefetcher(again, "cpu", static=True)]
    labels = torch.cat(seen + rest)
    assert sorted(labels.tolist()) == list(range(len(ds)))  # each sample once


# -- on a real GPU ------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("cast", [None, NORM])
def test_cuda_graph_captured_per_slot_replays_over_delivered_batches_as_eager_does(cast):
    ds = _dataset(160)
    pf = DevicePrefetcher(_loader(ds, drop_last=True), "cuda", cast=cast, static=True, slots=3, depth=2)
    w = torch.linspace(-1, 1, 3 * 4 * 4, device="cuda")
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    replays = 0
    for _epoch in range(2):
        for b in pf:
            s = pf.ring.slot_of(b)
            if s not in graphs:
                buf = pf.ring.buffers[s]
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up off the capture, as torch.cuda.graph asks
                    (buf["image"].reshape(16, -1).float() @ w + buf["label"]).sum()
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = buf["image"].reshape(16, -1).float() @ w + buf["label"]
                graphs[s] = (g, out)
            g, out = graphs[s]
            g.replay()
            eager = b["image"].reshape(16, -1).float() @ w + b["label"]
            torch.testing.assert_close(out, eager, rtol=0, atol=0)
            replays += 1
    torch.cuda.synchronize()
    assert sorted(graphs) == [0, 1, 2] and replays == 2 * (160 // 16)


@pytest.mark.cuda
def test_cuda_static_batches_equal_the_cpu_path_under_a_slow_consumer():
    ds = _dataset(160)
    expected = _expected(ds, NORM)
    pf = DevicePrefetcher(_loader(ds), "cuda", cast=NORM, static=True, slots=2, depth=1)
    got = []
    for b in pf:
        torch.cuda._sleep(2_000_000)  # the consumer is slow: a rewrite that did not wait would show
        got.append({k: v.cpu() for k, v in b.items()})
    assert len(got) == len(expected)
    assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    assert len({t.data_ptr() for slot in pf.ring.buffers for t in slot.values()}) == 4
