from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from zcopy_data import LEDGER, SchemaError, explain, zero_copy_collate
from zcopy_data.datasets import ArrowDataset, CorruptFileError, UnsupportedColumnError

N = 40


def _column(arr: np.ndarray) -> pa.Array:
    """An Arrow column of ``arr`` (first axis = rows): primitive, or nested FixedSizeLists."""
    col = pa.array(arr.reshape(-1))
    for k in reversed(arr.shape[1:]):
        col = pa.FixedSizeListArray.from_arrays(col, k)
    return col


def _write_ipc(path: Path, table: pa.Table, chunk: int | None = None, *, stream: bool = False) -> Path:
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(path, table.schema) as w:
        for b in table.to_batches(max_chunksize=chunk):
            w.write_batch(b)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, size=(N, 3, 4, 5), dtype=np.uint8),
        "label": np.arange(N, dtype=np.int64),
    }


@pytest.fixture
def table(data: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({k: _column(v) for k, v in data.items()})


@pytest.fixture
def single(tmp_path: Path, table: pa.Table) -> Path:
    return _write_ipc(tmp_path / "one.arrow", table)


@pytest.fixture
def chunked(tmp_path: Path, table: pa.Table) -> Path:
    return _write_ipc(tmp_path / "chunked.arrow", table, chunk=7)  # record batches of 7,7,7,7,7,5


# -- schema and values ------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize(
    "dtype",
    [
        np.uint8,
        np.int8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_values_and_schema_follow_the_arrow_types(tmp_path, dtype, shape, chunk):
    arr = (np.arange(10 * int(np.prod(shape))) % 120).astype(dtype).reshape(10, *shape)
    path = _write_ipc(tmp_path / "t.arrow", pa.table({"x": _column(arr)}), chunk)
    ds = ArrowDataset(path)
    assert ds.schema["x"].dtype == torch.from_numpy(arr).dtype
    assert ds.schema["x"].shape == shape
    for idx in ([0, 1, 2], [4, 5, 6, 7], [9, 0, 5, 3], list(range(10))):
        batch = zero_copy_collate(ds.__getitems__(idx))
        assert torch.equal(batch["x"], torch.from_numpy(arr[idx]))


def test_fixed_shape_tensor_and_uniform_lists_keep_their_shapes(tmp_path):
    vals = np.arange(N * 6, dtype=np.float32)
    tensor = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.float32(), (2, 3)), pa.FixedSizeListArray.from_arrays(pa.array(vals), 6)
    )
    lists = pa.array([[i, i + 1, i + 2] for i in range(N)], pa.list_(pa.int32()))
    path = _write_ipc(tmp_path / "t.arrow", pa.table({"t": tensor, "l": lists}), chunk=9)
    ds = ArrowDataset(path)
    assert str(ds.schema) == "Schema({'t': float32[2, 3], 'l': int32[3]})"
    batch = zero_copy_collate(ds.__getitems__([12, 3]))
    assert torch.equal(batch["t"], torch.from_numpy(vals.reshape(N, 2, 3)[[12, 3]]))
    assert batch["l"].tolist() == [[12, 13, 14], [3, 4, 5]]


def test_columns_selects_and_orders_fields(single):
    ds = ArrowDataset(single, ["label", "image"])
    assert list(ds.schema) == ["label", "image"]
    with pytest.raises(SchemaError, match=r"columns \['nope'\] not found; the file has \['image', 'label'\]"):
        ArrowDataset(single, ["nope"])


# -- zero-copy proofs --------------------------------------------------------------------------
def test_contiguous_batch_is_a_view_of_the_file_mapping(single, data):
    ds = ArrowDataset(single)
    loader = DataLoader(ds, batch_size=8, collate_fn=zero_copy_collate)
    batch = next(iter(loader))
    view = ds._views["image"][0]
    assert batch["image"].data_ptr() == view.ctypes.data
    assert np.shares_memory(batch["image"].numpy(), ds._mapped)
    assert np.array_equal(batch["image"].numpy(), data["image"][:8])
    # The view's storage is the batch's bytes, not the whole file (what a worker would have to pickle).
    assert batch["image"].untyped_storage().nbytes() == 8 * 60
    ledger = explain(loader, batches=4)
    assert ledger.bytes_copied == 0
    assert ledger.bytes_viewed == 4 * 8 * (60 + 8)


