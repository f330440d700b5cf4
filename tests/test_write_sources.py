"""``write`` from the sources people have: an image folder, a Hugging Face dataset, a torch ``Dataset``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from zcopy_data import Field, Schema, SchemaError, zero_copy_collate
from zcopy_data.datasets import ArrowDataset, ImageFolderDataset
from zcopy_data.writer import write


def _all(path, **kw):
    ds = ArrowDataset(path, **kw)
    return ds, zero_copy_collate(ds.__getitems__(list(range(len(ds)))))


def test_an_image_folder_is_decoded_and_resized_once(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(6):
            h, w = 10 + i, 14 - i  # sizes differ: resized at write time
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    images = ImageFolderDataset(tmp_path / "src", size=(8, 8))
    write(images, tmp_path / "out", progress=False)
    ds, got = _all(tmp_path / "out" / "shard-00000.arrow")
    assert ds.schema == Schema({"image": Field(torch.uint8, (3, 8, 8)), "label": Field(torch.int64)})
    want = zero_copy_collate(images.__getitems__(list(range(12))))
    assert torch.equal(got["image"], want["image"]) and got["label"].tolist() == [0] * 6 + [1] * 6


class _Squares(Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((3,), i * i, dtype=torch.int32)}


def test_a_torch_dataset_is_written_through_getitem(tmp_path):
    write(_Squares(), tmp_path, progress=False, workers=2, shard_size=12 * 8)
    shards = sorted(tmp_path.glob("shard-*.arrow"))
    assert len(shards) == 5
    back = np.concatenate([_all(p)[1]["x"].numpy() for p in shards])
    assert back[:, 0].tolist() == [i * i for i in range(40)]


def _hf():
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(30, 6, 6, 3), dtype=np.uint8)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["a", "b", "c"]),
            "small": datasets.Value("uint8"),
            "grid": datasets.Array2D((2, 3), "uint8"),
            "text": datasets.Value("string"),
        }
    )
    data = {
        "image": [Image.fromarray(p) for p in pixels],
        "label": [i % 3 for i in range(30)],
        "small": list(range(30)),
        "grid": [np.full((2, 3), i, np.uint8) for i in range(30)],
        "text": [f"row {i}" for i in range(30)],
    }
    return datasets.Dataset.from_dict(data, features=features), pixels


def test_a_hugging_face_dataset_keeps_its_feature_dtypes(tmp_path):
    hf, pixels = _hf()
    write(hf, tmp_path, progress=False)
    ds, got = _all(tmp_path / "shard-00000.arrow", strings="list")
    # HF's numpy and torch formats would give grid and small as int64: here they stay uint8
    assert ds.schema == Schema(
        {
            "image": Field(torch.uint8, (6, 6, 3)),
            "label": Field(torch.int64),
            "small": Field(torch.uint8),
            "grid": Field(torch.uint8, (2, 3)),
        }
    )
    assert np.array_equal(got["image"].numpy(), pixels)
    assert got["grid"][7].tolist() == [[7] * 3] * 2 and got["small"].tolist() == list(range(30))
    assert got["text"][29] == "row 29"


def test_a_hugging_face_feature_without_a_tensor_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"tags": [["a"], ["b", "c"]]})
    with pytest.raises(SchemaError, match=r"field 'tags': the Hugging Face feature .*remove_columns"):
        write(hf, tmp_path, progress=False)
