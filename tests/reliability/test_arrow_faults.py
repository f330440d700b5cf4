"""Fault injection on Arrow IPC and Parquet files written by pyarrow and then damaged.

Truncated, mislabelled, compressed and null-holding files end in ``CorruptFileError`` or
``UnsupportedColumnError`` naming the file or column, at construction; random byte flips in the
metadata never crash the process; Parquet footers are checked against the file size before
anything is decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.support import run_isolated
from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset, CorruptFileError, UnsupportedColumnError

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
