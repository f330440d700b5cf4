"""The declared pixel format of an image dataset, and the one rule every file's mode follows.

A dataset declares ``mode`` (Pillow's name: ``"RGB"``, ``"L"``, ``"RGBA"`` or ``"I;16"``) and
``alpha`` (what happens to transparency the declared mode cannot hold). A file's own mode is then
converted by Pillow's ``Image.convert``, or refused, never changed silently:

* conversions that keep every value (``L``/``1``/``P`` to ``RGB``, ``RGB`` to ``RGBA``, ...) and
  colour-space conversions Pillow defines (``CMYK``/``YCbCr`` to ``RGB``, anything to ``L``) are
  done and named (``inspect`` lists them);
* transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent entry) in a mode without an
  alpha channel is refused unless ``alpha="drop"`` says to drop it -- when some pixel is not fully
  opaque: an alpha band of 255 everywhere (common in screenshots and exports) holds nothing to lose,
  so it is dropped and the conversion named;
* more than 8 bits per channel (``I;16``, ``I``, ``F``, a 16-bit RGB PNG that Pillow reads as 8
  bits) is refused in an 8-bit mode: Pillow saturates or truncates it. Declare ``mode="I;16"``
  (``uint16`` samples) for 16-bit grayscale;
* an ``I;16`` dataset takes 16-bit grayscale files only: 8-bit values would sit at the bottom of a
  0..65535 range, a silent change of scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zcopy_data.errors import DtypeDriftError, SchemaError

__all__ = ["ALPHA_RULES", "MODES", "PixelFormat", "carries_alpha", "is_high_depth", "is_opaque", "source_mode"]

MODES: dict[str, tuple[int, torch.dtype]] = {
    "RGB": (3, torch.uint8),
    "L": (1, torch.uint8),
    "RGBA": (4, torch.uint8),
    "I;16": (1, torch.uint16),
}
"""Declared mode -> (channels, dtype of a sample)."""

ALPHA_RULES = ("refuse", "drop")
_WITH_ALPHA = {"RGBA", "LA", "PA", "La", "RGBa"}
_SIXTEEN = {"I;16", "I;16B", "I;16L", "I;16N"}
_WIDE = {*_SIXTEEN, "I", "F", "I;32", "I;32B"}
_NAMED = {
    ("P", "RGB"): "palette looked up",
    ("P", "RGBA"): "palette looked up",
    ("CMYK", "RGB"): "CMYK to RGB, Pillow's naive conversion (no colour profile)",
    ("CMYK", "RGBA"): "CMYK to RGB, Pillow's naive conversion (no colour profile), opaque alpha added",
    ("YCbCr", "RGB"): "YCbCr to RGB",
    ("1", "L"): "1-bit to 0/255",
    ("1", "RGB"): "1-bit to 0/255, replicated to 3 channels",
    ("L", "RGB"): "gray replicated to 3 channels",
    ("L", "RGBA"): "gray replicated to 3 channels, opaque alpha added",
    ("RGB", "RGBA"): "opaque alpha added",
    ("RGB", "L"): "RGB to luma (ITU-R 601-2, Pillow's convert('L'))",
    ("LA", "RGBA"): "gray replicated to 3 channels, alpha kept",
    ("PA", "RGBA"): "palette looked up, alpha kept",
}


def source_mode(im: Any) -> str:
    """The mode a file really holds: Pillow's mode, with ``;16`` added where Pillow reads 16 bits as 8.

    Pillow opens a 16-bit RGB(A) or LA PNG as 8-bit ``RGB``/``RGBA``/``LA`` (raw mode ``RGB;16B``):
    the low byte of every value would be dropped without a word.
    """
    mode: str = im.mode
    if mode not in _WIDE:
        for tile in getattr(im, "tile", None) or ():
            raw = tile.args if isinstance(tile.args, str) else (tile.args[0] if tile.args else None)
            if isinstance(raw, str) and ";16" in raw:
                return f"{mode};16"
    return mode


def is_high_depth(mode: str) -> bool:
    """More than 8 bits per channel (what :func:`source_mode` returns for such files included)."""
    return mode in _WIDE or mode.endswith(";16")


def carries_alpha(im: Any, mode: str) -> bool:
    """Whether the file can carry transparency (an alpha band, or a palette/tRNS transparent entry)."""
    if mode.split(";")[0] in _WITH_ALPHA:
        return True
    return bool(im.has_transparency_data) if hasattr(im, "has_transparency_data") else "transparency" in im.info


def is_opaque(im: Any) -> bool:
    """Whether every pixel of a loaded image that carries transparency is fully opaque."""
    if "A" in im.getbands():
        return bool(im.getchannel("A").getextrema()[0] == 255)
    return bool(im.convert("RGBA").getchannel("A").getextrema()[0] == 255)  # palette / tRNS transparency


@dataclass(frozen=True)
class PixelFormat:
    """What every sample is: Pillow ``mode`` and the rule for alpha the mode cannot hold."""

    mode: str = "RGB"
    alpha: str = "refuse"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SchemaError(f"mode={self.mode!r} should be one of {list(MODES)} (Pillow's mode names)")
        if self.alpha not in ALPHA_RULES:
            raise SchemaError(f"alpha={self.alpha!r} should be one of {ALPHA_RULES}")
        if self.alpha == "drop" and self.mode == "RGBA":
            raise SchemaError("alpha='drop' with mode='RGBA' contradicts itself: RGBA keeps alpha; pick one")

    @property
    def channels(self) -> int:
        return MODES[self.mode][0]

    @property
    def dtype(self) -> torch.dtype:
        return MODES[self.mode][1]

    def conversion(self, mode: str, transparency: str = "none") -> str:
        """How a file of ``mode`` becomes the declared mode, in words; ``"none"`` when it already is.

        ``transparency`` is what the file's alpha holds: ``"none"`` (no alpha), ``"opaque"`` (255
        everywhere), ``"unknown"`` (not looked at) or ``"transparent"``. Raises the error a file of
        that mode gets (without the file's name: :meth:`check` adds it).
        """
        declared = self.mode
        if declared == "I;16":
            if mode in _SIXTEEN:
                return "none" if mode == "I;16" else f"{mode} byte order to native I;16"
            raise DtypeDriftError(
                f"holds {_depth(mode)} mode {mode!r}, the dataset declares mode='I;16' (16-bit grayscale); "
                "8-bit values would sit at the bottom of the 0..65535 range; fix: keep 16-bit and 8-bit "
                "images in separate datasets, or declare an 8-bit mode ('L', 'RGB') for these files",
                field="image",
            )
        if is_high_depth(mode):
            fix = (
                "declare mode='I;16' to get uint16 samples"
                if mode in _SIXTEEN
                else "re-encode the file with 8 bits per channel (16-bit colour has no uint16 path in Pillow)"
            )
            raise DtypeDriftError(
                f"holds {_depth(mode)} mode {mode!r}; converting it to 8-bit {declared!r} would saturate or "
                f"truncate its values; fix: {fix}",
                field="image",
            )
        if declared != "RGBA" and (transparency != "none" or mode in _WITH_ALPHA):
            if transparency == "opaque":
                what = "opaque alpha dropped" if mode in _WITH_ALPHA else "unused transparency dropped"
                base = mode[:-1] if mode in _WITH_ALPHA else mode
                return what if base == declared else f"{what}, " + self.conversion(base)
            if self.alpha == "refuse":
                raise SchemaError(
                    f"mode {mode!r} has transparency, the dataset declares mode={declared!r} without alpha; "
                    "fix: mode='RGBA' to keep it (4 channels), or alpha='drop' to drop it",
                    field="image",
                )
            what = "alpha dropped" if mode in _WITH_ALPHA else "transparency dropped"
            base = mode[:-1] if mode in _WITH_ALPHA else mode  # RGBA -> RGB, LA -> L, PA -> P
            if base == declared:
                return what
            return f"{what}, " + _NAMED.get((base, declared), f"{base} to {declared} (Pillow's convert)")
        if mode == declared:
            return "none"
        return _NAMED.get((mode, declared), f"{mode} to {declared} (Pillow's convert)")

    def check(self, where: str, im: Any, mode: str) -> str:
        """The conversion of a loaded image, in words; the error names the image (``where``: its file, quoted).

        ``mode`` is :func:`source_mode` of the image before it was loaded (loading forgets the raw
        mode). The alpha band is read only when it decides (``alpha="refuse"``, no alpha declared).
        """
        transparency = "none"
        if carries_alpha(im, mode) and self.mode != "RGBA":
            transparency = "unknown" if self.alpha == "drop" or is_high_depth(mode) else (
                "opaque" if is_opaque(im) else "transparent"
            )
        try:
            return self.conversion(mode, transparency)
        except SchemaError as err:
            raise type(err)(f"{where}: {err}", field="image") from None

    def __str__(self) -> str:
        return f"mode={self.mode!r}" + (", alpha='drop'" if self.alpha == "drop" else "")


def _depth(mode: str) -> str:
    if mode in ("F", "I", "I;32", "I;32B"):
        return "32-bit"
    return "16-bit" if is_high_depth(mode) else "8-bit"
