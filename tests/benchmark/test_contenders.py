"""Every contender reads the same samples in the same order; the copy counts they claim hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from zcopy_bench.contenders import (
    CONTENDERS,
    ORDERS,
    PerSampleNpy,
    available,
    batch_len,
    build_loader,
    make_batch_sampler,
)
from zcopy_bench.data import DataSource, open_source
from zcopy_bench.measure import MAX_PASSES, measure

INSTALLED = [n for n in CONTENDERS if available(n)[0]]


def _prepared(name: str, src: DataSource, cache: Path) -> None:
    prepare = CONTENDERS[name].prepare
    if prepare is not None:
        prepare(src, cache)


def _first_batches(name: str, src: DataSource, order: str, cache: Path, k: int = 3) -> list[Any]:
    _prepared(name, src, cache)
    out = []
    for batch in build_loader(name, src, order, 64, 0, seed=7, cache=cache):
        out.append(batch)
        if len(out) == k:
            break
    return out


@pytest.mark.parametrize("order", ORDERS)
def test_same_samples_in_same_order(npy_folder: Path, tmp_path: Path, order: str) -> None:
    src = open_source(npy_folder)
    images = np.load(npy_folder / "image.npy")
    expected = [np.asarray(b) for b in list(make_batch_sampler(src.n, order, 64, seed=7))[:3]]
    for name in INSTALLED:
        batches = _first_batches(name, src, order, tmp_path)
        for got, idx in zip(batches, expected, strict=True):
            # label i is sample i, so the labels are the indices the contender read
            np.testing.assert_array_equal(np.asarray(got["label"]), idx, err_msg=name)
            np.testing.assert_array_equal(np.asarray(got["image"]), images[idx], err_msg=name)
            assert batch_len(got) == idx.size


def test_orders_differ_as_described() -> None:
    seq = [list(b) for b in make_batch_sampler(300, "seq", 64)]
    shuffle = [list(b) for b in make_batch_sampler(300, "shuffle", 64)]
    block = [list(b) for b in make_batch_sampler(300, "block", 64)]
    assert seq[0] == list(range(64))
    for batches in (seq, shuffle, block):
        assert sorted(i for b in batches for i in b) == list(range(300))
    assert shuffle != seq
    contiguous = [b == list(range(b[0], b[0] + len(b))) for b in block]
    assert sum(contiguous) >= len(block) - 1  # only the batch wrapping past the end is two runs
    with pytest.raises(ValueError, match="order='random' should be one of seq, shuffle, block"):
        make_batch_sampler(300, "random", 64)


def test_default_path_copies_once(npy_folder: Path) -> None:
    """Per-sample items are views of the mapping; default_collate's stack is the one copy."""
    ds = PerSampleNpy({"image": npy_folder / "image.npy", "label": npy_folder / "label.npy"})
    item = ds[5]["image"]
    assert np.shares_memory(item, ds.arrays["image"])
    assert torch.as_tensor(item).data_ptr() == item.ctypes.data  # what default_collate calls: no copy
    src = open_source(npy_folder)
    batch = next(iter(build_loader("default", src, "seq", 64, 0, cache=Path("."))))
    assert not np.shares_memory(batch["image"].numpy(), ds.arrays["image"])
    assert CONTENDERS["default"].copies("shuffle", 2)[0] == 1.0  # type: ignore[misc]


def test_default_path_with_workers_crosses_as_a_handle(npy_folder: Path) -> None:
    """Inside a worker default_collate stacks arrays straight into shared memory: no second copy.

    Per-sample NumPy scalars (the labels) become a tensor outside shared memory and are copied
    once more when pickled: 8 bytes per sample, which the count of the batch's bytes rounds away.
    """
    from zcopy_data import explain

    src = open_source(npy_folder)
    loader: Any = build_loader("default", src, "shuffle", 64, 1, cache=Path("."))
    ledger = explain(loader, batches=2)
    crossing = {r.field: r for r in ledger.rows if r.stage == "worker->main"}
    assert crossing["image"].reason.startswith("handle") and crossing["image"].bytes_copied == 0
    assert crossing["label"].reason.startswith("pickle") and crossing["label"].bytes_copied == 2 * 64 * 8


@pytest.mark.parametrize(("order", "copies"), [("seq", 0.0), ("shuffle", 1.0)])
def test_zcopy_copies_come_from_the_ledger(npy_folder: Path, tmp_path: Path, order: str, copies: float) -> None:
    src = open_source(npy_folder)
    spec = {
        "source": src.to_spec(),
        "cache": str(tmp_path),
        "contender": "zcopy",
        "order": order,
        "workers": 0,
        "batch_size": 64,
        "epochs": 1,
        "seed": 0,
        "max_pass_s": 0.05,
        "min_timed_s": 0,
    }
    res = measure(spec)
    assert res["copies_per_batch"] == copies
    assert res["copies_basis"].startswith("ledger")
    assert len(res["rates"]) == 1 and res["rates"][0] > 0
    # short passes are repeated until they add up to min_timed_s, at most MAX_PASSES times
    more = measure({**spec, "min_timed_s": 0.05})
    assert 1 < len(more["rates"]) <= MAX_PASSES
    assert res["peak_mem_mib"] >= 0


def test_zcopy_sequential_batch_is_a_view(npy_folder: Path, tmp_path: Path) -> None:
    src = open_source(npy_folder)
    loader: Any = build_loader("zcopy", src, "seq", 64, 0, cache=tmp_path)
    batch = next(iter(loader))
    column = loader.dataset.columns()["image"]
    assert np.shares_memory(batch["image"].numpy(), column)
    batch["image"][0, 0, 0, 0] = 255 - int(batch["image"][0, 0, 0, 0])  # mutate through the batch
    assert int(column[0, 0, 0, 0]) == int(batch["image"][0, 0, 0, 0])


@pytest.mark.skipif(importlib.util.find_spec("tensordict") is None, reason="tensordict is not installed")
def test_tensordict_batch_is_a_gathered_copy(npy_folder: Path, tmp_path: Path) -> None:
    from tensordict import TensorDict
    from zcopy_bench.peers import _cache_dir

    src = open_source(npy_folder)
    (batch,) = _first_batches("tensordict", src, "seq", tmp_path, k=1)
    td = TensorDict.load_memmap(_cache_dir(src, tmp_path, "tensordict"))
    assert not np.shares_memory(batch["image"].numpy(), td["image"].numpy())
    assert CONTENDERS["tensordict"].copies("seq", 0)[0] == 1.0  # type: ignore[misc]


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets is not installed")
def test_hf_widens_uint8_to_int64(npy_folder: Path, tmp_path: Path) -> None:
    src = open_source(npy_folder)
    (batch,) = _first_batches("hf", src, "seq", tmp_path, k=1)
    assert batch["image"].dtype == torch.int64  # 8x the bytes of the uint8 source: the drift zcopy_data refuses


def test_missing_peer_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    ok, why = available("hf")
    assert not ok
    assert "pip install 'datasets" in why
    assert available("zcopy") == (True, "")
