"""Block-shuffle batch sampler: every index once per epoch across ranks, batches contiguous, data intact."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from zcopy_data import NumpyDataset, zero_copy_collate
from zcopy_data.ledger import LEDGER
from zcopy_data.samplers import BlockShuffleSampler

pytestmark = pytest.mark.reliability

SETTINGS = settings(max_examples=100, deadline=None)


def _runs(batch: list[int]) -> int:
    """How many contiguous ascending runs a batch is made of."""
    return 1 + sum(1 for a, b in itertools.pairwise(batch) if b != a + 1)


def _most_blocks(n: int, b: int, shuffle: bool) -> int:
    """The documented count: boundaries moved by a phase 0 < p < n % b give [0, p), the full
    blocks and two short ones."""
    full, rest = divmod(n, b)
    return full + 1 + (rest > 1) if shuffle and min(b, n) > 1 else full + (rest > 0)


def _fewest_full_blocks(n: int, b: int, shuffle: bool) -> int:
    full, rest = divmod(n, b)
    return max(full - (shuffle and min(b, n) > 1 and rest < b - 1), 0)


@SETTINGS
@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 40),
    replicas=st.integers(1, 4),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**16),
    epoch=st.integers(0, 50),
)
def test_every_index_once_per_epoch_across_ranks(
    n: int, batch_size: int, replicas: int, drop_last: bool, shuffle: bool, seed: int, epoch: int
) -> None:
    try:
        samplers = [
            BlockShuffleSampler(n, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                num_replicas=replicas, rank=r)
            for r in range(replicas)
        ]  # fmt: skip
    except ValueError as err:  # documented: too few samples for every rank to get a batch
        assert not drop_last and "cannot give each of num_replicas" in str(err)
        assert n < replicas * -(-_most_blocks(n, batch_size, shuffle) // replicas)
        return
    per_rank = []
    for s in samplers:
        s.set_epoch(epoch)
        per_rank.append(list(s))
    lengths = {len(b) for b in per_rank}
    assert lengths == {len(samplers[0])}, "ranks disagree on the number of batches (DDP would hang)"
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)), "an index was given twice in one epoch"
    assert all(0 <= i < n for i in seen)
    if drop_last:
        assert all(len(b) == batch_size for batches in per_rank for b in batches)
        assert len(seen) == _fewest_full_blocks(n, batch_size, shuffle) // replicas * replicas * batch_size
    else:
        assert sorted(seen) == list(range(n)), "an index was lost"
        assert all(0 < len(b) <= batch_size for batches in per_rank for b in batches)
    assert all(_runs(b) == 1 for batches in per_rank for b in batches), "a batch is not one contiguous run"


@SETTINGS
@given(n=st.integers(8, 200), batch_size=st.integers(1, 16), seed=st.integers(0, 2**16), epoch=st.integers(0, 20))
def test_the_order_depends_on_seed_and_epoch_only(n: int, batch_size: int, seed: int, epoch: int) -> None:
    a, b = BlockShuffleSampler(n, batch_size, seed=seed), BlockShuffleSampler(n, batch_size, seed=seed)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)


def test_orders_differ_between_epochs() -> None:
    s = BlockShuffleSampler(1000, 10, seed=0)
    orders = []
    for epoch in range(5):
        s.set_epoch(epoch)
        orders.append([b[0] for b in s])
    assert len({tuple(o) for o in orders}) == 5


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(4)
    paths = {"x": tmp_path / "x.npy", "i": tmp_path / "i.npy"}
    np.save(paths["x"], rng.standard_normal((301, 6)).astype(np.float32))
    np.save(paths["i"], np.arange(301))
    return paths


def _digest(batch: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(batch["x"].numpy().tobytes() + batch["i"].numpy().tobytes()).hexdigest()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_block_shuffled_epochs_through_real_loaders(files: dict[str, Path], workers: int, replicas: int) -> None:
    ref = {k: np.load(p) for k, p in files.items()}
    ds = NumpyDataset({k: str(p) for k, p in files.items()})
    samplers = [BlockShuffleSampler(ds, 16, seed=7, num_replicas=replicas, rank=r) for r in range(replicas)]
    loaders = [
        DataLoader(ds, batch_sampler=s, num_workers=workers, persistent_workers=workers > 0,
                   collate_fn=zero_copy_collate, timeout=60 if workers else 0)
        for s in samplers
    ]  # fmt: skip
    held = []
    for epoch in range(4):
        seen = []
        LEDGER.reset()
        for s, loader in zip(samplers, loaders, strict=True):
            s.set_epoch(epoch)
            for batch in loader:
                idx = batch["i"].numpy()
                assert np.array_equal(batch["x"].numpy(), ref["x"][idx])
                seen += idx.tolist()
                held.append((batch, _digest(batch)))
        assert sorted(seen) == list(range(301)), f"epoch {epoch}: an index lost or repeated across ranks"
        if workers == 0:  # every batch a view except the one that wraps around the end
            gathered = sum(r.events for r in LEDGER.rows if r.stage == "collate" and r.bytes_copied and r.field == "x")
            assert gathered <= 1
    for batch, digest in held:
        assert _digest(batch) == digest, "a held batch changed"
