"""Bool and dictionary columns as pyarrow and polars write them: bools unpacked on request, indices zero-copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset
from zcopy_data.errors import SchemaError, UnsupportedColumnError
from zcopy_data.ledger import LEDGER

pl = pytest.importorskip("polars")

N = 300


def _write(path: Path, table: pa.Table, chunk: int = 100) -> Path:
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=chunk)
    return path


@pytest.fixture
def flags() -> np.ndarray:
    return np.random.default_rng(0).random(N) < 0.5


def _bool_files(tmp_path: Path, flags: np.ndarray, writer: str) -> Path:
    x = np.arange(N, dtype=np.float32)
    if writer == "pyarrow":
        return _write(tmp_path / "b.arrow", pa.table({"x": pa.array(x), "flag": pa.array(flags)}))
    pl.DataFrame({"x": x, "flag": flags}).write_ipc(tmp_path / "b.arrow")
    return tmp_path / "b.arrow"


@pytest.mark.parametrize("writer", ["pyarrow", "polars"])
def test_bools_are_refused_by_default_naming_the_opt_in(tmp_path, flags, writer):
    path = _bool_files(tmp_path, flags, writer)
    with pytest.raises(UnsupportedColumnError, match=r"field 'flag'.*bit-packed.*bools='unpack'"):
        ArrowDataset(path)


@pytest.mark.parametrize("writer", ["pyarrow", "polars"])
@pytest.mark.parametrize("indices", [[5, 299, 0, 150, 101], list(range(10, 60))], ids=["scattered", "contiguous"])
def test_bools_unpack_into_a_torch_bool_batch_counted_as_a_copy(tmp_path, flags, writer, indices):
    ds = ArrowDataset(_bool_files(tmp_path, flags, writer), bools="unpack")
    assert ds.schema["flag"].dtype == torch.bool and list(ds.schema) == ["x", "flag"]
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(indices))
    assert batch["flag"].dtype == torch.bool and torch.equal(batch["flag"], torch.from_numpy(flags[indices]))
    rows = {r.field: r for r in LEDGER.rows}
    assert rows["flag"].reason.startswith("unpack: bit-packed bools") and rows["flag"].bytes_copied == len(indices)
    assert bool(ds[7]["flag"]) == bool(flags[7])


def test_sliced_bool_chunks_keep_their_bit_offset(tmp_path, flags):
    table = pa.table({"flag": pa.array(flags)})
    path = tmp_path / "sliced.arrow"
    with pa.ipc.new_file(str(path), table.schema) as w:
        for lo in range(0, N, 37):  # record batches that start mid-byte of the original bitmap
            w.write_batch(table.slice(lo, 37).to_batches()[0])
    ds = ArrowDataset(path, bools="unpack")
    idx = np.random.default_rng(1).permutation(N)[:64]
    assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["flag"], torch.from_numpy(flags[idx]))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_bools_across_shards_through_workers(tmp_path, flags, context):
    for s in range(3):
        lo, hi = s * 100, (s + 1) * 100
        pl.DataFrame({"i": np.arange(lo, hi), "flag": flags[lo:hi]}).write_ipc(tmp_path / f"p-{s}.arrow")
    ds = ArrowDataset(str(tmp_path / "p-*.arrow"), bools="unpack")
    loader = DataLoader(
        ds, batch_size=32, shuffle=True, num_workers=2, multiprocessing_context=context, collate_fn=zero_copy_collate
    )
    seen = 0
    for b in loader:
        assert torch.equal(b["flag"], torch.from_numpy(flags[b["i"].numpy()]))
        seen += len(b["i"])
    assert seen == N


# -- dictionary columns --------------------------------------------------------------------------
def _dict_file(tmp_path: Path, writer: str, values: list[str], name: str = "d.arrow") -> Path:
    path = tmp_path / name
    if writer == "pyarrow":
        return _write(path, pa.table({"c": pa.array(values).dictionary_encode(), "y": pa.array(range(len(values)))}))
    dtype = pl.Enum(["cat", "dog", "eel"]) if writer == "polars-enum" else pl.Categorical
    pl.DataFrame({"c": pl.Series(values, dtype=dtype), "y": range(len(values))}).write_ipc(path)
    return path


@pytest.mark.parametrize("writer", ["pyarrow", "polars-categorical", "polars-enum"])
def test_dictionary_indices_are_zero_copy_and_the_dictionary_is_exposed(tmp_path, writer):
    values = [["cat", "dog", "eel"][i % 3] for i in range(N)]
    ds = ArrowDataset(_dict_file(tmp_path, writer, values))
    cats = ds.categories["c"]
    assert set(cats) >= {"cat", "dog", "eel"}
    LEDGER.reset()
    view = zero_copy_collate(ds.__getitems__(range(3, 9)))
    assert [cats[int(i)] for i in view["c"]] == values[3:9]
    assert LEDGER.bytes_copied == 0 and not view["c"].dtype.is_floating_point
    view["c"][0] = view["c"][1]  # a view of the mapping: visible through the next read (copy-on-write)
    assert ds[3]["c"] == ds[4]["c"]
    idx = [250, 1, 77]
    got = zero_copy_collate(ds.__getitems__(idx))["c"]
    assert [cats[int(i)] for i in got] == [values[i] for i in idx]


def test_shards_with_one_dictionary_serve_one_index_space(tmp_path):
    enum = pl.Enum(["cat", "dog", "eel"])
    parts = [["eel", "eel"], ["cat", "dog", "cat"]]  # each frame alone would number its own values differently
    for s, vals in enumerate(parts):
        pl.DataFrame({"c": pl.Series(vals, dtype=enum)}).write_ipc(tmp_path / f"e-{s}.arrow")
    ds = ArrowDataset(str(tmp_path / "e-*.arrow"))
    got = zero_copy_collate(ds.__getitems__([4, 0, 2]))["c"]
    assert [ds.categories["c"][int(i)] for i in got] == ["cat", "eel", "cat"]


@pytest.mark.reliability
def test_a_shard_with_another_dictionary_is_named(tmp_path):
    _write(tmp_path / "a-0.arrow", pa.table({"c": pa.array(["x", "y"]).dictionary_encode()}))
    _write(tmp_path / "a-1.arrow", pa.table({"c": pa.array(["y", "x"]).dictionary_encode()}))
    with pytest.raises(SchemaError, match=r"shard 1 .*a-1\.arrow.*field 'c'.*dictionary \['y', 'x'\].*\['x', 'y'\]"):
        ArrowDataset(str(tmp_path / "a-*.arrow"))


def test_inspect_shows_the_shard_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    from zcopy_data.inspect import format_report, inspect_path

    hf = datasets.Dataset.from_dict({"x": np.arange(30, dtype=np.int64)})
    hf.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    report = inspect_path(tmp_path / "hf")
    assert report.format == "Hugging Face save_to_disk folder, 3 Arrow IPC stream shards"
    assert report.samples == 30 and report.fields[0].zero_copy
    assert "data-00001-of-00003.arrow: 10" in report.notes[0]
    assert "rows per shard" in format_report(report)
