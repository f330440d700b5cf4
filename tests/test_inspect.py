from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zcopy_data.datasets import ArrowDataset, CorruptFileError, UnsupportedColumnError
from zcopy_data.inspect import add_inspect_parser, format_report, inspect_path


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="zcopy-data")
    add_inspect_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["inspect", *argv])
    return int(args.func(args))


def _fields(report):
    return {f.name: f for f in report.fields}


@pytest.fixture
def table() -> pa.Table:
    images = np.arange(20 * 6, dtype=np.uint8)
    return pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(images), 3), 2),
            "label": pa.array(np.arange(20)),
            "name": pa.array([f"n{i}" for i in range(20)]),
        }
    )


def test_npy_file_and_folder(tmp_path):
    np.save(tmp_path / "image.npy", np.zeros((10, 3, 4), np.uint8))
    np.save(tmp_path / "label.npy", np.arange(10).astype(">i8"))
    one = inspect_path(tmp_path / "image.npy")
    assert (one.format, one.samples) == (".npy file", 10)
    f = _fields(one)["image"]
    assert (f.dtype, f.shape, f.zero_copy) == ("uint8", "(3, 4)", True)
    both = inspect_path(tmp_path)
    assert both.format.startswith("folder of .npy files") and both.samples == 10
    label = _fields(both)["label"]
    assert not label.zero_copy and "not native" in label.why and "'<i8'" in label.why


def test_npy_object_array_is_reported_never_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    f = _fields(inspect_path(tmp_path / "obj.npy"))["obj"]
    assert not f.zero_copy and "never unpickled" in f.why


def test_arrow_reports_each_column_and_why(tmp_path, table):
    path = tmp_path / "t.arrow"
    with pa.ipc.new_file(path, table.schema) as w:
        for b in table.to_batches(max_chunksize=8):
            w.write_batch(b)
    report = inspect_path(path)
    assert report.format == "Arrow IPC file (3 record batches)" and report.samples == 20
    fields = _fields(report)
    assert (fields["image"].dtype, fields["image"].shape, fields["image"].zero_copy) == ("uint8", "(2, 3)", True)
    assert fields["label"].zero_copy and fields["label"].shape == "()"
    assert not fields["name"].zero_copy and "variable-length" in fields["name"].why
    assert "name" in format_report(report) and "yes" in format_report(report)


def test_compressed_feather_is_not_zero_copy_and_says_why(tmp_path, table):
    path = tmp_path / "t.feather"
    feather.write_feather(table.select(["image", "label"]), path)  # lz4 by default
    fields = _fields(inspect_path(path))
    assert not fields["label"].zero_copy and "compressed" in fields["label"].why
    assert fields["label"].dtype == "int64"


def test_parquet_reports_the_decode_and_the_cache(tmp_path, table):
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=8)
    cache = str(tmp_path / "cache")
    report = inspect_path(path, cache_dir=cache)
    assert report.format == "Parquet (3 row groups)" and report.samples == 20
    fields = _fields(report)
    assert fields["image"].shape == "(2, 3)" and fields["image"].dtype == "uint8"
    assert not fields["image"].zero_copy and "decoded once into an IPC cache" in fields["image"].why
    assert "variable-length" in fields["name"].why
    assert "from_parquet(path, columns=['image', 'label'])" in report.notes[0] and "not built yet" in report.notes[0]
    with pytest.raises(UnsupportedColumnError, match="'name'"):
        ArrowDataset.from_parquet(path, cache_dir=cache)  # refused before decoding anything
    assert not list(Path(cache).glob("*.arrow"))
    ArrowDataset.from_parquet(path, ["image", "label"], cache_dir=cache)
    assert "fresh, reused" in inspect_path(path, cache_dir=cache).notes[0]


def test_parquet_nulls_are_reported(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0])}), path)
    x = _fields(inspect_path(path))["x"]
    assert not x.zero_copy and x.why.startswith("1 nulls")


def test_image_folder(tmp_path):
    for cls, size in (("b", (9, 7)), ("a", (5, 5))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", size).save(tmp_path / cls / "x.png")
    Image.new("L", (4, 4)).save(tmp_path / "a" / "y.jpg")
    report = inspect_path(tmp_path)
    assert report.samples == 3 and report.format.startswith("image folder")
    assert report.notes[0] == "2 classes: ['a', 'b']"
    assert "PNG RGB 5x5 x1" in report.notes[1] and "JPEG L 4x4 x1" in report.notes[1]
    image = _fields(report)["image"]
    assert image.dtype == "uint8" and not image.zero_copy and "one copy into the batch slot" in image.why


def test_bad_paths_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        inspect_path(tmp_path / "missing")
    unknown = tmp_path / "data.dat"
    unknown.write_bytes(b"hello world")
    with pytest.raises(CorruptFileError, match=r"unknown format .*reads \.npy, Arrow IPC"):
        inspect_path(unknown)
    empty = tmp_path / "empty.arrow"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        inspect_path(empty)
    np.save(tmp_path / "big.npy", np.zeros((100, 10), np.float32))
    raw = (tmp_path / "big.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        inspect_path(tmp_path / "cut.npy")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + os.urandom(40))
    with pytest.raises(CorruptFileError, match=r"cut\.parquet"):
        inspect_path(tmp_path / "cut.parquet")


def test_cli_prints_a_table_json_and_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    assert _cli(str(tmp_path / "x.npy")) == 0
    out = capsys.readouterr().out
    assert "samples: 4" in out and "float32" in out
    assert _cli(str(tmp_path / "x.npy"), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fields"][0] == {
        "name": "x",
        "dtype": "float32",
        "shape": "(2,)",
        "zero_copy": True,
        "why": data["fields"][0]["why"],
    }
    assert _cli(str(tmp_path / "nope")) == 2
    err = capsys.readouterr().err
    assert err.startswith("zcopy-data inspect: no such file or directory") and str(Path(tmp_path / "nope")) in err
