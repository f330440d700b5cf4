"""JPEG decoding through ``simplejpeg`` (libjpeg-turbo's TurboJPEG API), Pillow's pixels exactly.

``simplejpeg`` decodes a whole file in one call, without the GIL, and can write into a given buffer
(the batch slot itself when no resize or conversion is left to do). It serves the JPEGs Pillow
opens as ``RGB`` (YCbCr) or ``L`` (gray); CMYK/YCCK files, and headers it cannot read, stay with
Pillow. Its full decode uses the same accurate integer IDCT and smooth upsampling as Pillow's
libjpeg, so the pixels are equal: :func:`matches_pillow` checks that on this machine once per
process (different libjpeg-turbo builds could disagree), and ``decoder="auto"`` uses it only then.
In ``decode="fast"`` it scales in the DCT domain by the same 1/1, 1/2, 1/4 or 1/8 that Pillow's
draft mode picks, so both decoders give the same pixels there too.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from typing import Any

import numpy as np

__all__ = ["HAS_SIMPLEJPEG", "JpegHeader", "decode_jpeg", "draft_scale", "matches_pillow", "read_header"]

HAS_SIMPLEJPEG = importlib.util.find_spec("simplejpeg") is not None
INSTALL_HINT = "pip install 'zcopy-data[jpeg]' (or pip install simplejpeg)"

_MODE_OF = {"YCbCr": "RGB", "Gray": "L"}  # libjpeg's colour space -> the mode Pillow opens it as
_COLORSPACE = {"RGB": "RGB", "L": "GRAY"}

JpegHeader = tuple[int, int, str]  # height, width, Pillow mode


def read_header(data: bytes | memoryview) -> JpegHeader | None:
    """``(height, width, mode)`` of a JPEG this decoder serves, else ``None`` (Pillow decodes it)."""
    import simplejpeg

    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # e.g. a sampling layout TurboJPEG does not name; Pillow reads it
    mode = _MODE_OF.get(colorspace)
    return None if mode is None else (int(h), int(w), mode)


def draft_scale(height: int, width: int, size: tuple[int, int]) -> int:
    """The reduction Pillow's ``draft`` picks for (height, width) at target (H, W): 8, 4, 2 or 1."""
    scale = min(width // size[1], height // size[0])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def decode_jpeg(
    data: bytes | memoryview, mode: str, *, scale: int = 1, out: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, Any]:
    """Decode to (H, W, C) uint8 in Pillow's ``mode`` (``RGB`` or ``L``), reduced by ``scale``, into ``out``."""
    import simplejpeg

    kw: dict[str, Any] = {}
    if scale > 1:
        h, w, _ = read_header(data) or (0, 0, mode)
        kw = {"min_height": -(-h // scale), "min_width": -(-w // scale)}
    if out is not None:
        kw["buffer"] = out
    arr = simplejpeg.decode_jpeg(data, colorspace=_COLORSPACE[mode], fastdct=False, fastupsample=False, **kw)
    return arr  # type: ignore[no-any-return]


@functools.cache
def matches_pillow() -> bool:
    """Whether this machine's ``simplejpeg`` decodes exactly Pillow's pixels (full and draft scale)."""
    if not HAS_SIMPLEJPEG:
        return False
    from PIL import Image

    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:67, 0:93]
    smooth = np.stack([x * 2.5, y * 3.1, (x + y) * 1.4], -1) % 256
    pixels = np.clip(smooth + rng.normal(0, 24, smooth.shape), 0, 255).astype(np.uint8)
    cases = [("RGB", {"quality": 90}), ("RGB", {"quality": 75, "subsampling": 0}),
             ("RGB", {"quality": 85, "progressive": True}), ("L", {"quality": 90})]  # fmt: skip
    for mode, options in cases:
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **options)
        data = buf.getvalue()
        for scale in (1, 4):
            with Image.open(io.BytesIO(data)) as im:
                if scale > 1:
                    im.draft(im.mode, (93 // scale, 67 // scale))
                ref = np.asarray(im)
            try:
                got = decode_jpeg(data, mode, scale=scale)
            except ValueError:
                return False
            if got.size != ref.size or not np.array_equal(got.reshape(ref.shape), ref):
                return False
    return True
