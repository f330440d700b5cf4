from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from zcopy_data import LEDGER, SchemaError, explain, zero_copy_collate
from zcopy_data.datasets import CorruptFileError, ImageFolderDataset, SkippedFileWarning

SIZE = (12, 20)  # (H, W)


def _reference(path: Path, size: tuple[int, int] = SIZE, *, draft: bool = False) -> np.ndarray:
    """The same pipeline done by hand with Pillow: (draft,) RGB, resize; (3, H, W)."""
    h, w = size
    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            im.draft(im.mode, (w, h))
        rgb = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1)


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)).save(path, **kw)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two classes, every format and mode the loader must handle, odd sizes included."""
    rng = np.random.default_rng(0)
    root = tmp_path / "root"

    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    _save(root / "dog" / "a_rgb.jpg", rgb(64, 96), quality=90)
    _save(root / "dog" / "b_gray.png", rng.integers(0, 256, size=(23, 37), dtype=np.uint8))
    _save(root / "dog" / "c_rgba.png", rgb(31, 17), "RGBA")
    _save(root / "cat" / "d_cmyk.jpg", rgb(40, 40), "CMYK")
    _save(root / "cat" / "e_odd.png", rgb(7, 5))
    _save(root / "cat" / "sub" / "f_palette.png", rgb(16, 16), "P")
    _save(root / "cat" / "g_exact.png", rgb(*SIZE))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_folder_layout_classes_and_labels(folder):
    ds = ImageFolderDataset(folder, size=SIZE)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    names = [Path(f).name for f in ds.files]
    assert names == ["d_cmyk.jpg", "e_odd.png", "g_exact.png", "f_palette.png", "a_rgb.jpg", "b_gray.png", "c_rgba.png"]
    assert [int(ds[i]["label"]) for i in range(len(ds))] == [0, 0, 0, 0, 1, 1, 1]
    assert str(ds.schema) == "Schema({'image': uint8[3, 12, 20], 'label': int64[]})"


def test_every_format_and_mode_decodes_to_rgb_at_the_size(folder):
    ds = ImageFolderDataset(folder, size=SIZE)
    batch = zero_copy_collate(ds.__getitems__(list(range(len(ds)))))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (7, 3, *SIZE)
    assert batch["label"].dtype == torch.int64
    for i, f in enumerate(ds.files):
        assert np.array_equal(batch["image"][i].numpy(), _reference(Path(f))), f
    gray = batch["image"][ds.files.index(str(folder / "dog" / "b_gray.png"))]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_channels_last_holds_the_same_pixels(folder):
    first = ImageFolderDataset(folder, size=SIZE)
    last = ImageFolderDataset(folder, size=SIZE, channels_last=True)
    a = zero_copy_collate(first.__getitems__([4, 1]))["image"]
    b = zero_copy_collate(last.__getitems__([4, 1]))["image"]
    assert b.shape == (2, *SIZE, 3)
    assert torch.equal(a.permute(0, 2, 3, 1), b)


def test_jpeg_draft_mode_decodes_at_reduced_scale(tmp_path):
    big = _save(tmp_path / "c" / "big.jpg", np.full((800, 640, 3), 200, np.uint8))
    with Image.open(big) as im:
        im.draft("RGB", (20, 12))
        assert im.size == (80, 100)  # 1/8 scale: the decoder skipped 63/64 of the pixels
    ds = ImageFolderDataset(tmp_path, size=SIZE, decode="fast")
    assert np.array_equal(ds[0]["image"].numpy(), _reference(big, draft=True))


def test_pixels_are_written_once_into_the_batch_buffer(folder):
    ds = ImageFolderDataset(folder, size=SIZE)
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__([1, 5, 2]))
    rows = {(r.stage, r.field): r for r in LEDGER.rows}
    image_bytes = 3 * 3 * SIZE[0] * SIZE[1]
    assert rows["decode", "image"].bytes_copied == image_bytes  # one copy: Pillow's memory -> the slot
    assert "one copy into the batch slot" in rows["decode", "image"].reason
    assert rows["collate", "label"].bytes_copied == 3 * 8
    assert not any(r.reason.startswith("stack") for r in LEDGER.rows)  # no per-sample tensors stacked
    assert batch["image"].is_contiguous() and batch["image"].untyped_storage().nbytes() == image_bytes


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork")])
def test_dataloader_matches_the_per_sample_path(folder, workers, context):
    ds = ImageFolderDataset(folder, size=SIZE)
    loader = DataLoader(
        ds, batch_size=3, sampler=[5, 1, 3, 0, 6, 2, 4], num_workers=workers, multiprocessing_context=context,
        collate_fn=zero_copy_collate,
    )  # fmt: skip
    order = list(loader.batch_sampler)
    for idx, batch in zip(order, loader, strict=True):
        expected = default_collate([ds[i] for i in idx])
        assert torch.equal(batch["image"], expected["image"]) and torch.equal(batch["label"], expected["label"])
    if workers:
        crossing = [r for r in explain(loader, batches=2).rows if r.stage == "worker->main"]
        assert crossing and all(r.bytes_copied == 0 for r in crossing)  # decoded into shared memory


def test_decode_threads_give_the_same_batch(folder):
    one = zero_copy_collate(ImageFolderDataset(folder, size=SIZE).__getitems__(list(range(7))))
    two = zero_copy_collate(ImageFolderDataset(folder, size=SIZE, threads=2).__getitems__(list(range(7))))
    assert torch.equal(one["image"], two["image"]) and torch.equal(one["label"], two["label"])


def test_from_files_uses_the_given_labels(folder):
    files = sorted(folder.rglob("*.png"))
    ds = ImageFolderDataset.from_files(files, [5, 4, 3, 2, 1], size=8, classes=list("abcdef"))
    assert ds.classes == list("abcdef") and ds.root is None
    batch = zero_copy_collate(ds.__getitems__([0, 1, 2]))
    assert batch["label"].tolist() == [5, 4, 3] and batch["image"].shape == (3, 3, 8, 8)
    with pytest.raises(SchemaError, match="5 files but 2 labels"):
        ImageFolderDataset.from_files(files, [0, 1], size=8)
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        ImageFolderDataset.from_files([folder / "nope.png"], [0], size=8)


# -- bad files ---------------------------------------------------------------------------------
@pytest.fixture
def bad_folder(folder: Path) -> Path:
    good = (folder / "dog" / "a_rgb.jpg").read_bytes()
    (folder / "dog" / "h_truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "dog" / "i_garbage.png").write_bytes(os.urandom(300))
    (folder / "dog" / "j_empty.jpg").write_bytes(b"")
    png = (folder / "cat" / "e_odd.png").read_bytes()
    (folder / "dog" / "k_truncated.png").write_bytes(png[: len(png) - 30])
    return folder


BAD = ["h_truncated.jpg", "i_garbage.png", "j_empty.jpg", "k_truncated.png"]


@pytest.mark.parametrize("name", BAD)
def test_a_bad_file_raises_an_error_naming_it(bad_folder, name):
    ds = ImageFolderDataset(bad_folder, size=SIZE)
    i = ds.files.index(str(bad_folder / "dog" / name))
    with pytest.raises(CorruptFileError, match=rf"{name}.*cannot decode the image.*on_error='skip'"):
        ds[i]
    with pytest.raises(CorruptFileError, match=name):
        zero_copy_collate(ds.__getitems__([0, i]))


def test_a_bad_file_in_a_worker_keeps_its_error_type(bad_folder):
    ds = ImageFolderDataset(bad_folder, size=SIZE)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=zero_copy_collate)
    it = iter(loader)
    try:
        with pytest.raises(CorruptFileError, match=r"h_truncated\.jpg"):
            list(it)
    finally:
        it._shutdown_workers()  # now, not whenever the traceback holding it is collected


def test_skip_policy_reports_every_skipped_file(bad_folder):
    ds = ImageFolderDataset(bad_folder, size=SIZE, on_error="skip")
    LEDGER.reset()
    with pytest.warns(SkippedFileWarning) as caught:
        batch = zero_copy_collate(ds.__getitems__(list(range(len(ds)))))
    reported = sorted(Path(p).name for p, _ in ds.skipped)
    assert reported == BAD
    assert all(any(b in str(w.message) for w in caught) for b in BAD)
    assert batch["image"].shape[0] == len(ds) - len(BAD)
    good = [i for i, f in enumerate(ds.files) if Path(f).name not in BAD]
    assert batch["label"].tolist() == [int(ds[i]["label"]) for i in good]
    assert np.array_equal(batch["image"][0].numpy(), _reference(Path(ds.files[good[0]])))
    skipped_rows = [r for r in LEDGER.rows if r.reason.startswith("skipped")]
    assert len(skipped_rows) == len(BAD)


def test_symlinks_leaving_the_root_are_not_followed_unless_asked(folder, tmp_path, caplog):
    outside = _save(tmp_path / "outside" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (folder / "cat" / "link_out.png").symlink_to(outside)
    (folder / "cat" / "link_in.png").symlink_to(folder / "cat" / "e_odd.png")
    (folder / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="zcopy_data"):
        ds = ImageFolderDataset(folder, size=SIZE)
    names = {Path(f).name for f in ds.files}
    assert "link_in.png" in names and "link_out.png" not in names and "elsewhere" not in ds.classes
    assert sorted(Path(p).name for p, _ in ds.excluded) == ["elsewhere", "link_out.png"]
    assert "link_out.png" in caplog.text and "follow_symlinks=True" in caplog.text
    followed = ImageFolderDataset(folder, size=SIZE, follow_symlinks=True)
    assert "link_out.png" in {Path(f).name for f in followed.files} and "elsewhere" in followed.classes


def test_bad_folders_and_arguments(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        ImageFolderDataset(tmp_path / "missing", size=SIZE)
    with pytest.raises(NotADirectoryError):
        ImageFolderDataset(folder / "dog" / "a_rgb.jpg", size=SIZE)
    (folder / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\['empty_class'\] hold no files.*allow_empty=True"):
        ImageFolderDataset(folder, size=SIZE)
    assert ImageFolderDataset(folder, size=SIZE, allow_empty=True).classes == ["cat", "dog", "empty_class"]
    with pytest.raises(SchemaError, match=r"size=\(0, 4\)"):
        ImageFolderDataset(folder, size=(0, 4), allow_empty=True)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataset(folder, size=SIZE, on_error="ignore", allow_empty=True)


def test_file_order_matches_torchvision_image_folder(tmp_path):
    # torchvision walks sorted folders and sorts names within each: files of a folder before its sub-folders'.
    for rel in ("c/b.png", "c/a/x.png", "c/a/b/y.png", "c/z.png"):
        _save(tmp_path / rel, np.zeros((4, 4, 3), np.uint8))
    ds = ImageFolderDataset(tmp_path, size=4)
    assert [os.path.relpath(f, tmp_path) for f in ds.files] == ["c/b.png", "c/z.png", "c/a/x.png", "c/a/b/y.png"]


def test_without_pyarrow_pixels_take_pillows_packed_bytes_and_the_ledger_says_two_copies(folder, monkeypatch):
    ds = ImageFolderDataset(folder, size=SIZE)
    expected = zero_copy_collate(ds.__getitems__([0, 4]))["image"]
    monkeypatch.setattr("zcopy_data.datasets._image_decode.HAS_ARROW", False)  # as if pyarrow were not installed
    LEDGER.reset()
    again = zero_copy_collate(ds.__getitems__([0, 4]))["image"]
    assert torch.equal(again, expected)
    row = next(r for r in LEDGER.rows if r.stage == "decode")
    assert row.bytes_copied == 2 * again.numel() and "Pillow packs RGB" in row.reason
