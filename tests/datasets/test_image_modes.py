"""Declared decoding: ``decode="exact"`` is Pillow's own pipeline bit for bit, ``"fast"`` stays within
its bound, and no pixel or dtype changes without being declared (alpha, 16 bits, palettes, CMYK)."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from zcopy_data import LEDGER, zero_copy_collate
from zcopy_data.datasets import ImageFolderDataset
from zcopy_data.datasets._jpeg_simple import HAS_SIMPLEJPEG, matches_pillow
from zcopy_data.errors import DtypeDriftError, SchemaError

SIZE = (24, 20)  # (H, W)
DECODERS = ["pillow", pytest.param("simplejpeg", marks=pytest.mark.skipif(not HAS_SIMPLEJPEG, reason="no simplejpeg"))]
_rng = np.random.default_rng(3)


def _photo(h: int, w: int) -> np.ndarray:
    """Photograph-like pixels: smooth fields, a few hard-edged discs, mild noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)

    def wave() -> np.ndarray:
        fx, fy, phase = _rng.uniform(0.5, 4), _rng.uniform(0.5, 4), _rng.uniform(0, 6)
        return _rng.uniform(20, 50) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)

    chans = [128 + sum(wave() for _ in range(3)) for _ in range(3)]
    a = np.stack(chans, -1)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(4):
        cy, cx, r = _rng.integers(0, h), _rng.integers(0, w), _rng.integers(4, max(5, h // 3))
        a[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = _rng.uniform(0, 255, 3)
    return np.clip(a + _rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)


def _png16_rgb(path: Path, h: int, w: int) -> Path:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write one; this is the format byte for byte)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = _rng.integers(0, 65536, (h, w, 3), dtype=np.uint16).astype(">u2").reshape(h, -1).view(np.uint8)
    raw = b"".join(b"\0" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# file name -> how Pillow writes it
def _write(root: Path, name: str) -> Path:
    path = root / "c" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_photo(61, 83))
    if name == "rgb420.jpg":
        rgb.save(path, quality=90)
    elif name == "rgb444.jpg":
        rgb.save(path, quality=80, subsampling=0)
    elif name == "progressive.jpg":
        rgb.save(path, quality=85, progressive=True)
    elif name == "gray.jpg":
        rgb.convert("L").save(path, quality=90)
    elif name == "cmyk.jpg":
        rgb.convert("CMYK").save(path, quality=90)
    elif name == "rgb.png":
        rgb.save(path)
    elif name == "gray.png":
        rgb.convert("L").save(path)
    elif name == "rgba.png":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(_rng.integers(0, 256, (61, 83), dtype=np.uint8)))
        rgba.save(path)
    elif name == "palette.png":
        rgb.convert("P").save(path)
    elif name == "i16.png":
        Image.fromarray(_rng.integers(0, 65536, (61, 83), dtype=np.uint16)).save(path)
    else:
        raise AssertionError(name)
    return path


def _pillow(path: Path, mode: str, resample: Image.Resampling, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Pillow's own pipeline: ``Image.open(p).convert(mode).resize((W, H), resample)``, as (H, W, C)."""
    with Image.open(path) as im:
        out = im.convert(mode).resize(size[::-1], resample)
    arr = np.asarray(out)
    return arr.reshape(*arr.shape[:2], -1)


EXACT = [  # (file, declared mode)
    ("rgb420.jpg", "RGB"), ("rgb444.jpg", "RGB"), ("progressive.jpg", "RGB"), ("gray.jpg", "L"),
    ("gray.jpg", "RGB"), ("rgb420.jpg", "L"), ("cmyk.jpg", "RGB"), ("rgb.png", "RGB"), ("gray.png", "L"),
    ("rgba.png", "RGBA"), ("palette.png", "RGB"), ("palette.png", "RGBA"), ("i16.png", "I;16"), ("rgb.png", "RGBA"),
]  # fmt: skip


@pytest.mark.reliability
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("name", "mode"), EXACT)
def test_exact_decode_is_pillows_pipeline_bit_for_bit(
    tmp_path: Path, name: str, mode: str, channels_last: bool, decoder: str
) -> None:
    path = _write(tmp_path, name)
    for resample, pil in (("bilinear", Image.Resampling.BILINEAR), ("lanczos", Image.Resampling.LANCZOS)):
        ds = ImageFolderDataset(tmp_path, SIZE, mode=mode, resample=resample, decoder=decoder,
                                channels_last=channels_last)  # fmt: skip
        image = zero_copy_collate(ds.__getitems__([0]))["image"][0].numpy()
        hwc = image if channels_last else image.transpose(1, 2, 0)
        expected = _pillow(path, mode, pil)
        assert hwc.dtype == expected.dtype and np.array_equal(hwc, expected), (name, mode, resample)
        assert torch.equal(ds[0]["image"], torch.from_numpy(image))


@pytest.mark.skipif(not HAS_SIMPLEJPEG, reason="no simplejpeg")
def test_simplejpeg_decodes_pillows_pixels_here_and_serves_rgb_and_gray_jpegs(tmp_path: Path) -> None:
    assert matches_pillow()
    for name in ("rgb420.jpg", "gray.jpg", "cmyk.jpg", "rgb.png"):
        _write(tmp_path, name)
    ds = ImageFolderDataset(tmp_path, SIZE)
    assert ds.decoder == "simplejpeg"  # decoder="auto" picks it: it matches Pillow on this machine
    LEDGER.reset()
    zero_copy_collate(ds.__getitems__(list(range(len(ds)))))
    row = next(r for r in LEDGER.rows if r.stage == "decode")
    assert "Pillow + simplejpeg decode" in row.reason  # CMYK JPEG and the PNG stay with Pillow


@pytest.mark.skipif(not HAS_SIMPLEJPEG, reason="no simplejpeg")
def test_a_jpeg_at_the_target_size_decodes_straight_into_the_batch_slot(tmp_path: Path) -> None:
    path = tmp_path / "c" / "exact.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(_photo(*SIZE)).save(path, quality=90)
    ds = ImageFolderDataset(tmp_path, SIZE, channels_last=True, decoder="simplejpeg")
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__([0, 0]))
    with Image.open(path) as im:
        assert np.array_equal(batch["image"][1].numpy(), np.asarray(im.convert("RGB")))
    row = next(r for r in LEDGER.rows if r.stage == "decode")
    assert row.bytes_copied == 0 and "decoded straight into the batch slot" in row.reason


