"""Variable-length fields: values + offsets batched packed, padded or nested, zero-copy where promised."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from tests.support import in_a_file_mapping
from zcopy_data import NumpyDataset, Ragged, SchemaError, ShapeMismatchError, explain, zero_copy_collate
from zcopy_data.ledger import capture


@pytest.fixture
def docs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 1000, int(k), dtype=np.int32) for k in rng.integers(0, 30, 200)]


def _column(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(docs), np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)


def _files(tmp_path: Path, docs: list[np.ndarray]) -> tuple[Path, Path]:
    values, offsets = _column(docs)
    np.save(tmp_path / "values.npy", values)
    np.save(tmp_path / "offsets.npy", offsets)
    return tmp_path / "values.npy", tmp_path / "offsets.npy"


def test_a_contiguous_packed_batch_copies_only_its_offsets(tmp_path: Path, docs) -> None:
    values, offsets = _files(tmp_path, docs)
    ds = NumpyDataset({"tokens": Ragged(values, offsets), "label": np.arange(len(docs))})
    assert str(ds.schema["tokens"]) == "int32[?]"
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(list(range(10, 42))))
    packed, cu = batch["tokens"]["values"], batch["tokens"]["cu_seqlens"]
    assert torch.equal(packed, torch.from_numpy(np.concatenate(docs[10:42])))
    assert cu.dtype == torch.int32 and cu.tolist() == np.cumsum([0] + [len(d) for d in docs[10:42]]).tolist()
    assert in_a_file_mapping(packed)  # a view of the values file
    copied = {r[1]: r[4] for r in records if r[4]}
    assert copied == {"tokens.cu_seqlens": 33 * 4}  # B + 1 int32 offsets, nothing else


def test_a_shuffled_packed_batch_copies_exactly_its_values_once(tmp_path: Path, docs) -> None:
    values, offsets = _files(tmp_path, docs)
    ds = NumpyDataset({"tokens": Ragged(values, offsets)})
    idx = [150, 3, 77, 0, 199, 42]
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(idx))
    want = np.concatenate([docs[i] for i in idx])
    assert torch.equal(batch["tokens"]["values"], torch.from_numpy(want))
    assert not in_a_file_mapping(batch["tokens"]["values"])
    copied = {r[1]: r[4] for r in records if r[4]}
    assert copied == {"tokens": want.nbytes, "tokens.cu_seqlens": (len(idx) + 1) * 4}


@pytest.mark.parametrize("pad", [0, -1])
def test_padded_and_nested_equal_the_per_sample_reference(docs, pad: int) -> None:
    values, offsets = _column(docs)
    idx = [5, 9, 120, 64, 8]
    ref = pad_sequence([torch.from_numpy(docs[i]) for i in idx], batch_first=True, padding_value=pad)
    ds = NumpyDataset({"tokens": Ragged(values, offsets, output="padded", pad_value=pad)})
    for run in (idx, list(range(30, 36))):
        batch = zero_copy_collate(ds.__getitems__(run))["tokens"]
        r = pad_sequence([torch.from_numpy(docs[i]) for i in run], batch_first=True, padding_value=pad)
        assert torch.equal(batch["values"], r)
        assert batch["lengths"].tolist() == [len(docs[i]) for i in run]
        assert torch.equal(batch["mask"], torch.arange(r.shape[1])[None, :] < batch["lengths"][:, None])
    assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["tokens"]["values"], ref)
    nested_ds = NumpyDataset({"tokens": Ragged(values, offsets, output="nested")})
    nested = zero_copy_collate(nested_ds.__getitems__(idx))["tokens"]
    assert nested.is_nested and [t.tolist() for t in nested.unbind()] == [docs[i].tolist() for i in idx]


def test_ragged_columns_with_an_inner_shape(docs) -> None:
    boxes = [np.random.default_rng(i).random((len(d), 4), dtype=np.float32) for i, d in enumerate(docs)]
    values, offsets = np.concatenate(boxes), _column(docs)[1]
    ds = NumpyDataset({"boxes": Ragged(values, offsets, output="padded")})
    assert str(ds.schema["boxes"]) == "float32[?, 4]"
    got = zero_copy_collate(ds.__getitems__([2, 7]))["boxes"]["values"]
    ref = pad_sequence([torch.from_numpy(boxes[2]), torch.from_numpy(boxes[7])], batch_first=True)
    assert torch.equal(got, ref) and ds[7]["boxes"].shape == boxes[7].shape


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_ragged_batches_from_worker_processes(tmp_path: Path, docs, context) -> None:
    values, offsets = _files(tmp_path, docs)
    ds = NumpyDataset({"tokens": Ragged(values, offsets), "label": np.arange(len(docs))})
    loader = DataLoader(
        ds, batch_size=16, num_workers=2, multiprocessing_context=context, collate_fn=zero_copy_collate, timeout=60
    )
    for batch in loader:
        labels = batch["label"].tolist()
        assert torch.equal(batch["tokens"]["values"], torch.from_numpy(np.concatenate([docs[i] for i in labels])))
        assert in_a_file_mapping(batch["tokens"]["values"])  # crossed as a descriptor of the values file
    ledger = explain(loader, batches=3)
    assert {r.field: r.bytes_copied for r in ledger.rows if r.bytes_copied and r.stage != "worker->main"} == {
        "tokens.cu_seqlens": 3 * 17 * 4
    }


class PerSample(Dataset):
    def __init__(self, docs: list[np.ndarray]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"tokens": self.docs[i], "label": np.int64(i)}


@pytest.mark.parametrize("output", ["packed", "padded", "nested"])
def test_a_per_sample_dataset_with_differing_lengths(docs, output: str) -> None:
    collate = functools.partial(zero_copy_collate, ragged={"tokens": {"output": output, "pad_value": -7}})
    batch = next(iter(DataLoader(PerSample(docs), batch_size=9, collate_fn=collate)))
    tensors = [torch.from_numpy(d) for d in docs[:9]]
    got = batch["tokens"]
    if output == "packed":
        assert torch.equal(got["values"], torch.cat(tensors))
        assert got["cu_seqlens"].tolist() == np.cumsum([0] + [len(d) for d in docs[:9]]).tolist()
    elif output == "padded":
        assert torch.equal(got["values"], pad_sequence(tensors, batch_first=True, padding_value=-7))
    else:
        assert [t.tolist() for t in got.unbind()] == [t.tolist() for t in tensors]
    assert batch["label"].tolist() == list(range(9))


def test_differing_lengths_without_the_setting_name_it(docs) -> None:
    with pytest.raises(ShapeMismatchError, match=r"declare the field ragged.*ragged=\{'tokens': 'packed'\}"):
        next(iter(DataLoader(PerSample(docs[1:]), batch_size=9, collate_fn=zero_copy_collate)))


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([-1, 2, 5], "offsets start at -1, a negative position"),
        ([0, 4, 2, 6], r"at index 1: offsets decrease \(4 then 2\)"),
        ([0, 3, 11], "offsets end at 11, past the 10 values"),
        ([[0, 1], [2, 3]], "offsets must be a 1-D integer array"),
        ([0.0, 1.0], "offsets must be a 1-D integer array"),
    ],
)
def test_bad_offsets_are_refused_naming_the_field(offsets, message) -> None:
    with pytest.raises(SchemaError, match=message):
        NumpyDataset({"tokens": Ragged(np.arange(10, dtype=np.int32), np.array(offsets))})
    with pytest.raises(ValueError, match="a ragged field is batched as one of"):
        Ragged(np.arange(3), np.array([0, 3]), output="stacked")
