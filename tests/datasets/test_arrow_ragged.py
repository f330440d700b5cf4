"""Arrow list columns whose lists differ in length, served as ragged fields straight from the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from tests.support import in_a_file_mapping
from zcopy_data import (
    ArrowDataset,
    CorruptFileError,
    SchemaError,
    UnsupportedColumnError,
    ZeroCopyDataLoader,
    explain,
    zero_copy_collate,
)
from zcopy_data.inspect import inspect_path
from zcopy_data.ledger import capture


@pytest.fixture
def docs() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 50_000, int(k), dtype=np.int32) for k in rng.integers(0, 40, 300)]


def _write(path: Path, docs: list, *, batch_rows: int = 100, typ: pa.DataType | None = None) -> Path:
    typ = typ or pa.list_(pa.int32())
    table = pa.table({"tokens": pa.array([d.tolist() for d in docs], typ), "label": np.arange(len(docs))})
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table, max_chunksize=batch_rows)
    return path


def _copied(records) -> dict[str, int]:
    return {r[1]: r[4] for r in records if r[4]}


@pytest.mark.parametrize("typ", [pa.list_(pa.int32()), pa.large_list(pa.int32())], ids=["list", "large_list"])
def test_a_contiguous_packed_batch_is_a_view_of_the_file_plus_its_offsets(tmp_path: Path, docs, typ) -> None:
    ds = ArrowDataset(_write(tmp_path / "t.arrow", docs, typ=typ), ragged={"tokens": "packed"})
    assert str(ds.schema["tokens"]) == "int32[?]" and ds.num_record_batches == 3
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(list(range(110, 142))))
    values, cu = batch["tokens"]["values"], batch["tokens"]["cu_seqlens"]
    assert torch.equal(values, torch.from_numpy(np.concatenate(docs[110:142])))
    assert cu.dtype == torch.int32 and cu.tolist() == np.cumsum([0] + [len(d) for d in docs[110:142]]).tolist()
    assert in_a_file_mapping(values) and in_a_file_mapping(batch["label"])
    assert _copied(records) == {"tokens.cu_seqlens": 33 * 4}  # B + 1 int32 offsets, nothing else
    assert np.array_equal(ds[205]["tokens"], docs[205]) and int(ds[205]["label"]) == 205


def test_a_shuffled_batch_copies_exactly_its_values_once_across_record_batches(tmp_path: Path, docs) -> None:
    ds = ArrowDataset(_write(tmp_path / "t.arrow", docs), ragged={"tokens": "packed"})
    for idx in ([250, 3, 177, 0, 299, 42, 101], list(range(90, 130))):  # shuffled; a run over two record batches
        with capture() as records:
            batch = zero_copy_collate(ds.__getitems__(idx))
        want = np.concatenate([docs[i] for i in idx])
        assert torch.equal(batch["tokens"]["values"], torch.from_numpy(want))
        assert not in_a_file_mapping(batch["tokens"]["values"])
        assert batch["label"].tolist() == idx
        copied = _copied(records)
        assert copied["tokens"] == want.nbytes and copied["tokens.cu_seqlens"] == (len(idx) + 1) * 4


@pytest.mark.parametrize("pad", [0, -100])
def test_padded_and_nested_equal_the_per_sample_reference(tmp_path: Path, docs, pad: int) -> None:
    path = _write(tmp_path / "t.arrow", docs)
    padded = ArrowDataset(path, ragged={"tokens": {"output": "padded", "pad_value": pad}})
    nested = ArrowDataset(path, ragged={"tokens": "nested"})
    for idx in ([5, 9, 220, 64, 8], list(range(30, 36)), list(range(95, 105))):
        ref = [torch.from_numpy(docs[i]) for i in idx]
        got = zero_copy_collate(padded.__getitems__(idx))["tokens"]
        assert torch.equal(got["values"], pad_sequence(ref, batch_first=True, padding_value=pad))
        assert got["lengths"].tolist() == [len(d) for d in ref]
        assert torch.equal(got["mask"], torch.arange(got["values"].shape[1])[None, :] < got["lengths"][:, None])
        jagged = zero_copy_collate(nested.__getitems__(idx))["tokens"]
        assert jagged.is_nested and [t.tolist() for t in jagged.unbind()] == [t.tolist() for t in ref]
    assert not padded.__getitems__(list(range(30, 36))).is_view()


def test_an_inner_shape_whose_rows_sit_unevenly_in_the_file(tmp_path: Path, docs) -> None:
    # 12-byte rows: record batches start at 8-byte aligned buffers, so rows of different batches
    # have different remainders and the gather reads the mapping as rows 4 bytes apart
    boxes = [np.random.default_rng(i).random((len(d), 3), dtype=np.float32) for i, d in enumerate(docs)]
    path = _write(tmp_path / "b.arrow", boxes, batch_rows=7, typ=pa.list_(pa.list_(pa.float32(), 3)))
    ds = ArrowDataset(path, ragged={"tokens": "packed"})
    assert str(ds.schema["tokens"]) == "float32[?, 3]"
    idx = list(np.random.default_rng(0).permutation(len(boxes))[:40])
    got = zero_copy_collate(ds.__getitems__(idx))["tokens"]["values"]
    assert torch.equal(got, torch.from_numpy(np.concatenate([boxes[i] for i in idx])))
    assert ds._ragged["tokens"]._segments_over(ds._mapped)[3] > 1  # rows several steps of the source apart
    run = zero_copy_collate(ds.__getitems__(list(range(14, 21))))["tokens"]["values"]  # record batch 2: a view
    assert torch.equal(run, torch.from_numpy(np.concatenate(boxes[14:21]))) and in_a_file_mapping(run)
    assert np.array_equal(ds[15]["tokens"], boxes[15])


def test_empty_lists_and_a_column_of_only_empty_lists(tmp_path: Path) -> None:
    docs = [np.arange(k, dtype=np.int32) for k in (0, 3, 0, 0, 2)]
    ds = ArrowDataset(_write(tmp_path / "e.arrow", docs, batch_rows=2), ragged={"tokens": "packed"})
    got = zero_copy_collate(ds.__getitems__([4, 0, 2, 1]))["tokens"]
    assert got["values"].tolist() == [0, 1, 0, 1, 2] and got["cu_seqlens"].tolist() == [0, 2, 2, 2, 5]
    empty = ArrowDataset(_write(tmp_path / "z.arrow", [np.zeros(0, np.int32)] * 4), ragged={"tokens": "padded"})
    out = zero_copy_collate(empty.__getitems__([3, 1]))["tokens"]
    assert out["values"].shape == (2, 0) and out["lengths"].tolist() == [0, 0]


def test_lists_written_by_polars(tmp_path: Path, docs) -> None:
    pl = pytest.importorskip("polars")
    path = tmp_path / "p.arrow"
    pl.DataFrame({"tokens": [d.tolist() for d in docs]}, schema={"tokens": pl.List(pl.Int32)}).write_ipc(
        path, compression="uncompressed"
    )
    ds = ArrowDataset(path, ragged={"tokens": "packed"})
    idx = [17, 2, 250]
    got = zero_copy_collate(ds.__getitems__(idx))["tokens"]["values"]
    assert torch.equal(got, torch.from_numpy(np.concatenate([docs[i] for i in idx])))


def test_a_hugging_face_sequence_column(tmp_path: Path, docs) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"input_ids": datasets.Sequence(datasets.Value("int32")), "label": datasets.Value("int64")}
    )
    hf = datasets.Dataset.from_dict(
        {"input_ids": [d.tolist() for d in docs], "label": list(range(len(docs)))}, features=features
    )
    hf.save_to_disk(str(tmp_path / "hf"))
    ds = ArrowDataset(tmp_path / "hf", ragged={"input_ids": "padded"})
    idx = [0, 150, 299]
    got = zero_copy_collate(ds.__getitems__(idx))
    ref = pad_sequence([torch.from_numpy(docs[i]) for i in idx], batch_first=True)
    assert torch.equal(got["input_ids"]["values"], ref) and got["label"].tolist() == idx


@pytest.mark.parametrize("output", ["packed", "padded", "nested"])
def test_shards_serve_one_ragged_column_across_files(tmp_path: Path, docs, output: str) -> None:
    paths = [_write(tmp_path / f"s{i}.arrow", docs[i * 100 : (i + 1) * 100], batch_rows=30) for i in range(3)]
    ds = ArrowDataset(paths, ragged={"tokens": {"output": output, "pad_value": -1}}, max_open=2)
    assert len(ds) == 300 and str(ds.schema["tokens"]) == "int32[?]"
    rng = np.random.default_rng(3)
    for idx in ([299, 0, 150, 42, 201, 7], list(range(95, 140)), list(range(200, 230)), [], [5]):
        with capture() as records:
            got = zero_copy_collate(ds.__getitems__(idx))["tokens"]
        ref = [torch.from_numpy(docs[i]) for i in idx]
        if output == "packed":
            assert torch.equal(got["values"], torch.cat(ref) if ref else torch.zeros(0, dtype=torch.int32))
            assert got["cu_seqlens"].tolist() == np.cumsum([0] + [len(r) for r in ref]).tolist()
            batches = {(i // 100, i % 100 // 30) for i in idx}  # (shard, record batch) of each sample
            if idx and idx == list(range(idx[0], idx[-1] + 1)) and len(batches) == 1:  # a view of the file
                assert in_a_file_mapping(got["values"])
                assert _copied(records) == {"tokens.cu_seqlens": 4 * (len(idx) + 1)}
            elif ref:
                assert _copied(records)["tokens"] == sum(r.nbytes for r in ref)
        elif output == "padded" and ref:
            assert torch.equal(got["values"], pad_sequence(ref, batch_first=True, padding_value=-1))
        elif output == "nested" and ref:
            assert [t.tolist() for t in got.unbind()] == [r.tolist() for r in ref]
        idx = rng.permutation(300)[:50].tolist()  # and a shuffled batch over every shard
        got = zero_copy_collate(ds.__getitems__(idx))["tokens"]
        flat = got["values"] if output != "nested" else got.values()
        if output != "padded":
            assert torch.equal(flat, torch.from_numpy(np.concatenate([docs[i] for i in idx])))


@pytest.mark.parametrize("output", ["packed", "padded"])
def test_ragged_ledger_reasons_name_the_shards_the_values_came_from(tmp_path: Path, docs, output: str) -> None:
    paths = [_write(tmp_path / f"s{i}.arrow", docs[i * 100 : (i + 1) * 100], batch_rows=30) for i in range(3)]
    ds = ArrowDataset(paths, ragged={"tokens": output})
    with capture() as records:
        zero_copy_collate(ds.__getitems__([5, 150, 7]))  # shards 0 and 1
    (reason,) = {r[2] for r in records if r[1] == "tokens"}
    assert reason.endswith("; rows from shards 's0.arrow', 's1.arrow'")
    if output == "packed":
        with capture() as records:
            zero_copy_collate(ds.__getitems__(list(range(210, 220))))  # a run inside one record batch of s2
        (reason,) = {r[2] for r in records if r[1] == "tokens"}
        assert reason == "view: ragged values of contiguous samples; rows from shard 's2.arrow'"


def test_a_hugging_face_folder_of_shards_with_a_sequence_column(tmp_path: Path, docs) -> None:
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {"input_ids": [d.tolist() for d in docs]},
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}),
    )
    hf.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    ds = ArrowDataset(tmp_path / "hf", ragged={"input_ids": "packed"})
    assert "3 shards" in ds.origin
    torch.manual_seed(1)
    for mode in ("threads", "processes"):  # gather threads, and worker processes that open the shards themselves
        loader = ZeroCopyDataLoader(ds, batch_size=32, shuffle=True, num_workers=2, worker_mode=mode, timeout=60)
        got = []
        for batch in loader:
            lengths = np.diff(batch["input_ids"]["cu_seqlens"].numpy()).tolist()
            got += [t.tolist() for t in batch["input_ids"]["values"].split(lengths)]
        assert sorted(map(tuple, got)) == sorted(tuple(d.tolist()) for d in docs)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_ragged_batches_from_worker_processes_cross_as_descriptors(tmp_path: Path, docs, context) -> None:
    ds = ArrowDataset(_write(tmp_path / "t.arrow", docs), ragged={"tokens": "packed"})
    loader = ZeroCopyDataLoader(ds, batch_size=20, num_workers=2, multiprocessing_context=context, timeout=60)
    seen = []
    for batch in loader:
        labels = batch["label"].tolist()
        seen += labels
        assert torch.equal(batch["tokens"]["values"], torch.from_numpy(np.concatenate([docs[i] for i in labels])))
        if len({i // 100 for i in labels}) == 1:  # inside one record batch: a view of the file, sent as a descriptor
            assert in_a_file_mapping(batch["tokens"]["values"])
    assert seen == list(range(len(docs)))
    ledger = explain(loader, batches=3)
    assert {r.field: r.bytes_copied for r in ledger.rows if r.bytes_copied and r.stage != "worker->main"} == {
        "tokens.cu_seqlens": 3 * 21 * 4
    }


def test_shuffled_batches_through_the_loader_and_gather_threads(tmp_path: Path, docs) -> None:
    ds = ArrowDataset(_write(tmp_path / "t.arrow", docs), ragged={"tokens": "nested"})
    torch.manual_seed(0)
    loader = ZeroCopyDataLoader(ds, batch_size=32, shuffle=True, num_workers=2, worker_mode="threads")
    seen = []
    for batch in loader:
        labels = batch["label"].tolist()
        seen += labels
        assert [t.tolist() for t in batch["tokens"].unbind()] == [docs[i].tolist() for i in labels]
    assert sorted(seen) == list(range(len(docs)))


@pytest.mark.reliability
def test_null_lists_and_null_values_are_refused_naming_the_field(tmp_path: Path) -> None:
    for rows, where in (([[1, 2], None, [3]], "holds 1 nulls"), ([[1, None], [2], [3]], "holds 1 nulls")):
        path = tmp_path / "n.arrow"
        table = pa.table({"tokens": pa.array(rows, pa.list_(pa.int32()))})
        with pa.ipc.new_file(path, table.schema) as w:
            w.write_table(table)
        with pytest.raises(UnsupportedColumnError, match=rf"field 'tokens': record batch 0 {where}.*fill_null"):
            ArrowDataset(path, ragged={"tokens": "packed"})


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ([0, 4, 2, 6], r"record batch 0: field 'tokens' at index 1: offsets decrease \(4 then 2\)"),
        ([0, 3, 5, 9], r"offsets end at 9, past the 6 values|cannot read it as an Arrow IPC file"),
        ([-2, 3, 5, 6], r"offsets start at -2|cannot read it as an Arrow IPC file"),
    ],
)
def test_bad_offsets_in_the_file_are_an_error_never_a_wrong_batch(tmp_path: Path, offsets, message) -> None:
    # a valid file written by pyarrow, whose offsets buffer is then overwritten in place
    good = np.array([0, 3, 5, 6], dtype=np.int32).tobytes()
    table = pa.table({"tokens": pa.array([[0, 1, 2], [3, 4], [5]], pa.list_(pa.int32()))})
    path = tmp_path / "bad.arrow"
    with pa.ipc.new_file(path, table.schema) as w:
        w.write_table(table)
    data = path.read_bytes()
    assert data.count(good) == 1
    path.write_bytes(data.replace(good, np.array(offsets, dtype=np.int32).tobytes()))
    with pytest.raises((SchemaError, CorruptFileError), match=message):
        ArrowDataset(path, ragged={"tokens": "packed"})


def test_wrong_ragged_settings_say_what_to_do(tmp_path: Path, docs) -> None:
    path = _write(tmp_path / "t.arrow", docs)
    with pytest.raises(UnsupportedColumnError, match=r"lists differ in length.*ragged=\{'tokens': 'packed'\}"):
        ArrowDataset(path)
    with pytest.raises(SchemaError, match=r"ragged= names \['words'\], not among the columns served"):
        ArrowDataset(path, ragged={"words": "packed"})
    with pytest.raises(UnsupportedColumnError, match=r"ragged= names Arrow lists .* found int64"):
        ArrowDataset(path, ragged={"label": "packed"})
    with pytest.raises(ValueError, match="a ragged field is batched as one of"):
        ArrowDataset(path, ragged={"tokens": "stacked"})
    fixed = tmp_path / "f.arrow"
    table = pa.table({"tokens": pa.array([[1, 2]] * 3, pa.list_(pa.int32(), 2))})
    with pa.ipc.new_file(fixed, table.schema) as w:
        w.write_table(table)
    with pytest.raises(UnsupportedColumnError, match="one length for every list already"):
        ArrowDataset(fixed, ragged={"tokens": "packed"})


def test_inspect_names_a_varying_list_column_ragged_with_its_length_histogram(tmp_path: Path) -> None:
    docs = [np.arange(k, dtype=np.int32) for k in (0, 1, 2, 3, 7, 8, 9)]
    report = inspect_path(_write(tmp_path / "t.arrow", docs, batch_rows=3))
    tokens = next(f for f in report.fields if f.name == "tokens")
    assert tokens.zero_copy and tokens.dtype == "int32"
    assert "ragged={'tokens': 'packed'}" in tokens.why
    assert tokens.why.endswith("lengths min 0, median 3, max 9; 0: 1, 1: 1, 2: 1, 3-4: 1, 5-8: 2, 9-16: 1")
    assert ArrowDataset(tmp_path / "t.arrow", ragged={"tokens": "packed"}).ragged_lengths("tokens").tolist() == [
        0, 1, 2, 3, 7, 8, 9
    ]
