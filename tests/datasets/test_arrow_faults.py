"""Fault injection on Arrow IPC and Parquet files written by pyarrow and then damaged.

Truncated, mislabelled, compressed and null-holding files end in ``CorruptFileError`` or
``UnsupportedColumnError`` naming the file or column, at construction; random byte flips in the
metadata never crash the process; Parquet footers are checked against the file size before
anything is decoded, also by ``zcopy-data inspect``. Columns whose lists are all empty are served;
names that are not UTF-8 (field names inside a file, file names on disk) are a clear error or are
escaped when printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support import ROOT, run_isolated
from zcopy_data import explain, zero_copy_collate
from zcopy_data.datasets import ArrowDataset, CorruptFileError, UnsupportedColumnError
from zcopy_data.inspect import inspect_path

pytestmark = pytest.mark.reliability

N = 100


def _table() -> pa.Table:
    return pa.table(
        {
            "x": pa.array(np.arange(N, dtype=np.float32)),
            "y": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(N * 4, dtype=np.int16)), 4),
        }
    )


def _write_ipc(path: Path, *, stream: bool = False, compression: str | None = None) -> Path:
    table = _table()
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    open_writer = pa.ipc.new_stream if stream else pa.ipc.new_file
    with open_writer(str(path), table.schema, options=opts) as writer:
        for batch in table.to_batches(max_chunksize=30):
            writer.write_batch(batch)
    return path


@pytest.fixture
def ipc(tmp_path: Path) -> Path:
    return _write_ipc(tmp_path / "t.arrow")


@pytest.mark.parametrize(
    "keep", [-1, -10, 0.5, 12, 6, 0], ids=["minus-1", "minus-10", "half", "12-bytes", "magic", "empty"]
)
def test_a_truncated_ipc_file_is_a_corrupt_file_error_naming_it(ipc: Path, tmp_path: Path, keep: float) -> None:
    raw = ipc.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    bad = tmp_path / "cut.arrow"
    bad.write_bytes(raw[:cut])
    with pytest.raises(CorruptFileError, match=rf"{str(bad)!r}: .*(truncated|too short|too small|Not an Arrow)"):
        ArrowDataset(bad)


def test_a_truncated_ipc_stream_is_a_corrupt_file_error(tmp_path: Path) -> None:
    raw = _write_ipc(tmp_path / "s.arrows", stream=True).read_bytes()
    bad = tmp_path / "cut.arrows"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=r"Expected to be able to read .* bytes for message body"):
        ArrowDataset(bad)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"XXXXXX", r"not an Arrow IPC file \(no ARROW1 magic\)"),
        (b"PAR1", r"a Parquet file; use ArrowDataset.from_parquet\(path\)"),
        (b"\x93NUMPY", r"a \.npy file; use NumpyDataset"),
        (b"FEA1", r"a Feather v1 file"),
    ],
    ids=["garbage", "parquet", "npy", "feather-v1"],
)
def test_a_mislabelled_file_says_what_it_is(ipc: Path, tmp_path: Path, head: bytes, message: str) -> None:
    bad = tmp_path / "other.arrow"
    bad.write_bytes(head + ipc.read_bytes()[len(head) :])
    with pytest.raises(CorruptFileError, match=message):
        ArrowDataset(bad)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_ipc_is_refused_at_construction_and_served_from_a_cache(tmp_path: Path, codec: str) -> None:
    path = _write_ipc(tmp_path / f"{codec}.arrow", compression=codec)
    with pytest.raises(
        UnsupportedColumnError, match=r"field 'x': record batch 0 is not stored as plain bytes.*compressed"
    ):
        ArrowDataset(path)
    ds = ArrowDataset.from_compressed(path, cache_dir=tmp_path / "cache")
    batch = zero_copy_collate(ds.__getitems__([99, 0, 31, 30]))
    assert batch["x"].tolist() == [99.0, 0.0, 31.0, 30.0]
    assert batch["y"][0].tolist() == [396, 397, 398, 399]


@pytest.mark.parametrize("where", [0, 2])
def test_nulls_in_any_record_batch_are_refused_at_construction(tmp_path: Path, where: int) -> None:
    path = tmp_path / "nulls.arrow"
    schema = pa.schema([("x", pa.float32())])
    with pa.ipc.new_file(str(path), schema) as writer:
        for b in range(3):
            values: list[Any] = [1.0, 2.0, 3.0]
            if b == where:
                values[1] = None
            writer.write_batch(pa.record_batch([pa.array(values, pa.float32())], schema=schema))
    with pytest.raises(UnsupportedColumnError, match=rf"field 'x': record batch {where} holds 1 nulls.*fill_null"):
        ArrowDataset(path)


def test_nulls_in_parquet_are_refused_not_served(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0], pa.float32())}), path)
    with pytest.raises(UnsupportedColumnError, match=r"field 'x': .* nulls"):
        ArrowDataset.from_parquet(path, cache_dir=tmp_path / "cache")


FUZZ = """
import json, os, sys, tempfile
import numpy as np
import pyarrow as pa
from zcopy_data import ZeroCopyError, zero_copy_collate
from zcopy_data.datasets import ArrowDataset

