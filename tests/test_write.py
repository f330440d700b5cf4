"""``write``: what the shards hold, that loading them is zero-copy, and the errors for samples that drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from zcopy_data import (
    LEDGER,
    DtypeDriftError,
    Field,
    Schema,
    SchemaError,
    ShapeMismatchError,
    ZeroCopyDataLoader,
    explain,
    zero_copy_collate,
)
from zcopy_data.datasets import ArrowDataset, NumpyDataset
from zcopy_data.writer import INDEX_NAME, SHAPE_KEY, write

N = 2000


def _samples(n: int = N) -> tuple[list[dict[str, object]], np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return [{"image": Image.fromarray(pixels[i]), "label": i, "caption": f"no. {i}"} for i in range(n)], pixels


def _shards(folder: Path) -> list[Path]:
    return [folder / s["file"] for s in json.loads((folder / INDEX_NAME).read_text())["shards"]]


@pytest.fixture
def written(tmp_path):
    samples, pixels = _samples()
    out = tmp_path / "shards"
    # 8*8*3 + 8 + 4 = 204 B a row: 1024 rows a shard, 256 a record batch
    write(samples, out, shard_size=204 * 1024, record_batch_size=204 * 256, progress=False)
    return out, pixels


def test_the_index_describes_every_shard(written):
    out, _ = written
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["format"] == "zcopy-shards" and index["version"] == 1 and index["rows"] == N
    assert index["schema"] == {
        "image": {"dtype": "uint8", "shape": [8, 8, 3]},
        "label": {"dtype": "int64", "shape": []},
        "caption": {"dtype": "string", "shape": []},
    }
    assert [(s["file"], s["rows"]) for s in index["shards"]] == [
        ("shard-00000.arrow", 1024),
        ("shard-00001.arrow", 976),
    ]
    for s in index["shards"]:
        assert (out / s["file"]).stat().st_size == s["bytes"] and len(s["sha256"]) == 64


def test_columns_are_fixed_size_lists_with_the_shape_in_the_metadata(written):
    out, _ = written
    with pa.ipc.open_file(str(_shards(out)[0])) as reader:
        schema, batches = reader.schema, reader.num_record_batches
    image = schema.field("image")
    assert image.type == pa.list_(pa.field("item", pa.list_(pa.field("item", pa.list_(
        pa.field("item", pa.uint8(), nullable=False), 3), nullable=False), 8), nullable=False), 8)
    assert json.loads(image.metadata[SHAPE_KEY]) == [8, 8, 3]
    assert json.loads(schema.field("label").metadata[SHAPE_KEY]) == []
    assert schema.field("caption").type == pa.string()
    assert batches == 4  # 1024 rows in record batches of 256


def test_every_sample_reads_back(written):
    out, pixels = written
    first, second = (ArrowDataset(p, strings="list") for p in _shards(out))
    assert first.schema == Schema({"image": Field(torch.uint8, (8, 8, 3)), "label": Field(torch.int64)})
    assert np.array_equal(np.asarray(first[3]["image"]), pixels[3])
    got = zero_copy_collate(second.__getitems__(list(range(len(second)))))
    assert np.array_equal(got["image"].numpy(), pixels[1024:])
    assert got["label"].tolist() == list(range(1024, N))
    assert got["caption"][:2] == ["no. 1024", "no. 1025"]


def test_contiguous_batches_of_a_shard_are_views_of_its_mapping(written):
    out, pixels = written
    ds = ArrowDataset(_shards(out)[0], columns=["image", "label"])
    LEDGER.reset()
    for start in (0, 256, 512):  # aligned batches never straddle two record batches
        batch = zero_copy_collate(ds.__getitems__(range(start, start + 256)))
        for t in batch.values():
            assert ds._mapped.ctypes.data <= t.data_ptr() < ds._mapped.ctypes.data + ds._mapped.size
        assert np.array_equal(batch["image"].numpy(), pixels[start : start + 256])
    assert LEDGER.bytes_copied == 0
    assert LEDGER.bytes_viewed == 3 * 256 * (192 + 8)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_over_a_shard_copies_nothing(written, workers):
    out, _ = written
    ds = ArrowDataset(_shards(out)[0], columns=["image", "label"])
    loader = ZeroCopyDataLoader(ds, batch_size=128, num_workers=workers, worker_mode="processes")
    ledger = explain(loader, batches=4)
    assert ledger.bytes_copied == 0
    assert ledger.bytes_viewed > 0


def test_the_folder_opens_as_one_dataset(written):
    out, pixels = written
    ds = ArrowDataset(out, strings="list")
    assert len(ds) == N
    got = zero_copy_collate(ds.__getitems__(list(range(1000, 1100))))
    assert np.array_equal(got["image"].numpy(), pixels[1000:1100])
    assert got["caption"][0] == "no. 1000"


def test_the_write_is_counted_in_the_ledger(tmp_path):
    samples, _ = _samples(100)
    LEDGER.reset()
    write(samples, tmp_path, progress=False)
    reasons = {(r.stage, r.field, r.reason): r.bytes_copied for r in LEDGER.rows}
    assert reasons[("decode", "image", "write: samples copied into one column buffer")] == 100 * 192
    assert reasons[("decode", "image", "write: record batch written into shard-00000.arrow")] == 100 * 192


def test_tuples_tensors_and_numbers_keep_their_dtypes(tmp_path):
    samples = [(torch.full((2, 3), i, dtype=torch.float16), np.int16(i), float(i), i) for i in range(10)]
    write(samples, tmp_path, progress=False)
    ds = ArrowDataset(tmp_path / "shard-00000.arrow")
    assert ds.schema == Schema(
        {"0": Field(torch.float16, (2, 3)), "1": Field(torch.int16), "2": Field(torch.float64), "3": Field(torch.int64)}
    )
    assert ds[4]["0"].tolist() == [[4.0] * 3] * 2 and int(ds[4]["1"]) == 4


def test_a_zero_copy_dataset_is_written_a_batch_at_a_time(tmp_path):
    cols = {"x": np.arange(3000 * 4, dtype=np.float32).reshape(3000, 2, 2), "y": np.arange(3000)}
    write(NumpyDataset(cols), tmp_path, shard_size=24 * 1024, progress=False)  # 24 B a row: 1024 rows a shard
    shards = _shards(tmp_path)
    assert len(shards) == 3
    back = np.concatenate([_column(p, "x") for p in shards])
    assert np.array_equal(back, cols["x"])


def _column(path: Path, name: str) -> np.ndarray:
    ds = ArrowDataset(path, columns=[name])
    return zero_copy_collate(ds.__getitems__(list(range(len(ds)))))[name].numpy()


def test_a_declared_schema_gives_python_lists_their_dtype(tmp_path):
    samples = [{"ids": [i, i + 1, i + 2], "text": "t"} for i in range(5)]
    with pytest.raises(SchemaError, match=r"field 'ids' at index 0: cannot write a list.*schema="):
        write(samples, tmp_path, progress=False)
    write(samples, tmp_path, schema=Schema({"ids": Field(torch.int32, (3,))}), progress=False)
    ds = ArrowDataset(tmp_path / "shard-00000.arrow", columns=["ids"])
    assert ds.schema["ids"] == Field(torch.int32, (3,)) and ds[2]["ids"].tolist() == [2, 3, 4]


def _drifting(index: int, **change: object) -> list[dict[str, object]]:
    samples = [{"image": np.zeros((4, 4), np.uint8), "label": 0, "text": "a"} for _ in range(50)]
    samples[index] = {**samples[index], **change}
    return samples


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {"image": np.zeros((4, 4), np.float64)},
            DtypeDriftError,
            r"field 'image' at index 37: expected uint8, found float64; convert it to uint8 .*schema=",
        ),
        (
            {"image": np.zeros((4, 5), np.uint8)},
            ShapeMismatchError,
            r"field 'image' at index 37: expected shape \(4, 4\), found \(4, 5\); .*resize, pad or crop",
        ),
        ({"label": 1.5}, DtypeDriftError, r"field 'label' at index 37: expected int64, found float64"),
        ({"text": 3}, DtypeDriftError, r"field 'text' at index 37: expected str, found int"),
        ({"extra": 1}, SchemaError, r"sample at index 37: expected fields \['image', 'label', 'text'\], found"),
    ],
)
def test_drift_names_the_sample_the_field_and_the_fix(tmp_path, change, error, message):
    with pytest.raises(error, match=message) as err:
        write(_drifting(37, **change), tmp_path, progress=False)
    assert err.value.index == 37
    assert not (tmp_path / INDEX_NAME).exists()


@pytest.mark.reliability
def test_drift_in_a_worker_process_reaches_the_caller(tmp_path):
    samples = _drifting(45, image=np.zeros((4, 4), np.int8))
    with pytest.raises(DtypeDriftError, match=r"field 'image' at index 45: expected uint8, found int8"):
        write(samples, tmp_path, shard_size=28 * 10, workers=2, progress=False)


def test_a_declared_schema_is_enforced_from_sample_zero(tmp_path):
    declared = Schema({"image": Field(torch.uint8, (3, 4, 4)), "label": Field(torch.int64)})
    shape = r"field 'image' at index 0: expected shape \(3, 4, 4\), found \(4, 4\)"
    with pytest.raises(ShapeMismatchError, match=shape):
        write(_drifting(0), tmp_path, schema=declared, progress=False)
    with pytest.raises(SchemaError, match=r"field 'label' at index 0: declared in the schema but missing"):
        write([{"image": np.zeros((3, 4, 4), np.uint8)}], tmp_path, schema=declared, progress=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros(2, np.bool_), r"field 'v' at index 0: booleans are bit-packed .* store them as uint8"),
        (torch.zeros(2, dtype=torch.bfloat16), r"field 'v' at index 0: torch.bfloat16 has no NumPy or Arrow type"),
        (b"raw", r"field 'v' at index 0: cannot write a bytes"),
        (np.zeros(2, np.complex64), r"field 'v' at index 0: dtype complex64 cannot be written"),
    ],
)
def test_values_without_a_zero_copy_column_are_refused(tmp_path, value, message):
    with pytest.raises(SchemaError, match=message):
        write([{"v": value}], tmp_path, progress=False)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"workers=-1 should be an int >= 0"):
        write([{"x": 1}], tmp_path, workers=-1, progress=False)
    with pytest.raises(ValueError, match=r"an iterable without __len__ .* workers=0"):
        write(iter([{"x": 1}]), tmp_path, workers=2, progress=False)
    with pytest.raises(ValueError, match=r"shard_size=0 should be a number of bytes"):
        write([{"x": 1}], tmp_path, shard_size=0, progress=False)
    with pytest.raises(SchemaError, match=r"the source is empty"):
        write([], tmp_path, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match=r"exists and is not a folder"):
        write([{"x": 1}], tmp_path / "file", progress=False)


def test_the_progress_bar_counts_samples_per_second(tmp_path, capsys):
    write([{"x": i} for i in range(300)], tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "300/300" in err and "sample/s" in err
