"""Fault injection on image folders: corrupt files, decompression bombs, pixel limits, mixed sizes, symlinks,
FIFOs and other non-regular files."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from tests.support import consume, run_isolated
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
    """What Pillow itself gives for one file: full decode, RGB, bilinear resize; (3, H, W)."""
    with Image.open(path) as im:
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
    links["inside"].symlink_to(folder / "dog" / "0.png")  # inside its own class (one into cat's is left out)
    return links


def test_symlinks_out_of_the_root_are_left_out_and_listed(folder: Path, linked: dict[str, Path]) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8))
    real_outside = os.path.realpath(linked["file"]).rsplit(os.sep, 1)[0]
    assert all(not os.path.realpath(f).startswith(real_outside) for f in ds.files), "a file outside the root is served"
    excluded = {p for p, _ in ds.excluded}
    assert {str(linked["file"]), str(linked["folder"]), str(linked["class"])} <= excluded
    assert ds.classes == ["cat", "dog"]
    assert str(linked["inside"]) in ds.files  # a link that stays inside its class is followed
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


def _owner(path: str, root: Path) -> str:
    """The class folder a file really lies in, links resolved."""
    return Path(os.path.realpath(path)).relative_to(os.path.realpath(root)).parts[0]


@pytest.fixture
def crossed(folder: Path) -> dict[str, Path]:
    """Links that resolve into the sibling class ``cat``, beside links that stay in their own class."""
    (folder / "cat" / "sub").mkdir()
    Image.new("RGB", (8, 8), "green").save(folder / "cat" / "sub" / "x.png")
    links = {
        "class": folder / "kitty",  # a whole class folder that is cat's
        "folder": folder / "dog" / "cats",
        "nested": folder / "dog" / "deep",
        "file": folder / "dog" / "stolen.png",
        "own-file": folder / "dog" / "again.png",
        "own-folder": folder / "cat" / "sub" / "up",
    }
    links["class"].symlink_to(folder / "cat", target_is_directory=True)
    links["folder"].symlink_to(Path("..") / "cat", target_is_directory=True)
    links["nested"].symlink_to(folder / "cat" / "sub", target_is_directory=True)
    links["file"].symlink_to(folder / "cat" / "0.jpg")
    links["own-file"].symlink_to(folder / "dog" / "1.png")
    links["own-folder"].symlink_to(folder / "cat", target_is_directory=True)  # up its own class: a cycle
    return links


@pytest.mark.parametrize("workers", [0, 2])
def test_links_into_another_class_are_left_out_listed_and_logged(
    folder: Path, crossed: dict[str, Path], workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zcopy_data"):
        ds = ImageFolderDataset(folder, size=(16, 16))
    assert ds.classes == ["cat", "dog"]
    excluded = dict(ds.excluded)
    assert sorted(excluded) == sorted(str(crossed[k]) for k in ("class", "folder", "nested", "file"))
    for key, label in [("class", "kitty"), ("folder", "dog"), ("nested", "dog"), ("file", "dog")]:
        assert re.fullmatch(
            rf"symbolic link to '.*', into the folder of class 'cat': its images served again as '{label}'",
            excluded[str(crossed[key])],
        )
        assert f"left out {str(crossed[key])!r} (symbolic link to" in caplog.text
    assert "follow_symlinks=True" in caplog.text
    assert str(crossed["own-file"]) in ds.files  # a link inside its own class is followed
    assert len(ds) == 2 * len(SIZES) + 2  # cat/sub/x.png once (the cycle is cut), dog/again.png
    assert [_owner(f, folder) for f in ds.files] == [ds.classes[i] for i in ds.labels]
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    batches = consume(loader)
    images = np.concatenate([b["image"].numpy() for b in batches])
    labels = np.concatenate([b["label"].numpy() for b in batches])
    assert labels.tolist() == ds.labels.tolist()
    for image, path in zip(images, ds.files, strict=True):
        assert np.array_equal(image, _expected(path, 16, 16)), path


def test_links_into_another_class_are_followed_only_when_asked(folder: Path, crossed: dict[str, Path]) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8), follow_symlinks=True)
    assert ds.classes == ["cat", "dog", "kitty"]
    assert ds.excluded == []
    by_file = dict(zip(ds.files, ds.labels.tolist(), strict=True))
    assert by_file[str(crossed["file"])] == 1
    assert sum(1 for label in ds.labels if label == 2) == len(SIZES) + 1  # kitty serves cat's files, as asked


def test_a_link_back_to_the_root_stays_left_out_even_when_following_links(folder: Path) -> None:
    (folder / "dog" / "loop").symlink_to(folder, target_is_directory=True)
    ds = ImageFolderDataset(folder, size=(8, 8), follow_symlinks=True)
    assert len(ds) == 2 * len(SIZES)
    why = f"symbolic link to {str(folder)!r}, the root or one of its ancestors"
    assert ds.excluded == [(str(folder / "dog" / "loop"), why)]


# -- FIFOs, sockets and devices: only regular files are read --------------------------------------
# Opening a FIFO for reading blocks until a writer comes, so every case runs in a child process with
# a timeout: a regression fails the test instead of hanging the suite.
FIFO_CASES = """
import json, os, sys, warnings
from torch.utils.data import DataLoader
from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ImageFolderDataset, SkippedFileWarning