raw, rounds, seed = open(sys.argv[1], "rb").read(), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
folder = tempfile.mkdtemp()
outcomes = {}
for k in range(rounds):
    mutated = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.integers(0, len(raw)))
        mutated[pos] = int(rng.integers(0, 256)) if rng.random() < 0.5 else mutated[pos] ^ 0xFF
    path = os.path.join(folder, "m.arrow")
    with open(path, "wb") as f:
        f.write(mutated)
    try:
        ds = ArrowDataset(path)
        n = len(ds)
        if n:
            zero_copy_collate(ds.__getitems__(list(range(n))))
            zero_copy_collate(ds.__getitems__(list(range(n))[::-1]))
        key = "read"
    except (ZeroCopyError, OSError) as err:
        key = type(err).__name__
    except Exception as err:
        key = "undocumented " + type(err).__name__ + ": " + str(err)[:200]
    outcomes[key] = outcomes.get(key, 0) + 1
print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_random_byte_flips_never_crash_and_end_in_documented_errors(tmp_path: Path, stream: bool) -> None:
    path = _write_ipc(tmp_path / "t.arrow", stream=stream)
    proc = run_isolated(FUZZ, str(path), "150", "8" if stream else "7")
    assert proc.returncode == 0, f"the reading process crashed: rc={proc.returncode} {proc.stderr[-800:]}"
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [k for k in outcomes if k.startswith("undocumented")], outcomes
    assert outcomes.get("CorruptFileError", 0) > 10, outcomes  # the mutations do hit the metadata


# -- Parquet --------------------------------------------------------------------------------------
@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    path = tmp_path / "t.parquet"
    pq.write_table(_table(), path, row_group_size=30, compression="none")
    return path


