"""Fault injection on image folders: corrupt files, decompression bombs, mixed sizes, symlinks."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from tests.support import consume
from zcopy_data import SampleIndexError, zero_copy_collate
from zcopy_data.datasets import CorruptFileError, ImageFolderDataset, SkippedFileWarning

pytestmark = pytest.mark.reliability

SIZES = [(20, 30), (64, 48), (7, 5), (100, 100), (33, 17)]


def _png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _expected(path: str, h: int, w: int) -> np.ndarray[Any, Any]:
    """What Pillow itself gives for one file: JPEG draft decode, RGB, bilinear resize; (3, H, W)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (w, h))
        rgb = im.convert("RGB")
        if rgb.size != (w, h):
            rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``root/cat`` of JPEGs and ``root/dog`` of grayscale PNGs, every image a different size."""
    root = tmp_path / "root"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "cat" / f"{i}.jpg", quality=90)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "dog" / f"{i}.png")
    return root


def _damaged(good: bytes) -> dict[str, bytes]:
    return {
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "garbage.jpg": bytes(range(256)) * 2,
        "header-only.jpg": good[:200],
        "flipped.jpg": good[:300] + bytes(b ^ 0xFF for b in good[300:400]) + good[400:],
        "bomb.png": _png(100_000, 100_000),
        "too-big.png": _png(20_000, 20_000),
    }


@pytest.mark.parametrize(
    "name", ["truncated.jpg", "empty.jpg", "garbage.jpg", "header-only.jpg", "flipped.jpg", "bomb.png", "too-big.png"]
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_a_corrupt_file_error_naming_it(folder: Path, name: str, workers: int) -> None:
    bad = folder / "cat" / f"zz-{name}"
    bad.write_bytes(_damaged((folder / "cat" / "1.jpg").read_bytes())[name])
    ds = ImageFolderDataset(folder, size=(16, 16))
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with pytest.raises(CorruptFileError, match=rf"{str(bad)!r}: cannot decode the image .*on_error='skip'"):
        consume(loader)


def test_skipping_corrupt_images_reports_each_one_and_keeps_labels_aligned(folder: Path) -> None:
    good = (folder / "cat" / "1.jpg").read_bytes()
    for name, data in _damaged(good).items():
        (folder / "cat" / f"zz-{name}").write_bytes(data)
    ds = ImageFolderDataset(folder, size=(16, 16), on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        batches = [
            zero_copy_collate(ds.__getitems__(list(range(i, min(i + 4, len(ds)))))) for i in range(0, len(ds), 4)
        ]
    skipped = [w for w in caught if issubclass(w.category, SkippedFileWarning)]
    assert len(skipped) == len(ds.skipped) == 7
    images = np.concatenate([b["image"].numpy() for b in batches])
    labels = np.concatenate([b["label"].numpy() for b in batches])
    assert len(images) == len(labels) == len(ds) - 7
    kept = [p for p in ds.files if p not in {s for s, _ in ds.skipped}]
    for image, label, path in zip(images, labels, kept, strict=True):
        assert label == (0 if "/cat/" in path else 1)
        assert np.array_equal(image, _expected(path, 16, 16)), path


@pytest.mark.parametrize("workers", [0, 2])
def test_images_of_mixed_sizes_are_each_resized_to_the_declared_size(folder: Path, workers: int) -> None:
    ds = ImageFolderDataset(folder, size=(24, 20))
    loader = DataLoader(
        ds, batch_size=3, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    batches = consume(loader)
    images = np.concatenate([b["image"].numpy() for b in batches])
    assert images.shape == (len(SIZES) * 2, 3, 24, 20)
    for image, path in zip(images, ds.files, strict=True):
        assert np.array_equal(image, _expected(path, 24, 20)), path


def test_per_sample_images_of_mixed_sizes_without_a_resize_are_a_shape_error() -> None:
    from zcopy_data import ShapeMismatchError

    samples = [{"image": np.zeros((3, h, w), np.uint8)} for h, w in SIZES[:3]]
    with pytest.raises(ShapeMismatchError, match=r"field 'image' at batch position 1: expected shape \(3, 20, 30\)"):
        zero_copy_collate(samples)


# -- symbolic links ---------------------------------------------------------------------------------
@pytest.fixture
def linked(folder: Path, tmp_path: Path) -> dict[str, Path]:
    outside = tmp_path / "outside"
    (outside / "secrets").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(outside / "secret.png")
    Image.new("RGB", (8, 8), "blue").save(outside / "secrets" / "more.png")
    links = {
        "file": folder / "cat" / "escape.png",
        "folder": folder / "cat" / "escape-dir",
        "class": folder / "zebra",
        "inside": folder / "dog" / "alias.png",
    }
    links["file"].symlink_to(outside / "secret.png")
    links["folder"].symlink_to(outside / "secrets", target_is_directory=True)
    links["class"].symlink_to(outside / "secrets", target_is_directory=True)
    links["inside"].symlink_to(folder / "cat" / "0.jpg")
    return links


def test_symlinks_out_of_the_root_are_left_out_and_listed(folder: Path, linked: dict[str, Path]) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8))
    real_outside = os.path.realpath(linked["file"]).rsplit(os.sep, 1)[0]
    assert all(not os.path.realpath(f).startswith(real_outside) for f in ds.files), "a file outside the root is served"
    excluded = {p for p, _ in ds.excluded}
    assert {str(linked["file"]), str(linked["folder"]), str(linked["class"])} <= excluded
    assert ds.classes == ["cat", "dog"]
    assert str(linked["inside"]) in ds.files  # a link that stays inside the root is followed
    assert len(ds) == 2 * len(SIZES) + 1


def test_symlinks_out_of_the_root_are_followed_only_when_asked(folder: Path, linked: dict[str, Path]) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8), follow_symlinks=True)
    assert str(linked["file"]) in ds.files
    assert ds.classes == ["cat", "dog", "zebra"]
    assert ds.excluded == []


def test_a_link_back_to_the_root_does_not_duplicate_or_relabel_images(folder: Path) -> None:
    (folder / "dog" / "loop").symlink_to(folder, target_is_directory=True)
    ds = ImageFolderDataset(folder, size=(8, 8))
    assert len(ds) == 2 * len(SIZES)
    assert all(("/cat/" in f) == (label == 0) for f, label in zip(ds.files, ds._labels, strict=True))


@pytest.mark.parametrize("index", [1.5, True])
def test_image_getitem_refuses_non_integer_indices(folder: Path, index: Any) -> None:
    with pytest.raises(SampleIndexError):
        ImageFolderDataset(folder, size=(8, 8))[index]