# -- decode="fast": draft mode, within its bound ---------------------------------------------------------
FAST_CASES = [((480, 640), (224, 224)), ((375, 500), (64, 64)), ((1024, 768), (128, 128)), ((480, 640), (32, 32))]


@pytest.mark.reliability
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(("shape", "size"), FAST_CASES)
def test_fast_decode_is_pillows_draft_mode_and_within_its_bound(
    tmp_path: Path, shape: tuple[int, int], size: tuple[int, int], decoder: str
) -> None:
    path = tmp_path / "c" / "photo.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(_photo(*shape)).save(path, quality=90)
    fast = ImageFolderDataset(tmp_path, size, decode="fast", decoder=decoder, channels_last=True)[0]["image"].numpy()
    with Image.open(path) as im:
        im.draft(im.mode, size[::-1])
        assert im.size[0] < shape[1]  # the decoder really scaled down
        draft = np.asarray(im.convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR))
    assert np.array_equal(fast, draft)  # both decoders: exactly Pillow's draft pipeline
    exact = _pillow(path, "RGB", Image.Resampling.BILINEAR, size)
    diff = np.abs(fast.astype(int) - exact)
    assert 0 < diff.mean() <= 2.0  # the documented bound: mean absolute difference <= 2 of 255


def test_fast_decode_changes_nothing_for_formats_without_draft_mode(tmp_path: Path) -> None:
    for name in ("rgb.png", "palette.png"):
        _write(tmp_path, name)
    exact = zero_copy_collate(ImageFolderDataset(tmp_path, SIZE).__getitems__([0, 1]))["image"]
    fast = zero_copy_collate(ImageFolderDataset(tmp_path, SIZE, decode="fast").__getitems__([0, 1]))["image"]
    assert torch.equal(exact, fast)