def test_batch_inside_a_later_record_batch_is_a_view(chunked, data):
    ds = ArrowDataset(chunked)
    assert ds.num_record_batches == 6
    batch = zero_copy_collate(ds.__getitems__(range(15, 20)))  # record batch 2 holds rows 14..20
    assert batch["image"].data_ptr() == ds._views["image"][2][1:].ctypes.data
    assert np.array_equal(batch["image"].numpy(), data["image"][15:20])


def test_batch_spanning_record_batches_is_exactly_one_gather(chunked, data):
    ds = ArrowDataset(chunked)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(range(5, 16)))  # rows of record batches 0, 1 and 2
    assert np.array_equal(batch["image"].numpy(), data["image"][5:16])
    assert not np.shares_memory(batch["image"].numpy(), ds._mapped)
    rows = {r.field: r for r in LEDGER.rows}
    assert rows["image"].bytes_copied == 11 * 60 and rows["image"].events == 1
    assert "span record batches" in rows["image"].reason


def test_shuffled_batches_are_one_gather_per_field(chunked, data):
    ds = ArrowDataset(chunked)
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=zero_copy_collate)
    ledger = explain(loader, batches=2)
    assert ledger.bytes_copied == 2 * 16 * (60 + 8)
    assert {r.reason for r in ledger.rows if r.stage != "pin"} == {"gather: indices not contiguous (IPC file)"}
    seen = torch.cat([b["label"] for b in loader])
    assert sorted(seen.tolist()) == list(range(N))
    for b in loader:
        assert torch.equal(b["image"], torch.from_numpy(data["image"][b["label"].numpy()]))


# -- writes never reach the file ----------------------------------------------------------------
def test_in_place_op_on_a_view_never_writes_the_file(single):
    before = _sha(single)
    ds = ArrowDataset(single)
    batch = zero_copy_collate(ds.__getitems__(range(8)))
    batch["image"] += 1  # a private page of this process: no SIGSEGV, no warning
    batch["label"].zero_()
    assert _sha(single) == before
    # Documented: the view is the process's mapping, so later reads here see the write ...
    assert int(ds[3]["label"]) == 0
    # ... while a fresh process (a new mapping of the unchanged file) does not.
    fresh = pa.ipc.open_file(str(single)).read_all()
    assert fresh.column("label").to_pylist()[3] == 3


def test_copy_true_isolates_batches_from_the_mapping(tmp_path, table):
    path = _write_ipc(tmp_path / "c.arrow", table)
    ds = ArrowDataset(path, copy=True)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(range(8)))
    batch["label"] += 100
    assert int(ds[0]["label"]) == 0
    assert {r.reason for r in LEDGER.rows} == {"gather: copy=True (IPC file)"}


# -- formats --------------------------------------------------------------------------------
def test_feather_v2_uncompressed_and_ipc_stream_are_zero_copy(tmp_path, table, data):
    fea = tmp_path / "t.feather"
    feather.write_feather(table, fea, compression="uncompressed", chunksize=16)
    stream = _write_ipc(tmp_path / "t.arrows", table, chunk=16, stream=True)
    for path in (fea, stream):
        ds = ArrowDataset(path)
        batch = zero_copy_collate(ds.__getitems__(range(16, 20)))
        assert np.shares_memory(batch["image"].numpy(), ds._mapped)
        assert np.array_equal(batch["image"].numpy(), data["image"][16:20])


def test_compressed_feather_is_refused_then_decoded_once_on_request(tmp_path, table, data):
    fea = tmp_path / "lz4.feather"
    feather.write_feather(table, fea)  # Feather's default: lz4
    with pytest.raises(UnsupportedColumnError, match=r"field 'image'.*compressed.*from_compressed"):
        ArrowDataset(fea)
    ds = ArrowDataset.from_compressed(fea, cache_dir=tmp_path / "cache")
    assert ds.cache_reused is False and ds.source == str(fea)
    batch = zero_copy_collate(ds.__getitems__([3, 1]))
    assert np.array_equal(batch["image"].numpy(), data["image"][[3, 1]])
    assert ArrowDataset.from_compressed(fea, cache_dir=tmp_path / "cache").cache_reused is True


