"""``PackedDataset``: whole documents in rows of exactly ``seq_len``, every token once, attention-safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import LazyShuffleSampler, ZeroCopyDataLoader, zero_copy_collate
from zcopy_data.datasets import PackedDataset

SEQ = 64


@pytest.fixture
def corpus() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(1, 50, 400), [150, 64, 65]])  # three at or past seq_len
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(1, 60000, int(offsets[-1]), dtype=np.uint16), offsets


def _segments(batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    flat, cu = batch["tokens"].reshape(-1).numpy(), batch["cu_seqlens"].numpy()
    return [flat[cu[i] : cu[i + 1]] for i in range(len(cu) - 1)]


def _documents(values: np.ndarray, offsets: np.ndarray) -> list[tuple[int, ...]]:
    """The reference: each document, split into consecutive seq_len pieces when longer."""
    out = []
    for d in range(len(offsets) - 1):
        doc = values[offsets[d] : offsets[d + 1]]
        out += [tuple(doc[k : k + SEQ].tolist()) for k in range(0, len(doc), SEQ)]
    return sorted(out)


@pytest.mark.parametrize("method", ["greedy", "best_fit"])
def test_every_document_lands_once_whole_in_rows_of_seq_len(corpus, method: str) -> None:
    values, offsets = corpus
    ds = PackedDataset(values, offsets, SEQ, method=method, seed=3)
    assert ds.split_documents == 2  # 150 and 65 tokens; 64 fits exactly
    batch = zero_copy_collate(ds.__getitems__(list(range(len(ds)))))
    assert batch["tokens"].shape == (len(ds), SEQ) and batch["tokens"].dtype == torch.uint16
    segments = _segments(batch)
    assert sorted(tuple(s.tolist()) for s in segments if s[0] != 0) == _documents(values, offsets)
    assert all((s == 0).all() for s in segments if s[0] == 0)  # the rest are pad runs
    cu = batch["cu_seqlens"].numpy()
    assert set(range(0, len(ds) * SEQ + 1, SEQ)) <= set(cu.tolist())  # no segment crosses a row
    pos = batch["position_ids"].reshape(-1).numpy()
    for i in range(len(cu) - 1):
        assert pos[cu[i] : cu[i + 1]].tolist() == list(range(cu[i + 1] - cu[i]))  # restart per document
    if method == "best_fit":
        assert ds.pad_fraction < PackedDataset(values, offsets, SEQ, method="greedy", seed=3).pad_fraction


def test_the_plan_depends_on_the_seed_only(corpus) -> None:
    values, offsets = corpus
    a, b = PackedDataset(values, offsets, SEQ, seed=1), PackedDataset(values, offsets, SEQ, seed=1)
    c = PackedDataset(values, offsets, SEQ, seed=2)
    rows = list(range(len(a)))
    ta, tb = (zero_copy_collate(d.__getitems__(rows))["tokens"] for d in (a, b))
    assert torch.equal(ta, tb)
    assert not torch.equal(ta[: len(c)], zero_copy_collate(c.__getitems__(list(range(len(c)))))["tokens"][: len(a)])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_rows_from_worker_processes_equal_rows_built_here(corpus, context) -> None:
    values, offsets = corpus
    ds = PackedDataset(values, offsets, SEQ, method="best_fit")
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=context, collate_fn=zero_copy_collate)
    for k, batch in enumerate(loader):
        here = zero_copy_collate(ds.__getitems__(list(range(8 * k, min(8 * k + 8, len(ds))))))
        assert all(torch.equal(batch[f], here[f]) for f in ("tokens", "position_ids", "cu_seqlens"))


def test_a_resumed_epoch_of_packed_rows_sees_each_row_once(corpus) -> None:
    values, offsets = corpus
    ds = PackedDataset(values, offsets, SEQ)

    def loader() -> ZeroCopyDataLoader:
        return ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 8, seed=4))

    first = loader()
    it = iter(first)
    before = [next(it)["tokens"].clone() for _ in range(5)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(torch.cat(before + [b["tokens"] for b in resumed]), torch.cat([b["tokens"] for b in loader()]))


def test_bad_arguments_are_refused(corpus) -> None:
    values, offsets = corpus
    with pytest.raises(ValueError, match="packing is one of"):
        PackedDataset(values, offsets, SEQ, method="first_fit")
    with pytest.raises(ValueError, match="seq_len=0 should be a positive integer"):
        PackedDataset(values, offsets, 0)
    with pytest.raises(ValueError, match=r"pad_id=-1 is not a torch.uint16 token \(0..65535\)"):
        PackedDataset(values, offsets, SEQ, pad_id=-1)
    with pytest.raises(ValueError, match="offsets end at"):
        PackedDataset(values[:10], offsets, SEQ)