# -- no silent pixel or dtype change ----------------------------------------------------------------------
def test_sixteen_bit_images_are_uint16_when_declared(tmp_path: Path) -> None:
    path = _write(tmp_path, "i16.png")
    ds = ImageFolderDataset(tmp_path, SIZE, mode="I;16")
    assert str(ds.schema) == "Schema({'image': uint16[1, 24, 20], 'label': int64[]})"
    image = ds[0]["image"]
    assert image.dtype == torch.uint16 and int(image.numpy().max()) > 255  # the high byte survives
    assert np.array_equal(image.numpy()[0], _pillow(path, "I;16", Image.Resampling.BILINEAR)[..., 0])


@pytest.mark.reliability
def test_sixteen_bit_images_in_an_eight_bit_mode_are_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, "i16.png")
    for mode in ("RGB", "L"):
        with pytest.raises(DtypeDriftError, match=rf"{path.name}'.*16-bit mode 'I;16'.*saturate.*mode='I;16'"):
            ImageFolderDataset(tmp_path, SIZE, mode=mode)[0]


@pytest.mark.reliability
def test_a_sixteen_bit_rgb_png_pillow_would_read_as_eight_bits_is_refused(tmp_path: Path) -> None:
    path = _png16_rgb(tmp_path / "c" / "deep.png", 9, 7)
    with Image.open(path) as im:
        assert im.mode == "RGB"  # what Pillow reports: the low bytes would go without a word
    with pytest.raises(DtypeDriftError, match=rf"{path.name}'.*16-bit mode 'RGB;16'.*re-encode"):
        ImageFolderDataset(tmp_path, SIZE)[0]


def test_eight_bit_images_in_a_sixteen_bit_dataset_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "gray.png")
    with pytest.raises(DtypeDriftError, match=rf"{path.name}'.*8-bit mode 'L'.*mode='I;16'.*separate datasets"):
        ImageFolderDataset(tmp_path, SIZE, mode="I;16")[0]


def _transparent_palette(path: Path) -> Path:
    p = Image.fromarray(_photo(30, 30)).convert("P")
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    p.save(path)
    return path


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["rgba", "palette"])
def test_transparency_is_refused_without_alpha_naming_both_fixes_then_kept_or_dropped_as_declared(
    tmp_path: Path, kind: str
) -> None:
    path = _write(tmp_path, "rgba.png") if kind == "rgba" else _transparent_palette(tmp_path / "c" / "tp.png")
    with pytest.raises(SchemaError, match=rf"{path.name}'.*transparency.*mode='RGBA' to keep it.*alpha='drop'"):
        ImageFolderDataset(tmp_path, SIZE)[0]
    kept = ImageFolderDataset(tmp_path, SIZE, mode="RGBA")[0]["image"]
    assert kept.shape == (4, *SIZE) and int(kept[3].min()) < 255  # the alpha band is there
    dropped = ImageFolderDataset(tmp_path, SIZE, alpha="drop", channels_last=True)[0]["image"].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's hint on palettes with transparency: the reference only
        assert np.array_equal(dropped, _pillow(path, "RGB", Image.Resampling.BILINEAR))


def test_fully_opaque_alpha_is_dropped_and_the_conversion_named(tmp_path: Path) -> None:
    path = tmp_path / "c" / "opaque.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(_photo(30, 30)).convert("RGBA").save(path)  # alpha 255 everywhere
    ds = ImageFolderDataset(tmp_path, SIZE)
    LEDGER.reset()
    image = zero_copy_collate(ds.__getitems__([0]))["image"][0].numpy().transpose(1, 2, 0)
    assert np.array_equal(image, _pillow(path, "RGB", Image.Resampling.BILINEAR))
    assert any("RGB (opaque alpha dropped)" in r.reason for r in LEDGER.rows if r.stage == "decode")


