"""Hugging Face ``Image`` columns in ``ArrowDataset``: written by ``datasets``, decoded into the batch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zcopy_data import ArrowDataset, CorruptFileError, SchemaError, UnsupportedColumnError, zero_copy_collate
from zcopy_data.datasets._jpeg_simple import matches_pillow
from zcopy_data.inspect import inspect_path
from zcopy_data.ledger import capture

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()
Features, HFImage, Value = datasets.Features, datasets.Image, datasets.Value
FEATURES = Features({"image": HFImage(), "label": Value("int64")})
SIZE = (24, 20)  # (H, W)


def _pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like pictures of several sizes, RGB and gray (HF stores in-memory images as PNG)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 30 + 3 * i, 40 + 2 * (i % 4)
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([x * 5.0, y * 6.0, (x + y) * 2.0], -1) % 256
        pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        out.append(img.convert("L") if i % 3 == 2 else img)
    return out


def _reference(img: Image.Image, mode: str, resample: Image.Resampling, channels_last: bool = False) -> np.ndarray:
    """Pillow's own pipeline: ``convert(mode).resize((W, H), resample)``, as (C, H, W) or (H, W, C)."""
    arr = np.asarray(img.convert(mode).resize((SIZE[1], SIZE[0]), resample))
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr if channels_last else arr.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    return _pictures(12)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, pictures: list[Image.Image]) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "train"
    ds = datasets.Dataset.from_dict({"image": pictures, "label": list(range(len(pictures)))}, features=FEATURES)
    ds.save_to_disk(str(folder), num_shards=3)
    return folder


def _hf_write(path: Path, rows: list[dict]) -> Path:
    """Rows written by ``datasets``' own Arrow writer (as its cache files are): a path stays a path."""
    from datasets.arrow_writer import ArrowWriter

    with ArrowWriter(features=FEATURES, path=str(path)) as w:
        for row in rows:
            w.write(FEATURES.encode_example(row))
        w.finalize()
    return path


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "resample", "channels_last"),
    [("RGB", "bilinear", False), ("L", "bicubic", False), ("RGB", "lanczos", True)],
)
def test_png_rows_across_three_shards_equal_pillows_pipeline(
    hf_folder: Path, pictures: list[Image.Image], mode: str, resample: str, channels_last: bool
) -> None:
    settings = {"size": SIZE, "mode": mode, "resample": resample, "channels_last": channels_last}
    ds = ArrowDataset(hf_folder, images={"image": settings})
    assert len(ds.paths) == 3 and len(ds) == 12
    c = 1 if mode == "L" else 3
    shape = (*SIZE, c) if channels_last else (c, *SIZE)
    assert ds.schema["image"].dtype == torch.uint8 and tuple(ds.schema["image"].shape) == shape
    filt = Image.Resampling[resample.upper()]
    for idx in ([11, 0, 5, 3, 8], list(range(2, 9)), [4]):  # shuffled, a run across shards, one row
        batch = zero_copy_collate(ds.__getitems__(idx))
        assert batch["image"].shape == (len(idx), *shape)
        want = np.stack([_reference(pictures[i], mode, filt, channels_last) for i in idx])
        assert np.array_equal(batch["image"].numpy(), want)
        assert batch["label"].tolist() == idx
    assert np.array_equal(ds[7]["image"].numpy(), _reference(pictures[7], mode, filt, channels_last))
    assert int(ds[7]["label"]) == 7


def test_an_image_column_of_a_parquet_export_is_decoded_from_the_cache(
    tmp_path: Path, pictures: list[Image.Image]
) -> None:
    hf = datasets.Dataset.from_dict({"image": pictures, "label": list(range(len(pictures)))}, features=FEATURES)
    hf.to_parquet(str(tmp_path / "train.parquet"))  # the Hub's format: PNG bytes in a struct column
    with pytest.raises(UnsupportedColumnError, match=r"field .image.: .*encoded images.*images="):  # refused first
        ArrowDataset.from_parquet(tmp_path / "train.parquet", cache_dir=tmp_path / "cache")
    images = {"image": {"size": SIZE}}
    ds = ArrowDataset.from_parquet(tmp_path / "train.parquet", cache_dir=tmp_path / "cache", images=images)
    idx = [11, 0, 5, 3]
    batch = zero_copy_collate(ds.__getitems__(idx))
    want = np.stack([_reference(pictures[i], "RGB", Image.Resampling.BILINEAR) for i in idx])
    assert np.array_equal(batch["image"].numpy(), want) and batch["label"].tolist() == idx
    assert ds.origin == "IPC cache of a Parquet file"


