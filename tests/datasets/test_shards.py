"""Many Arrow / ``.npy`` files as one dataset: global indices, views inside a shard, one gather otherwise.

Shards are written by their real writers (pyarrow, Hugging Face ``datasets``, ``np.save``) in
``tmp_path``; zero-copy is asserted on data pointers and on the ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from zcopy_data import _mapping, explain, zero_copy_collate
from zcopy_data.datasets import ArrowDataset, NumpyDataset
from zcopy_data.errors import CorruptFileError, DtypeDriftError, FileChangedError, SchemaError
from zcopy_data.ledger import LEDGER

N, SHARDS, BATCH = 600, 4, 24


def _in_a_file_mapping(t: torch.Tensor) -> bool:
    ptr = t.data_ptr()
    return any(r.start <= ptr < r.stop for r in list(_mapping._ranges.values()))


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]), "y": pa.array(y)})


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(N * 6, dtype=np.float32).reshape(N, 6), np.arange(N, dtype=np.int64)


@pytest.fixture
def shard_files(tmp_path: Path, data) -> list[Path]:
    """Four pyarrow IPC files of 150 rows, each in record batches of 50 rows."""
    x, y = data
    paths = []
    per = N // SHARDS
    for s in range(SHARDS):
        path = tmp_path / f"part-{s:02d}.arrow"
        table = _table(x[s * per : (s + 1) * per], y[s * per : (s + 1) * per])
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table, max_chunksize=50)
        paths.append(path)
    return paths


# -- sources: list, glob, folder ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["list", "glob", "folder"])
def test_shards_read_as_one_dataset_with_global_indices(shard_files, data, how):
    folder = shard_files[0].parent
    source = {"list": shard_files, "glob": str(folder / "part-*.arrow"), "folder": folder}[how]
    ds = ArrowDataset(source)
    x, _ = data
    assert len(ds) == N and ds.schema["x"].shape == (6,)
    assert ds.paths == [str(p) for p in shard_files]
    rng = np.random.default_rng(0)
    for _ in range(10):
        idx = rng.integers(0, N, BATCH)
        batch = zero_copy_collate(ds.__getitems__(idx))
        assert torch.equal(batch["x"], torch.from_numpy(x[idx])) and torch.equal(batch["y"], torch.from_numpy(idx))
    assert np.array_equal(ds[N - 1]["x"], x[N - 1])


def test_list_order_is_the_dataset_order(shard_files):
    ds = ArrowDataset(list(reversed(shard_files)))
    assert int(ds[0]["y"]) == N - N // SHARDS  # the last file's first row comes first


def test_batch_inside_one_record_batch_of_one_shard_is_a_view(shard_files, data):
    ds = ArrowDataset(shard_files)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(range(310, 330)))  # shard 2, record batch 0 (rows 300..350)
    assert np.array_equal(batch["x"].numpy(), data[0][310:330])
    shard = ds._shards.shard(2)  # type: ignore[union-attr]
    assert batch["x"].data_ptr() == shard._views["x"][0][10:].ctypes.data
    assert LEDGER.bytes_copied == 0 and LEDGER.bytes_viewed == 20 * (24 + 8)
    assert ds.batch_is_view((310, 330)) and not ds.batch_is_view((340, 360))


def test_batch_across_shards_is_exactly_one_gather_per_field(shard_files, data):
    ds = ArrowDataset(shard_files)
    idx = np.array([599, 0, 151, 449, 300, 2, 598, 150])  # every shard, out of order
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(idx))
    assert torch.equal(batch["x"], torch.from_numpy(data[0][idx]))
    rows = {r.field: r for r in LEDGER.rows}
    assert rows["x"].bytes_copied == idx.size * 24 and rows["x"].events == 1
    assert rows["y"].bytes_copied == idx.size * 8 and rows["y"].events == 1
    assert not any(_in_a_file_mapping(t) for t in batch.values())
    assert rows["x"].reason.endswith("; rows from more than 3 shards")  # 4 shards: counted, not listed
    span = zero_copy_collate(ds.__getitems__(range(140, 160)))  # contiguous, but across shards 0 and 1
    assert torch.equal(span["y"], torch.arange(140, 160))
    assert LEDGER.rows[-1].reason.endswith("; rows from shards 'part-00.arrow', 'part-01.arrow'")  # the copy's shards
    LEDGER.reset()
    zero_copy_collate(ds.__getitems__([460, 455]))  # inside shard 3, out of order
    assert {r.reason.rsplit("; ", 1)[1] for r in LEDGER.rows} == {"rows from shard 'part-03.arrow'"}


def test_loader_over_shards_sees_every_sample_once_shuffled(shard_files, data):
    loader = DataLoader(ArrowDataset(shard_files), batch_size=32, shuffle=True, collate_fn=zero_copy_collate)
    seen = []
    for b in loader:
        assert torch.equal(b["x"], torch.from_numpy(data[0][b["y"].numpy()]))
        seen += b["y"].tolist()
    assert sorted(seen) == list(range(N))
    ledger = explain(loader, batches=3)
    assert ledger.bytes_copied == 3 * 32 * (24 + 8)


# -- folder conventions ------------------------------------------------------------------------
def test_hugging_face_save_to_disk_folder_is_read_in_state_json_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    x = np.arange(90 * 4, dtype=np.float32).reshape(90, 4)
    hf = datasets.Dataset.from_dict(
        {"x": x, "label": np.arange(90)},
        features=datasets.Features({"x": datasets.Sequence(datasets.Value("float32"), length=4),
                                    "label": datasets.Value("int64")}),
    )
    hf.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    ds = ArrowDataset(tmp_path / "hf")
    assert len(ds.paths) == 3 and "save_to_disk" in ds.origin
    assert [os.path.basename(p) for p in ds.paths] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    idx = np.random.default_rng(1).permutation(90)[:40]
    batch = zero_copy_collate(ds.__getitems__(idx))
    assert torch.equal(batch["x"], torch.from_numpy(x[idx])) and torch.equal(batch["label"], torch.from_numpy(idx))


def _write_index(folder: Path, files: list[Path]) -> None:
    shards = [{"file": p.name, "rows": N // SHARDS, "bytes": p.stat().st_size, "sha256": ""} for p in files]
    meta = {"format": "zcopy-shards", "version": 1, "rows": N, "schema": {}, "shards": shards}
    (folder / "zcopy_index.json").write_text(json.dumps(meta))


@pytest.mark.reliability
def test_zcopy_index_gives_the_shard_order_and_checks_sizes(shard_files):
    folder = shard_files[0].parent
    _write_index(folder, [shard_files[2], shard_files[0], shard_files[1], shard_files[3]])
    ds = ArrowDataset(folder)
    assert int(ds[0]["y"]) == 300 and ds.origin.startswith("zcopy shard folder")
    with open(shard_files[1], "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CorruptFileError, match=r"shard 2 .*part-01\.arrow.*the index says \d+ bytes"):
        ArrowDataset(folder)
    shard_files[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"shard 2 'part-01\.arrow', which is missing"):
        ArrowDataset(folder)


def test_empty_glob_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        ArrowDataset(str(tmp_path / "*.arrow"))
    with pytest.raises(FileNotFoundError, match="no zcopy_index.json, no state.json"):
        ArrowDataset(tmp_path)


@pytest.mark.reliability
# -- schema drift and changed files ---------------------------------------------------------------
def test_a_drifting_shard_is_named_with_field_expected_and_found(shard_files, data):
    x, y = data
    table = _table(x[:10].astype(np.float64), y[:10])
    with pa.ipc.new_file(str(shard_files[2]), table.schema) as w:
        w.write_table(table)
    with pytest.raises(SchemaError, match=r"shard 2 .*part-02\.arrow.*field 'x' is fixed_size_list<item: double>"
                                          r"\[6\], the first shard has fixed_size_list<item: float>\[6\]"):
        ArrowDataset(shard_files)
    assert len(ArrowDataset(shard_files, ["y"])) == N - 140  # the drifting column left out: accepted


@pytest.mark.reliability
def test_a_shard_rewritten_after_construction_raises_file_changed(shard_files):
    ds = ArrowDataset(shard_files)
    zero_copy_collate(ds.__getitems__([0, 599]))  # maps shards 0 and 3
    os.utime(shard_files[3], ns=(1, 1))  # same bytes, another modification time: another file version
    with pytest.raises(FileChangedError, match="part-03.arrow"):
        zero_copy_collate(ds.__getitems__([0, 599]))


# -- thousands of shards: footers only, bounded descriptors -------------------------------------
def _open_fds(under: Path | None = None) -> int:
    """Descriptors this process holds (only those of files under ``under`` when given: other
    threads of the test session, finishing an earlier test's work, may open their own)."""
    if under is None:
        return len(os.listdir("/proc/self/fd"))
    prefix = str(under) + os.sep
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except OSError:
            pass  # closed meanwhile
    return count


def _inotify_instances() -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass
    return found


@pytest.mark.reliability
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_ten_thousand_shards_open_lazily_with_bounded_descriptors(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    schema = pa.schema([("v", pa.int32())])
    for s in range(10_000):
        with pa.ipc.new_file(str(folder / f"s-{s:05d}.arrow"), schema) as w:
            w.write_table(pa.table({"v": pa.array([2 * s, 2 * s + 1], pa.int32())}))
    before, maps, watches = _open_fds(folder), _mapping.mapping_count(), _inotify_instances()
    ds = ArrowDataset(folder, max_open=32)
    assert len(ds) == 20_000
    assert _open_fds(folder) - before <= 1 and _mapping.mapping_count() - maps <= 1  # only shard 0 is mapped
    most = 0
    for start in range(0, 20_000, 500):
        idx = np.arange(start, start + 500)[::-1].copy()  # 250 shards per batch, each gathered
        batch = zero_copy_collate(ds.__getitems__(idx))
        assert torch.equal(batch["v"], torch.from_numpy(idx.astype(np.int32)))
        most = max(most, _open_fds(folder) - before)
    assert most <= 32 + 2
    assert _mapping.mapping_count() - maps <= 32
    assert _inotify_instances() - watches <= 1  # one watch instance for every shard of the dataset


# -- worker processes: descriptors for views, shared memory for gathers ---------------------------
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_sharded_views_cross_from_workers_as_descriptors(shard_files, data, context):
    loader = DataLoader(
        ArrowDataset(shard_files),
        batch_size=25,  # every batch inside one record batch of 50 rows
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=zero_copy_collate,
        timeout=60,
    )
    batches = list(loader)
    assert len(batches) == N // 25
    for b in batches:
        assert torch.equal(b["x"], torch.from_numpy(data[0][b["y"].numpy()]))
        assert _in_a_file_mapping(b["x"]) and not b["x"].is_shared()
    ledger = explain(loader, batches=4)
    assert ledger.bytes_copied == 0
    crossing = {r.reason for r in ledger.rows if r.stage == "worker->main"}
    assert crossing and all(reason.startswith("descriptor") for reason in crossing), crossing


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_sharded_gathers_from_workers_are_shared_memory(shard_files, data, context):
    loader = DataLoader(
        ArrowDataset(shard_files),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=zero_copy_collate,
        timeout=60,
    )
    seen = []
    for b in loader:
        assert torch.equal(b["x"], torch.from_numpy(data[0][b["y"].numpy()]))
        seen += b["y"].tolist()
    assert sorted(seen) == list(range(N))
    ledger = explain(loader, batches=4)
    assert ledger.bytes_copied == ledger.copied("collate") == 4 * BATCH * (24 + 8)  # the gather, nothing more
    assert {r.reason for r in ledger.rows if r.stage == "worker->main"} == {
        "handle: pooled shared-memory buffer, mapped once by the main process"
    }


# -- NumpyDataset shards ---------------------------------------------------------------------------
@pytest.fixture
def npy_shards(tmp_path: Path, data) -> tuple[str, list[str]]:
    x, y = data
    for s in range(SHARDS):
        np.save(tmp_path / f"x-{s}.npy", x[s * 150 : (s + 1) * 150])
    cuts = [0, 100, 350, 600]  # the label shards are cut elsewhere
    ys = []
    for s in range(3):
        np.save(tmp_path / f"y-{s}.npy", y[cuts[s] : cuts[s + 1]])
        ys.append(str(tmp_path / f"y-{s}.npy"))
    return str(tmp_path / "x-*.npy"), ys


def test_numpy_shards_per_field_are_one_dataset(npy_shards, data):
    xs, ys = npy_shards
    ds = NumpyDataset({"x": xs, "y": ys})
    assert isinstance(ds, NumpyDataset) and len(ds) == N
    assert str(ds.schema) == "Schema({'x': float32[6], 'y': int64[]})"
    idx = np.random.default_rng(2).integers(0, N, 50)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(idx))
    assert torch.equal(batch["x"], torch.from_numpy(data[0][idx])) and torch.equal(batch["y"], torch.from_numpy(idx))
    assert LEDGER.bytes_copied == 50 * (24 + 8) and all(r.events == 1 for r in LEDGER.rows)
    LEDGER.reset()
    view = zero_copy_collate(ds.__getitems__(range(160, 200)))  # x shard 1, y shard 1
    assert LEDGER.bytes_copied == 0 and np.array_equal(view["x"].numpy(), data[0][160:200])
    assert _in_a_file_mapping(view["x"]) and ds.batch_is_view((160, 200)) and not ds.batch_is_view((90, 110))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_numpy_shards_through_worker_processes(npy_shards, data, context):
    xs, ys = npy_shards
    loader = DataLoader(
        NumpyDataset({"x": xs, "y": ys}),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=zero_copy_collate,
        timeout=60,
    )
    seen = []
    for b in loader:
        assert torch.equal(b["x"], torch.from_numpy(data[0][b["y"].numpy()]))
        seen += b["y"].tolist()
    assert sorted(seen) == list(range(N))


@pytest.mark.reliability
def test_numpy_shard_drift_and_length_mismatch_are_named(tmp_path, npy_shards, data):
    xs, ys = npy_shards
    np.save(tmp_path / "x-2.npy", data[0][300:450].astype(np.float64))
    with pytest.raises(DtypeDriftError, match=r"field 'x': shard 2 .*x-2\.npy' holds float64.*shard 0 .* float32"):
        NumpyDataset({"x": xs, "y": ys})
    with pytest.raises(SchemaError, match="different numbers of samples"):
        NumpyDataset({"x": [str(tmp_path / "x-0.npy")], "y": ys})