root, case, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
cat = os.path.join(root, "cat")


def epoch(ds):
    loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate,
                        timeout=60 if workers else 0)
    it = iter(loader)
    try:
        return [label for batch in it for label in batch["label"].tolist()]
    finally:
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


try:
    if case in ("scan", "scan-follow"):
        ds = ImageFolderDataset(root, size=8, follow_symlinks=case == "scan-follow")
        print(json.dumps({"excluded": ds.excluded, "files": ds.files, "labels": epoch(ds)}))
    elif case == "from-files":
        ImageFolderDataset.from_files([os.path.join(cat, "0.jpg"), os.path.join(cat, "pipe.png")], [0, 0], size=8)
        print("NOT REFUSED")
    elif case in ("swapped-raise", "swapped-skip"):
        ds = ImageFolderDataset(root, size=8, on_error=case.split("-")[1])
        image = os.path.join(cat, "1.jpg")
        os.remove(image)
        os.mkfifo(image)  # a FIFO where an image was, after the scan
        warnings.simplefilter("ignore", SkippedFileWarning)
        print(json.dumps({"labels": epoch(ds), "skipped": ds.skipped}))
except Exception as err:
    print(f"{type(err).__name__}: {err}")
"""


@pytest.fixture
def irregular(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``cat/pipe.png`` a FIFO, ``cat/sock.png`` a socket, ``cat/zero.png`` a link to ``/dev/zero``."""
    os.mkfifo(folder / "cat" / "pipe.png")
    os.mkfifo(folder / "fifo")  # not a folder: no class
    monkeypatch.chdir(folder / "cat")  # a socket's path must be short: bind it relative to its folder
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
    (folder / "cat" / "zero.png").symlink_to("/dev/zero")
    return folder