def test_the_decode_is_a_counted_ledger_step_and_the_bytes_are_read_in_place(hf_folder: Path) -> None:
    ds = ArrowDataset(hf_folder, images={"image": {"size": SIZE}})
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__([9, 2, 4, 6]))  # 2 is gray
    decodes = [r for r in records if r[0] == "decode"]
    assert len(decodes) == 1
    _, field, why, viewed, copied = decodes[0]
    assert field == "image" and viewed == 0
    assert why.startswith("decode (exact): Pillow decode, RGB (gray replicated to 3 channels), bilinear resize")
    assert "save_to_disk folder, 3 shards" in why
    assert copied == batch["image"].numel()  # one copy of each image's pixels into its slot, nothing more
    assert not [r for r in records if r[1] == "image" and r[0] != "decode"]  # no gather or stack of the images
    # the encoded bytes the decoder reads are the file's own pages (the shard's mapping), not a copy
    shard = ds._shards.shard(0)
    start, stop = shard._mapped.ctypes.data, shard._mapped.ctypes.data + shard._mapped.size
    encoded = np.frombuffer(shard._images["image"]._data[0], dtype=np.uint8)
    assert start <= encoded.ctypes.data and encoded.ctypes.data + encoded.size <= stop
    assert bytes(encoded[:8]) == b"\x89PNG\r\n\x1a\n"


DECODERS = [
    "pillow",
    pytest.param("simplejpeg", marks=pytest.mark.skipif(not matches_pillow(), reason="no simplejpeg matching Pillow")),
]


@pytest.mark.parametrize("decoder", DECODERS)
def test_jpeg_rows_equal_pillow_decoding_the_same_bytes(tmp_path: Path, decoder: str) -> None:
    jpegs = []
    for i, img in enumerate(_pictures(6, seed=3)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85, subsampling=i % 3)
        jpegs.append({"bytes": buf.getvalue(), "path": None})
    folder = tmp_path / "jpeg"
    hf = datasets.Dataset.from_dict({"image": jpegs, "label": list(range(6))}, features=FEATURES)
    hf.save_to_disk(str(folder), num_shards=2)
    stored = datasets.load_from_disk(str(folder)).cast_column("image", HFImage(decode=False))
    ds = ArrowDataset(folder, images={"image": {"size": SIZE, "decoder": decoder}})
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__([5, 0, 3, 1, 4, 2]))
    (why,) = [r[2] for r in records if r[0] == "decode"]
    assert why.startswith(f"decode (exact): {'simplejpeg' if decoder == 'simplejpeg' else 'Pillow'} decode, RGB")
    for pos, i in enumerate([5, 0, 3, 1, 4, 2]):
        data = stored[i]["image"]["bytes"]
        assert data[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(data)) as im:
            want = _reference(im, "RGB", Image.Resampling.BILINEAR)
        assert np.array_equal(batch["image"][pos].numpy(), want)


@pytest.mark.reliability
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_decode_every_image_right(
    hf_folder: Path, pictures: list[Image.Image], context: str
) -> None:
    ds = ArrowDataset(hf_folder, images={"image": {"size": SIZE}})
    loader = DataLoader(
        ds, batch_size=5, shuffle=True, num_workers=2, collate_fn=zero_copy_collate, multiprocessing_context=context
    )
    seen = []
    for batch in loader:
        for img, label in zip(batch["image"], batch["label"].tolist(), strict=True):
            assert np.array_equal(img.numpy(), _reference(pictures[label], "RGB", Image.Resampling.BILINEAR))
            seen.append(label)
    assert sorted(seen) == list(range(12))


def test_a_row_that_stores_only_a_path_reads_that_file(tmp_path: Path, pictures: list[Image.Image]) -> None:
    pictures[0].save(tmp_path / "beside.png")
    pictures[1].save(tmp_path / "absolute.png")
    rows = [
        {"image": {"path": "beside.png", "bytes": None}, "label": 0},  # relative: from the Arrow file's folder
        {"image": str(tmp_path / "absolute.png"), "label": 1},
        {"image": {"bytes": _png(pictures[2]), "path": None}, "label": 2},
    ]
    ds = ArrowDataset(_hf_write(tmp_path / "cache.arrow", rows), images={"image": SIZE})
    batch = zero_copy_collate(ds.__getitems__([2, 0, 1]))
    for pos, i in enumerate([2, 0, 1]):
        assert np.array_equal(batch["image"][pos].numpy(), _reference(pictures[i], "RGB", Image.Resampling.BILINEAR))