def test_parquet_is_decoded_once_then_served_zero_copy_from_the_cache(tmp_path, table, data):
    src = tmp_path / "t.parquet"
    pq.write_table(table, src, row_group_size=16)
    cache = tmp_path / "cache"
    LEDGER.reset()
    ds = ArrowDataset.from_parquet(src, cache_dir=cache)
    assert ds.cache_reused is False
    assert {r.stage for r in LEDGER.rows} == {"decode"}
    assert LEDGER.copied("decode") >= N * (60 + 8)
    loader = DataLoader(ds, batch_size=8, collate_fn=zero_copy_collate)
    ledger = explain(loader, batches=2)
    assert ledger.bytes_copied == 0
    assert "IPC cache of a Parquet file" in str(ledger)
    batch = next(iter(loader))
    assert np.shares_memory(batch["image"].numpy(), ds._mapped)
    assert np.array_equal(batch["image"].numpy(), data["image"][:8])

    before = _sha(Path(ds.path))
    batch["image"].mul_(0)  # an in-place op on a view of the cache: private pages only
    assert _sha(Path(ds.path)) == before

    LEDGER.reset()
    again = ArrowDataset.from_parquet(src, cache_dir=cache)
    assert again.cache_reused is True and again.path == ds.path and LEDGER.copied("decode") == 0
    picked = ArrowDataset.from_parquet(src, ("label",), cache_dir=cache)
    assert picked.cache_reused is False and list(picked.schema) == ["label"]  # its own cache, label only
    assert ArrowDataset.from_parquet(src, ["label"], cache_dir=cache).cache_reused is True
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    assert ArrowDataset.from_parquet(src, cache_dir=cache).cache_reused is False  # source changed: rebuilt


def test_parquet_progress_bar_is_opt_in_for_small_files(tmp_path, table, capsys):
    src = tmp_path / "t.parquet"
    pq.write_table(table, src, row_group_size=8)
    ArrowDataset.from_parquet(src, cache_dir=tmp_path / "a")
    assert "decoding" not in capsys.readouterr().err
    ArrowDataset.from_parquet(src, cache_dir=tmp_path / "b", progress=True)
    assert "decoding t.parquet" in capsys.readouterr().err


# -- unsupported columns --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([1, None, 3] * 4, pa.int32()), r"record batch 0 holds 2 nulls \(first near row 1\).*fill_null"),
        (pa.array(["a", "b", "c"] * 4), r"strings and binaries are variable-length"),
        (pa.array(["a", "b", "c"] * 4, pa.large_string()), r"variable-length"),
        (pa.array([True, False, True] * 4), r"bit-packed.*uint8"),
        (pa.array(np.arange(12), pa.timestamp("s")), r"has units.*int64"),
        (pa.array([{"a": 1}] * 12), r"struct.*flatten"),
        (pa.array([[1], [1, 2], [3]] * 4, pa.list_(pa.int64())), r"lists differ in length.*row 1 has 2"),
        (pa.nulls(12), r"only nulls"),
    ],
    ids=["nulls", "string", "large_string", "bool", "timestamp", "struct", "ragged", "null"],
)
def test_unsupported_columns_are_refused_at_construction_with_the_fix(tmp_path, column, message):
    path = _write_ipc(tmp_path / "t.arrow", pa.table({"ok": pa.array(np.arange(12)), "bad": column}), chunk=5)
    with pytest.raises(UnsupportedColumnError, match=message) as info:
        ArrowDataset(path)
    assert info.value.field == "bad" and "'bad'" in str(info.value)
    assert len(ArrowDataset(path, ["ok"])) == 12  # leaving it out works


# -- bad files --------------------------------------------------------------------------------
def test_bad_files_get_clear_errors(tmp_path, single, table):
    with pytest.raises(FileNotFoundError, match="no such Arrow file"):
        ArrowDataset(tmp_path / "missing.arrow")
    trunc = tmp_path / "trunc.arrow"
    trunc.write_bytes(single.read_bytes()[: single.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"trunc\.arrow.*truncated or corrupt"):
        ArrowDataset(trunc)
    empty = tmp_path / "empty.arrow"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="too short"):
        ArrowDataset(empty)
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CorruptFileError, match="not an Arrow IPC file"):
        ArrowDataset(junk)
    parquet = tmp_path / "t.parquet"
    pq.write_table(table, parquet)
    with pytest.raises(CorruptFileError, match=r"Parquet file; use ArrowDataset.from_parquet"):
        ArrowDataset(parquet)


def test_parquet_footer_pointing_past_the_file_is_refused_before_decoding(tmp_path, table):
    src = tmp_path / "t.parquet"
    pq.write_table(table, src)
    raw = src.read_bytes()
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(raw[:64] + raw[-footer:])  # pages cut out, footer kept: its offsets now lie
    with pytest.raises(CorruptFileError, match=r"cut.parquet.*past the end of the .*-byte file"):
        ArrowDataset.from_parquet(bad, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.arrow"))
    half = tmp_path / "half.parquet"
    half.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=r"half\.parquet"):
        ArrowDataset.from_parquet(half, cache_dir=tmp_path / "cache")