def test_parquet_column_chunks_past_the_end_are_refused_before_decoding(parquet: Path, tmp_path: Path) -> None:
    raw = parquet.read_bytes()
    bad = tmp_path / "short.parquet"
    bad.write_bytes(raw[:4] + raw[2004:])  # data pages cut out, footer intact: its offsets now lie
    cache = tmp_path / "cache"
    with pytest.raises(CorruptFileError, match=r"declares bytes \d+\.\.\d+, past the end of the \d+-byte file"):
        ArrowDataset.from_parquet(bad, cache_dir=cache)
    assert not list(cache.glob("*.arrow")), "a cache was written for a corrupt file"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "Parquet magic bytes not found"),
        (lambda raw: raw[:-8] + (2**31).to_bytes(4, "little") + b"PAR1", "smaller than the size reported by footer"),
        (lambda raw: raw[:-12] + bytes(range(8)) + b"PAR1", "not a readable Parquet file"),
    ],
    ids=["truncated", "footer-length", "garbage-footer"],
)
def test_a_damaged_parquet_file_is_a_corrupt_file_error(
    parquet: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(damage(parquet.read_bytes()))
    with pytest.raises(CorruptFileError, match=message):
        ArrowDataset.from_parquet(bad, cache_dir=tmp_path / "cache")


def _footer_layout(raw: bytes) -> int:
    return len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")


def test_a_non_utf8_column_name_in_a_parquet_footer_is_a_corrupt_file_error(parquet: Path, tmp_path: Path) -> None:
    raw = bytearray(parquet.read_bytes())
    pos = raw.index(b"\x18\x01x", _footer_layout(raw)) + 2  # the schema element's name "x"
    raw[pos] = 0x87
    bad = tmp_path / "name.parquet"
    bad.write_bytes(raw)
    with pytest.raises(CorruptFileError, match=r"name\.parquet"):
        ArrowDataset.from_parquet(bad, cache_dir=tmp_path / "cache")


ABORTING_FOOTER = """
import sys
from zcopy_data.datasets import ArrowDataset, CorruptFileError
try:
    ArrowDataset.from_parquet(sys.argv[1], cache_dir=sys.argv[2])
except CorruptFileError as err:
    print("refused:", err)
"""


def test_a_parquet_footer_that_breaks_pyarrow_is_an_error_not_an_abort(parquet: Path, tmp_path: Path) -> None:
    raw = bytearray(parquet.read_bytes())
    if (len(raw), _footer_layout(raw)) != (4348, 3068):
        pytest.fail(f"this reproducer is specific to pyarrow 26.0's layout; found {(len(raw), _footer_layout(raw))}")
    raw[3325] = 0x87  # inside column 'y''s size statistics of row group 0
    bad = tmp_path / "abort.parquet"
    bad.write_bytes(raw)
    proc = run_isolated(ABORTING_FOOTER, str(bad), str(tmp_path / "cache"))
    assert proc.returncode == 0, f"rc={proc.returncode}: {proc.stderr[-300:]}"
    assert proc.stdout.startswith("refused:")


@pytest.mark.parametrize("index", [1.5, True])
def test_arrow_getitem_refuses_non_integer_indices(ipc: Path, index: Any) -> None:
    from zcopy_data import SampleIndexError

    with pytest.raises(SampleIndexError):
        ArrowDataset(ipc)[index]


# -- list columns whose lists are all empty ----------------------------------------------------------
# Arrow points the empty data buffer of such a column at a static address outside the file: that is
# not a compressed file, and a column with no bytes to read is still zero-copy, of shape (0,).
E = 10


def _write_table(path: Path, table: pa.Table, chunk: int | None = None) -> Path:
    with pa.ipc.new_file(str(path), table.schema) as w:
        for b in table.to_batches(max_chunksize=chunk):
            w.write_batch(b)
    return path


EMPTY_LISTS = [
    ("list", pa.list_(pa.float32()), [[]] * E, (0,), torch.float32),
    ("large_list", pa.large_list(pa.int64()), [[]] * E, (0,), torch.int64),
    ("nested", pa.list_(pa.list_(pa.int16())), [[]] * E, (0, 0), torch.int16),
    ("nested_inner", pa.list_(pa.list_(pa.float64())), [[[], []]] * E, (2, 0), torch.float64),
    ("fixed_size_0", pa.list_(pa.uint8(), 0), [[]] * E, (0,), torch.uint8),
]


def _empty_lists(typ: pa.DataType, values: list[Any]) -> pa.Table:
    return pa.table({"e": pa.array(values, typ), "label": pa.array(np.arange(E, dtype=np.int64))})


@pytest.mark.parametrize(
    ("typ", "values", "shape", "dtype"), [c[1:] for c in EMPTY_LISTS], ids=[c[0] for c in EMPTY_LISTS]
)
@pytest.mark.parametrize("chunk", [None, 3], ids=["one-batch", "record-batches-of-3"])
def test_an_all_empty_list_column_is_served_not_called_compressed(
    tmp_path: Path, typ: pa.DataType, values: list[Any], shape: tuple[int, ...], dtype: torch.dtype, chunk: int | None
) -> None:
    ds = ArrowDataset(_write_table(tmp_path / "e.arrow", _empty_lists(typ, values), chunk))
    assert ds.schema["e"].dtype == dtype and ds.schema["e"].shape == shape
    for indices in ([0, 1, 2], [9, 0, 4], list(range(E))):  # a view, a gather, one spanning record batches
        batch = zero_copy_collate(ds.__getitems__(indices))
        assert batch["e"].shape == (len(indices), *shape) and batch["e"].dtype == dtype
        assert batch["label"].tolist() == indices
    assert ds[7]["e"].shape == shape
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=zero_copy_collate)
    assert sorted(i for b in loader for i in b["label"].tolist()) == list(range(E))