def _fifo_case(root: Path, case: str, workers: int = 0) -> str:
    proc = run_isolated(FIFO_CASES, str(root), case, str(workers), timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("follow", [False, True])
def test_a_fifo_socket_or_device_in_an_image_folder_is_left_out_and_listed(
    irregular: Path, workers: int, follow: bool
) -> None:
    out = json.loads(_fifo_case(irregular, "scan-follow" if follow else "scan", workers))
    cat = irregular / "cat"
    zero = "not a regular file (a character device)" if follow else "symbolic link to '/dev/zero', outside the root"
    assert dict(out["excluded"]) == {
        str(cat / "pipe.png"): "not a regular file (a FIFO); only regular files are read",
        str(cat / "sock.png"): "not a regular file (a socket); only regular files are read",
        str(cat / "zero.png"): zero + ("; only regular files are read" if follow else ""),
    }
    assert all(os.path.isfile(f) for f in out["files"])
    assert out["labels"] == [0] * len(SIZES) + [1] * len(SIZES)  # an epoch that returns, every image once


def test_from_files_refuses_a_fifo_naming_it(irregular: Path) -> None:
    out = _fifo_case(irregular, "from-files")
    pipe = str(irregular / "cat" / "pipe.png")
    assert out == f"CorruptFileError: {pipe!r} is not a regular file (a FIFO); only regular files are read"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_image_replaced_by_a_fifo_after_the_scan_is_refused_never_waited_on(
    irregular: Path, on_error: str, workers: int
) -> None:
    swapped = str(irregular / "cat" / "1.jpg")
    why = f"{swapped!r} is not a regular file (a FIFO); only regular files are read"
    out = _fifo_case(irregular, f"swapped-{on_error}", workers)
    if on_error == "raise":
        assert out.startswith("CorruptFileError: ") and why in out, out
        return
    skipped = json.loads(out)
    assert skipped["labels"] == [0] * (len(SIZES) - 1) + [1] * len(SIZES)
    assert skipped["skipped"] == [[swapped, why]]  # a worker's skips come back with its batch


# -- a declared pixel limit: refused from the header, before decoding -------------------------------
def _too_many(path: Path | str, width: int, height: int, limit: int) -> str:
    """The refusal's message, as a pattern."""
    return (
        rf"{re.escape(repr(str(path)))}: the image is {width} x {height} = {width * height:,} pixels, above "
        rf"max_pixels={limit:,}; fix: downscale the file, or pass a higher max_pixels= \(None: no limit\)"
    )


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real 11000 x 10000 PNG written by Pillow (110 Mpx, above Pillow's warning limit): 1-bit, a few KiB."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (11_000, 10_000)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_above_the_default_pixel_limit_is_refused_from_its_header(
    folder: Path, huge_png: bytes, workers: int
) -> None:
    huge = folder / "cat" / "0-huge.png"
    huge.write_bytes(huge_png)
    ds = ImageFolderDataset(folder, size=(16, 16))
    assert ds.max_pixels == Image.MAX_IMAGE_PIXELS == 89_478_485
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with pytest.raises(CorruptFileError, match=_too_many(huge, 11_000, 10_000, 89_478_485)):
        consume(loader)  # filterwarnings=error: a DecompressionBombWarning from Pillow would fail this


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_above_max_pixels_is_refused_naming_it(folder: Path, workers: int) -> None:
    ds = ImageFolderDataset(folder, size=(16, 16), max_pixels=5_000)
    with pytest.raises(CorruptFileError, match=_too_many(folder / "cat" / "3.jpg", 100, 100, 5_000)):
        ds[3]
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with pytest.raises(CorruptFileError, match=_too_many(folder / "cat" / "3.jpg", 100, 100, 5_000)):
        consume(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_images_above_max_pixels_reports_each_one(folder: Path, workers: int) -> None:
    ds = ImageFolderDataset(folder, size=(16, 16), on_error="skip", max_pixels=5_000)
    big = [str(folder / "cat" / "3.jpg"), str(folder / "dog" / "3.png")]  # 100 x 100; the others <= 3,072 px
    loader = DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=zero_copy_collate, timeout=60 if workers else 0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        batches = consume(loader)
    kept = [(p, label) for p, label in zip(ds.files, ds.labels.tolist(), strict=True) if p not in big]
    images = np.concatenate([b["image"].numpy() for b in batches])
    assert np.concatenate([b["label"].numpy() for b in batches]).tolist() == [label for _, label in kept]
    for image, (path, _) in zip(images, kept, strict=True):
        assert np.array_equal(image, _expected(path, 16, 16)), path
    # reported in this process, worker processes included: the reports come back with the batch
    assert sorted(p for p, _ in ds.skipped) == sorted(big)
    assert all(re.fullmatch(_too_many(p, 100, 100, 5_000) + r".*", why) for p, why in ds.skipped)
    assert sum(issubclass(w.category, SkippedFileWarning) for w in caught) == 2


def test_max_pixels_defaults_to_pillows_limit_when_built_and_none_lifts_it(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = folder / "cat" / "3.jpg"  # 100 x 100 = 10,000 px
    expected = _expected(str(path), 16, 16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # Pillow warns above 5,000 px, refuses above 10,000
    with pytest.raises(CorruptFileError, match=_too_many(path, 100, 100, 5_000)):
        ImageFolderDataset(folder, size=(16, 16))[3]
    before = list(warnings.filters)
    lifted = ImageFolderDataset(folder, size=(16, 16), max_pixels=None, threads=4)
    batch = zero_copy_collate(lifted.__getitems__(list(range(len(lifted)))))  # Pillow's warning never escapes
    assert np.array_equal(batch["image"][3].numpy(), expected)
    assert warnings.filters == before  # the decode threads' silencing is undone
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)  # Pillow itself refuses above 2 x its limit
    bomb = rf"{re.escape(repr(str(path)))}: cannot decode the image \(DecompressionBombError"
    with pytest.raises(CorruptFileError, match=bomb):
        ImageFolderDataset(folder, size=(16, 16), max_pixels=None)[3]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert ImageFolderDataset(folder, size=(16, 16)).max_pixels is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_max_pixels_must_be_a_positive_integer_or_none(folder: Path, bad: Any) -> None:
    message = rf"max_pixels={re.escape(repr(bad))} should be an integer > 0, or None for no limit"
    with pytest.raises(ValueError, match=message):
        ImageFolderDataset(folder, size=8, max_pixels=bad)
    with pytest.raises(ValueError, match=message):
        ImageFolderDataset.from_files([folder / "cat" / "0.jpg"], [0], size=8, max_pixels=bad)
    ds = ImageFolderDataset.from_files([folder / "cat" / "0.jpg"], [0], size=8, max_pixels=np.int64(64))
    assert ds.max_pixels == 64 and type(ds.max_pixels) is int