@pytest.mark.reliability
def test_a_path_only_row_whose_file_is_missing_is_an_error_naming_it(tmp_path: Path, pictures) -> None:
    rows = [
        {"image": {"bytes": _png(pictures[0]), "path": None}, "label": 0},
        {"image": {"path": "gone.png", "bytes": None}, "label": 1},
    ]
    ds = ArrowDataset(_hf_write(tmp_path / "cache.arrow", rows), images={"image": SIZE})
    assert ds[0]["image"].shape == (3, *SIZE)
    with pytest.raises(CorruptFileError) as info:
        zero_copy_collate(ds.__getitems__([0, 1]))
    text = str(info.value)
    assert text.startswith("field 'image' at index 1 ")
    assert "stores no bytes, only the path 'gone.png'" in text and repr(str(tmp_path / "gone.png")) in text
    assert "fix: put the image file there" in text
    assert info.value.field == "image" and info.value.index == 1


@pytest.mark.reliability
def test_a_null_image_is_refused_naming_the_field_the_index_and_the_fix(tmp_path: Path, pictures) -> None:
    one = tmp_path / "one"
    hf = datasets.Dataset.from_dict({"image": [pictures[0], None, pictures[1]], "label": [0, 1, 2]}, features=FEATURES)
    hf.save_to_disk(str(one))
    with pytest.raises(UnsupportedColumnError) as info:
        ArrowDataset(one, images={"image": SIZE})
    text = str(info.value)
    assert text.startswith("field 'image' at index 1: ") and "1 null images" in text
    assert "fix: drop those rows (datasets: ds.filter(lambda r: r['image'] is not None))" in text
    # in a later shard, opened on first use: the dataset index is still named, at the first batch that reads it
    many = tmp_path / "many"
    images: list[Image.Image | None] = list(pictures[:9])
    images[7] = None
    hf = datasets.Dataset.from_dict({"image": images, "label": list(range(9))}, features=FEATURES)
    hf.save_to_disk(str(many), num_shards=3)
    ds = ArrowDataset(many, images={"image": SIZE})
    assert zero_copy_collate(ds.__getitems__([0, 1]))["image"].shape == (2, 3, *SIZE)
    with pytest.raises(UnsupportedColumnError, match=r"^field 'image' at index 7: .*null images.*ds\.filter"):
        ds[8]


@pytest.mark.reliability
def test_transparency_is_refused_as_in_image_folders_unless_declared(tmp_path: Path) -> None:
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(40, dtype=np.uint8)[None, :] * 6  # alpha varies
    img = Image.fromarray(rgba)
    hf = datasets.Dataset.from_dict({"image": [img], "label": [0]}, features=FEATURES)
    hf.save_to_disk(str(tmp_path / "a"))
    ds = ArrowDataset(tmp_path / "a", images={"image": SIZE})
    with pytest.raises(SchemaError, match=r"^field 'image' at index 0 .*has transparency.*fix: mode='RGBA'"):
        ds[0]
    kept = ArrowDataset(tmp_path / "a", images={"image": {"size": SIZE, "mode": "RGBA"}})
    assert np.array_equal(kept[0]["image"].numpy(), _reference(img, "RGBA", Image.Resampling.BILINEAR))


def test_an_undeclared_image_column_says_to_pass_images(hf_folder: Path) -> None:
    with pytest.raises(UnsupportedColumnError, match=r"field 'image': encoded images .*fix: pass images=\{'image'"):
        ArrowDataset(hf_folder)
    assert list(ArrowDataset(hf_folder, ["label"]).schema) == ["label"]
    report = {f.name: f for f in inspect_path(hf_folder).fields}
    assert not report["image"].zero_copy and "images={'image': {'size': (H, W)}}" in report["image"].why
    assert report["label"].zero_copy


def test_bad_declarations_are_refused(hf_folder: Path) -> None:
    with pytest.raises(UnsupportedColumnError, match=r"field 'label': images= names encoded images"):
        ArrowDataset(hf_folder, images={"image": SIZE, "label": SIZE})
    with pytest.raises(SchemaError, match=r"images= names \['picture'\], not among the columns served"):
        ArrowDataset(hf_folder, images={"picture": SIZE})
    with pytest.raises(ValueError, match=r"unknown keys \['sise'\]"):
        ArrowDataset(hf_folder, images={"image": {"sise": SIZE}})


def test_a_plain_binary_column_of_encoded_images_is_served_too(tmp_path: Path, pictures: list[Image.Image]) -> None:
    import pyarrow as pa

    path = tmp_path / "png.arrow"
    table = pa.table({"png": pa.array([_png(p) for p in pictures[:5]], pa.large_binary()), "y": np.arange(5)})
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=2)
    ds = ArrowDataset(path, images={"png": {"size": SIZE, "mode": "L"}})
    batch = zero_copy_collate(ds.__getitems__([4, 1, 2]))
    for pos, i in enumerate([4, 1, 2]):
        assert np.array_equal(batch["png"][pos].numpy(), _reference(pictures[i], "L", Image.Resampling.BILINEAR))
    assert batch["y"].tolist() == [4, 1, 2]
