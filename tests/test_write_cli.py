"""``zcopy-data convert SRC DST`` over real files of each kind it accepts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from zcopy_data import Field, Schema, zero_copy_collate
from zcopy_data.cli import main
from zcopy_data.datasets import ArrowDataset
from zcopy_data.writer import INDEX_NAME


def _read(folder, **kw):
    index = json.loads((folder / INDEX_NAME).read_text())
    ds = ArrowDataset(folder / index["shards"][0]["file"], **kw)
    return index, ds, zero_copy_collate(ds.__getitems__(list(range(len(ds)))))


def test_convert_an_image_folder(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12 + i, 9), color=(i, 0, 0)).save(tmp_path / "img" / cls / f"{i}.png")
    assert main(["convert", str(tmp_path / "img"), str(tmp_path / "out"), "--size", "4,6", "--no-progress"]) == 0
    assert "wrote 6 samples in 1 shards" in capsys.readouterr().out
    index, ds, got = _read(tmp_path / "out")
    assert ds.schema == Schema({"image": Field(torch.uint8, (3, 4, 6)), "label": Field(torch.int64)})
    assert got["label"].tolist() == [0, 0, 0, 1, 1, 1] and index["rows"] == 6


def test_an_image_folder_needs_a_size(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a" / "0.png")
    with pytest.raises(SystemExit, match=r"--size H,W"):
        main(["convert", str(tmp_path / "img"), str(tmp_path / "out")])


def test_convert_a_npy_file(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "feats.npy", data)
    assert main(["convert", str(tmp_path / "feats.npy"), str(tmp_path / "out"), "--no-progress"]) == 0
    _, _, got = _read(tmp_path / "out")
    assert np.array_equal(got["feats"].numpy(), data)


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_convert_parquet_and_arrow_files_with_strings(tmp_path, kind):
    table = pa.table({"x": pa.array(np.arange(10, dtype=np.int16)), "s": [f"t{i}" for i in range(10)]})
    src = tmp_path / f"t.{kind}"
    if kind == "parquet":
        pq.write_table(table, src)
    else:
        with pa.ipc.new_file(str(src), table.schema) as w:
            w.write_table(table)
    assert main(["convert", str(src), str(tmp_path / "out"), "--no-progress"]) == 0
    index, _, got = _read(tmp_path / "out", strings="list")
    assert index["schema"] == {"x": {"dtype": "int16", "shape": []}, "s": {"dtype": "string", "shape": []}}
    assert got["x"].tolist() == list(range(10)) and got["s"][3] == "t3"


def test_convert_a_hugging_face_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {"v": [np.full((2, 2), i, np.uint8) for i in range(8)], "y": list(range(8))},
        features=datasets.Features({"v": datasets.Array2D((2, 2), "uint8"), "y": datasets.Value("int32")}),
    )
    hf.save_to_disk(str(tmp_path / "hf"))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--no-progress"]) == 0
    _, ds, got = _read(tmp_path / "out")
    assert ds.schema == Schema({"v": Field(torch.uint8, (2, 2)), "y": Field(torch.int32)})
    assert got["v"][5].tolist() == [[5, 5], [5, 5]]


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.npy", "no such file or folder"), ("notes.txt", None)],
)
def test_unknown_or_missing_sources_fail_with_a_message(tmp_path, capsys, name, message):
    src = tmp_path / name
    if message is None:
        src.write_text("hello")
        with pytest.raises(SystemExit, match=r"cannot tell what .*notes.txt"):
            main(["convert", str(src), str(tmp_path / "out")])
        return
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_a_drifting_npy_conversion_reports_the_error(tmp_path, capsys):
    np.save(tmp_path / "b.npy", np.zeros((4, 2), np.bool_))
    assert main(["convert", str(tmp_path / "b.npy"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "booleans are bit-packed" in capsys.readouterr().err