def test_mixed_modes_in_one_folder_follow_the_declared_mode(tmp_path: Path) -> None:
    names = ["rgb420.jpg", "gray.png", "palette.png", "cmyk.jpg", "rgba.png", "rgb.png"]
    paths = [_write(tmp_path, n) for n in names]
    ds = ImageFolderDataset(tmp_path, SIZE, mode="RGBA")
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__(list(range(len(ds)))))["image"]
    assert batch.shape == (len(names), 4, *SIZE)
    for image, f in zip(batch, ds.files, strict=True):
        assert np.array_equal(image.numpy().transpose(1, 2, 0), _pillow(Path(f), "RGBA", Image.Resampling.BILINEAR))
    reason = next(r.reason for r in LEDGER.rows if r.stage == "decode")
    for named in ("palette looked up", "CMYK to RGB", "gray replicated to 3 channels", "opaque alpha added"):
        assert named in reason
    assert len(paths) == len(ds)


def test_the_declared_decode_is_in_the_repr_and_attributes(tmp_path: Path) -> None:
    _write(tmp_path, "rgb.png")
    ds = ImageFolderDataset(tmp_path, SIZE, mode="L", decode="fast", resample="bicubic", decoder="pillow")
    assert (ds.mode, ds.decode, ds.resample, ds.decoder, ds.alpha) == ("L", "fast", "bicubic", "pillow", "refuse")
    assert "mode='L', decode='fast', resample='bicubic', decoder='pillow'" in repr(ds)
    assert ImageFolderDataset(tmp_path, SIZE, resample=Image.Resampling.BICUBIC).resample == "bicubic"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "CMYK"}, r"mode='CMYK' should be one of \['RGB', 'L', 'RGBA', 'I;16'\]"),
        ({"alpha": "keep"}, r"alpha='keep' should be one of \('refuse', 'drop'\)"),
        ({"mode": "RGBA", "alpha": "drop"}, "contradicts itself"),
        ({"decode": "draft"}, r"decode='draft' should be one of \('exact', 'fast'\)"),
        ({"resample": "cubic"}, r"resample='cubic' should be one of Pillow's filters"),
        ({"decoder": "turbo"}, r"decoder='turbo' should be one of"),
    ],
)
def test_bad_decode_settings_are_refused_naming_the_option(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    _write(tmp_path, "rgb.png")
    with pytest.raises(ValueError, match=match):
        ImageFolderDataset(tmp_path, SIZE, **kwargs)


def test_inspect_names_each_mode_conversion_and_flags_what_the_default_refuses(tmp_path: Path) -> None:
    from zcopy_data.inspect import inspect_path

    for name in ("i16.png", "rgba.png", "palette.png", "cmyk.jpg", "rgb420.jpg"):
        _write(tmp_path, name)
    notes = "\n".join(inspect_path(tmp_path).notes)
    assert "mode I;16 (x1): refused with the default mode='RGB': " in notes and "declare mode='I;16'" in notes
    assert "mode RGBA (x1): refused with the default mode='RGB' unless every pixel is opaque" in notes
    assert "mode='RGBA' to keep it (4 channels), or alpha='drop'" in notes
    assert "mode P (x1): to RGB: palette looked up" in notes
    assert "mode CMYK (x1): to RGB: CMYK to RGB, Pillow's naive conversion" in notes
    assert "mode RGB (x1): RGB as is" in notes
    assert "decode='exact' (default): Pillow's open + convert + resize, bit for bit" in notes


def test_explain_shows_the_declared_decode(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from zcopy_data import explain

    for name in ("rgb420.jpg", "palette.png"):
        _write(tmp_path, name)
    ds = ImageFolderDataset(tmp_path, SIZE, decode="fast", resample="bicubic")
    text = str(explain(DataLoader(ds, batch_size=2, collate_fn=zero_copy_collate), batches=1))
    assert "decode (fast): " in text and "RGB (palette looked up), bicubic resize" in text