def test_empty_lists_through_feather_parquet_and_inspect(tmp_path: Path) -> None:
    table = _empty_lists(pa.list_(pa.float32()), [[]] * E)
    feather.write_feather(table, tmp_path / "e.feather", compression="uncompressed")
    assert zero_copy_collate(ArrowDataset(tmp_path / "e.feather").__getitems__([3, 4]))["e"].shape == (2, 0)
    pq.write_table(table, tmp_path / "e.parquet")
    ds = ArrowDataset.from_parquet(tmp_path / "e.parquet", cache_dir=tmp_path / "cache")
    assert zero_copy_collate(ds.__getitems__([5, 1]))["e"].shape == (2, 0)
    field = {f.name: f for f in inspect_path(tmp_path / "e.feather").fields}["e"]
    assert field.zero_copy and field.shape == "(0,)", field
    report = explain(DataLoader(ds, batch_size=5, collate_fn=zero_copy_collate), batches=2)
    assert report.bytes_copied == 0  # a view of nothing and a view of the labels


def test_empty_lists_next_to_non_empty_ones_are_still_one_shape_per_column(tmp_path: Path) -> None:
    schema = pa.schema([("e", pa.list_(pa.float32()))])
    path = tmp_path / "mixed.arrow"
    with pa.ipc.new_file(str(path), schema) as w:
        w.write_batch(pa.record_batch([pa.array([[1.0, 2.0]] * 3, schema.field("e").type)], schema=schema))
        w.write_batch(pa.record_batch([pa.array([[]] * 3, schema.field("e").type)], schema=schema))
    with pytest.raises(UnsupportedColumnError, match=r"field 'e': record batch 1 has samples of shape \(0,\), earlier"):
        ArrowDataset(path)