# -- DataLoader workers --------------------------------------------------------------------------
@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork"), (1, "spawn")])
def test_dataloader_workers_see_every_sample_once(chunked, data, workers, context):
    ds = ArrowDataset(chunked)
    loader = DataLoader(
        ds,
        batch_size=6,
        shuffle=True,
        num_workers=workers,
        multiprocessing_context=context,
        collate_fn=zero_copy_collate,
        generator=torch.Generator().manual_seed(0),
    )
    labels = []
    for b in loader:
        assert torch.equal(b["image"], torch.from_numpy(data["image"][b["label"].numpy()]))
        labels += b["label"].tolist()
    assert sorted(labels) == list(range(N))
    if workers:
        ledger = explain(loader, batches=3)
        crossing = [r for r in ledger.rows if r.stage == "worker->main"]
        assert crossing and all(r.bytes_copied == 0 for r in crossing)  # gathered into shared memory


def test_empty_batches_and_empty_record_batches(tmp_path, table, data):
    empty = table.slice(0, 0)
    path = tmp_path / "holes.arrow"
    with pa.ipc.new_file(path, table.schema) as w:
        for part in (empty, table.slice(0, 10), empty, table.slice(10, 30)):
            for b in part.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]:
                w.write_batch(b)
    ds = ArrowDataset(path)
    assert len(ds) == N and ds.num_record_batches == 4
    batch = zero_copy_collate(ds.__getitems__(range(8, 12)))
    assert np.array_equal(batch["image"].numpy(), data["image"][8:12])
    none = zero_copy_collate(ds.__getitems__([]))
    assert none["image"].shape == (0, 3, 4, 5) and none["label"].dtype == torch.int64


def test_permuted_fixed_shape_tensor_is_refused(tmp_path):
    typ = pa.fixed_shape_tensor(pa.float32(), (2, 3), permutation=[1, 0])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 6)
    path = _write_ipc(tmp_path / "p.arrow", pa.table({"t": pa.ExtensionArray.from_storage(typ, storage)}))
    with pytest.raises(UnsupportedColumnError, match=r"field 't'.*permutation \[1, 0\].*without a permutation"):
        ArrowDataset(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_strings_opt_in_gives_python_lists_and_counts_the_copies(tmp_path, workers):
    names = [f"sample-{i}" for i in range(N)]
    table = pa.table({"name": pa.array(names), "label": pa.array(np.arange(N))})
    path = _write_ipc(tmp_path / "s.arrow", table, chunk=16)
    with pytest.raises(UnsupportedColumnError, match="strings='list'"):
        ArrowDataset(path)
    ds = ArrowDataset(path, strings="list")
    assert list(ds.schema) == ["label"] and ds[17] == {"name": "sample-17", "label": 17}
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers, collate_fn=zero_copy_collate)
    for batch in loader:
        assert list(batch) == ["name", "label"]
        assert batch["name"] == [names[i] for i in batch["label"].tolist()]
    ledger = explain(loader, batches=2)
    row = next(r for r in ledger.rows if r.field == "name")
    assert row.reason.startswith("copy: strings become Python str") and row.bytes_copied > 0


@settings(max_examples=25, deadline=None)
@given(
    chunks=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
    shape=st.sampled_from([(), (3,), (2, 5), (7,)]),
    data=st.data(),
)
def test_any_record_batch_layout_gathers_the_right_rows(tmp_path_factory, chunks, dtype, shape, data):
    n = sum(chunks)
    arr = (np.arange(max(n, 1) * int(np.prod(shape))) % 97).astype(dtype).reshape(max(n, 1), *shape)[:n]
    table = pa.table({"x": _column(arr), "i": pa.array(np.arange(n, dtype=np.int64))})
    path = tmp_path_factory.mktemp("layout") / "t.arrow"
    with pa.ipc.new_file(path, table.schema) as w:
        start = 0
        for size in chunks:  # record batches of these sizes, empty ones included
            w.write_batch(table.slice(start, size).combine_chunks().to_batches()[0] if size else
                          pa.RecordBatch.from_pylist([], schema=table.schema))  # fmt: skip
            start += size
    ds = ArrowDataset(path)
    assert len(ds) == n
    if n == 0:
        return
    idx = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=12))
    batch = zero_copy_collate(ds.__getitems__(idx))
    assert torch.equal(batch["x"], torch.from_numpy(arr[idx]))
    assert torch.equal(batch["i"], torch.from_numpy(np.arange(n)[idx]))