def test_a_compressed_file_is_still_called_compressed(tmp_path: Path) -> None:
    table = pa.table({"x": pa.array(np.arange(100, dtype=np.float32)), "e": pa.array([[]] * 100, pa.list_(pa.int8()))})
    path = tmp_path / "lz4.arrow"
    with pa.ipc.new_file(str(path), table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(table)
    with pytest.raises(UnsupportedColumnError, match=r"field 'x': record batch 0 is not stored as plain bytes.*lz4"):
        ArrowDataset(path)
    ds = ArrowDataset(path, ["e"])  # nothing of 'e' needs decoding
    assert zero_copy_collate(ds.__getitems__([0, 50]))["e"].shape == (2, 0)


# -- zcopy-data inspect and names that are not UTF-8 ------------------------------------------------
INSPECT = """
import sys
from zcopy_data.cli import main
sys.exit(main(["inspect", *sys.argv[1:]]))
"""


def test_inspect_refuses_the_aborting_parquet_footer_instead_of_dying(parquet: Path, tmp_path: Path) -> None:
    raw = bytearray(parquet.read_bytes())
    if (len(raw), _footer_layout(raw)) != (4348, 3068):
        pytest.fail(f"this reproducer is specific to pyarrow 26.0's layout; found {(len(raw), _footer_layout(raw))}")
    raw[3325] = 0x87  # the footer test_a_parquet_footer_that_breaks_pyarrow_is_an_error_not_an_abort uses
    bad = tmp_path / "abort.parquet"
    bad.write_bytes(raw)
    proc = run_isolated(INSPECT, str(bad), "--cache-dir", str(tmp_path / "cache"), timeout=120)
    assert proc.returncode == 2, f"rc={proc.returncode}: {proc.stderr[-300:]}"  # 2: a reported error, not -6
    assert "abort.parquet': pyarrow crashed (signal SIGABRT) reading the Parquet footer" in proc.stderr
    assert "the file is corrupt, write it again" in proc.stderr


def _rename_bytes(path: Path, old: bytes, new: bytes) -> Path:
    """Replace a name's bytes in place (same length: the flatbuffer stays well-formed)."""
    raw = path.read_bytes()
    assert len(old) == len(new) and old in raw
    path.write_bytes(raw.replace(old, new))
    return path


def _ipc_with(tmp_path: Path, column: pa.Array, name: str = "colq") -> Path:
    table = pa.table({name: column, "ok": pa.array(np.arange(len(column), dtype=np.int64))})
    path = tmp_path / "names.arrow"
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
    return path


@pytest.mark.parametrize(
    ("column", "old", "what"),
    [
        (pa.array(np.arange(4, dtype=np.float32)), b"colq", "column 0"),
        (pa.array([[1], [2], [3], [4]], pa.list_(pa.field("kidq", pa.int8()))), b"kidq", "column 0, child 0"),
    ],
    ids=["column", "nested-field"],
)
def test_a_non_utf8_field_name_in_an_ipc_file_is_a_corrupt_file_error(
    tmp_path: Path, column: pa.Array, old: bytes, what: str
) -> None:
    path = _rename_bytes(_ipc_with(tmp_path, column), old, old[:-1] + b"\x87")
    pattern = rf"names\.arrow': the name of {what} is not valid UTF-8 \(bytes b'.*\\x87'\).*fix: write it again"
    with pytest.raises(CorruptFileError, match=pattern):
        ArrowDataset(path)
    with pytest.raises(CorruptFileError, match=pattern):
        ArrowDataset.from_compressed(path, cache_dir=tmp_path / "cache")
    proc = run_isolated(INSPECT, str(path), timeout=120)
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "UnicodeDecodeError" not in proc.stderr and f"the name of {what} is not valid UTF-8" in proc.stderr


def test_inspect_names_a_non_utf8_parquet_column_name(parquet: Path, tmp_path: Path) -> None:
    raw = bytearray(parquet.read_bytes())
    raw[raw.index(b"\x18\x01x", _footer_layout(raw)) + 2] = 0x87  # the schema element's name "x"
    bad = tmp_path / "name.parquet"
    bad.write_bytes(raw)
    proc = run_isolated(INSPECT, str(bad), "--cache-dir", str(tmp_path / "cache"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "UnicodeDecodeError" not in proc.stderr
    assert "name.parquet': a column name in the Parquet footer is not valid UTF-8 (bytes b'\\x87')" in proc.stderr


@pytest.mark.parametrize("kind", ["parquet", "compressed"])
def test_a_file_whose_name_is_not_utf8_is_read_decoded_and_inspected(tmp_path: Path, kind: str) -> None:
    folder = os.fsencode(tmp_path)
    raw_name = os.path.join(folder, b"caf\xe9." + (b"parquet" if kind == "parquet" else b"arrow"))  # latin-1
    with open(raw_name, "wb") as f:  # pyarrow takes no such str path: write through a Python file
        if kind == "parquet":
            pq.write_table(_table(), f)
        else:
            with pa.ipc.new_file(f, _table().schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
                w.write_table(_table())
    name = os.fsdecode(raw_name)  # '...caf\udce9.parquet', as os.listdir returns it
    opener = ArrowDataset.from_parquet if kind == "parquet" else ArrowDataset.from_compressed
    ds = opener(name, cache_dir=tmp_path / "cache")
    assert zero_copy_collate(ds.__getitems__([3, 1]))["x"].tolist() == [3.0, 1.0]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict UTF-8 output, as in most containers and IDEs
    proc = subprocess.run(
        [sys.executable, "-c", INSPECT, name, "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "caf\\xe9." in proc.stdout  # the byte that is not UTF-8, escaped


PRINT_EXPLAIN = """
import os, sys, warnings
from PIL import Image
from torch.utils.data import DataLoader
from zcopy_data import ImageFolderDataset, explain, zero_copy_collate
root = os.fsencode(sys.argv[1])
os.makedirs(os.path.join(root, b"cat"))
Image.new("RGB", (8, 8)).save(os.fsdecode(os.path.join(root, b"cat", b"a.png")))
with open(os.path.join(root, b"cat", b"caf\\xe9.png"), "wb") as f:  # latin-1 name, unreadable content
    f.write(b"not a png")
warnings.simplefilter("ignore")  # SkippedFileWarning
ds = ImageFolderDataset(os.fsdecode(root), size=4, on_error="skip")
print(explain(DataLoader(ds, batch_size=2, collate_fn=zero_copy_collate), batches=1))
"""


def test_print_explain_escapes_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict UTF-8 output, as in most containers and IDEs
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_EXPLAIN, str(tmp_path / "images")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "skipped unreadable file" in proc.stdout and "caf\\xe9.png" in proc.stdout
    assert "total over 1 batches" in proc.stdout
