"""Decode one image and write its pixels into a batch slot: the one copy physics leaves.

What a sample is, is declared (:class:`DecodeSpec`): the Pillow ``mode`` every file is converted to
(or refused, :mod:`._image_modes`), the size, the resize filter, and ``decode``: ``"exact"`` gives
Pillow's own ``Image.open(p).convert(mode).resize((W, H), resample)`` bit for bit; ``"fast"``
lets a JPEG decoder scale down in the DCT domain first (Pillow's draft mode). JPEGs go through
``simplejpeg`` when it is the chosen decoder (:mod:`._jpeg_simple`), everything else through
Pillow. The pixels are copied once into the caller's slot of the batch buffer: through Pillow's
Arrow export (a view of Pillow's own memory) where it can, or decoded straight into the slot
when nothing is left to resize or convert.

Only regular files are read (a FIFO put where an image was would block its reader forever), and an
image whose header declares more pixels than ``max_pixels`` is refused before anything is decoded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import numpy as np
from PIL import Image

from zcopy_data.datasets import _jpeg_simple
from zcopy_data.datasets._image_files import not_regular
from zcopy_data.datasets._image_modes import PixelFormat, is_high_depth, source_mode
from zcopy_data.errors import CorruptFileError, SchemaError
from zcopy_data.ledger import DECODE, record

__all__ = [
    "DECODE_MODES",
    "FILE_FIXES",
    "HAS_ARROW",
    "ROW_FIXES",
    "BufferFile",
    "DecodeSpec",
    "Fixes",
    "check_max_pixels",
    "decode_bytes_into",
    "decode_into",
    "record_decode",
    "resample_filter",
]

# Pillow >= 11.2 exports its pixel memory through the Arrow C data interface.
HAS_ARROW = importlib.util.find_spec("pyarrow") is not None and hasattr(Image.Image, "__arrow_c_array__")
DECODE_MODES = ("exact", "fast")

_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet: warnings.catch_warnings[None] | None = None


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """Pillow's ``DecompressionBombWarning`` silenced: ``max_pixels`` decides, and a worker's warning is lost.

    ``catch_warnings`` swaps process-wide state, so the decode threads share one: the first in
    enters it, the last out restores the filters (one per thread would restore them out of order).
    """
    global _quiet, _quiet_users
    with _quiet_lock:
        if _quiet_users == 0:
            _quiet = warnings.catch_warnings()
            _quiet.__enter__()
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # alpha="drop" declared it: Pillow's hint to convert such palettes to RGBA says nothing new
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0 and _quiet is not None:
                _quiet.__exit__(None, None, None)
                _quiet = None


def _open_regular(path: str) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file; a FIFO or device is refused, never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # regular files ignore O_NONBLOCK; a FIFO's open returns
    except FileNotFoundError:
        raise CorruptFileError(f"{path!r}: the image file no longer exists") from None
    except OSError as err:  # a socket cannot be opened (ENXIO)
        try:
            kind = not_regular(os.stat(path).st_mode)
        except OSError:
            kind = None
        if kind is None:
            raise CorruptFileError(f"{path!r}: cannot open the image ({err.strerror})") from None
        raise CorruptFileError(f"{path!r} is not a regular file ({kind}); only regular files are read") from None
    try:
        kind = not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise CorruptFileError(f"{path!r} is not a regular file ({kind}); only regular files are read")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_max_pixels(max_pixels: Any) -> int | None:
    """``max_pixels`` validated: an integer > 0, or ``None`` for no limit of ours."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, (int, np.integer)) and not isinstance(max_pixels, bool) and max_pixels > 0:
        return int(max_pixels)
    raise ValueError(f"max_pixels={max_pixels!r} should be an integer > 0, or None for no limit")


_FILTERS = {r.name.lower(): r for r in Image.Resampling}


def resample_filter(resample: Any) -> Image.Resampling:
    """A Pillow filter from its name (``"bilinear"``) or its ``Image.Resampling`` member / value."""
    if isinstance(resample, str) and resample.lower() in _FILTERS:
        return _FILTERS[resample.lower()]
    if isinstance(resample, (int, np.integer)) and not isinstance(resample, bool):
        with contextlib.suppress(ValueError):
            return Image.Resampling(int(resample))
    raise SchemaError(f"resample={resample!r} should be one of Pillow's filters {list(_FILTERS)}")


@dataclass(frozen=True)
class DecodeSpec:
    """How every file becomes a sample: size (H, W), pixel format, filter, exactness, decoder, layout."""

    size: tuple[int, int]
    pixels: PixelFormat
    resample: Image.Resampling = Image.Resampling.BILINEAR
    decode: str = "exact"
    decoder: str = "pillow"  # "pillow" or "simplejpeg" (for the JPEGs it serves), resolved
    channels_last: bool = False
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise SchemaError(f"decode={self.decode!r} should be one of {DECODE_MODES}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample's shape: (C, H, W), or (H, W, C) channels-last."""
        h, w = self.size
        c = self.pixels.channels
        return (h, w, c) if self.channels_last else (c, h, w)


@dataclass(frozen=True)
class Decoded:
    """What one decode did: the decoder used, the pixels' copies into the slot (0 = decoded there)."""

    decoder: str
    copies: int
    conversion: str


@dataclass(frozen=True)
class Fixes:
    """The fixes an error names: for a file of a folder, or for an image stored in a table's row."""

    too_large: str
    undecodable: str


FILE_FIXES = Fixes(
    "downscale the file, or pass a higher max_pixels= (None: no limit), or on_error='skip' to leave such "
    "files out (each one is reported)",
    "re-encode or remove the file, or pass on_error='skip' to leave unreadable files out (each one is reported)",
)
ROW_FIXES = Fixes(
    "downscale the image, or pass a higher max_pixels (None: no limit)",
    "re-encode the image and write the row again, or drop the row",
)


def _check_pixels(where: str, width: int, height: int, spec: DecodeSpec, fixes: Fixes) -> None:
    max_pixels = spec.max_pixels
    if max_pixels is not None and width * height > max_pixels:
        raise CorruptFileError(
            f"{where}: the image is {width} x {height} = {width * height:,} pixels, above "
            f"max_pixels={max_pixels:,}; fix: {fixes.too_large}"
        )


def _undecodable(where: str, err: BaseException, fixes: Fixes) -> CorruptFileError:
    return CorruptFileError(f"{where}: cannot decode the image ({type(err).__name__}: {err}); fix: {fixes.undecodable}")


def _finish(img: Image.Image, spec: DecodeSpec) -> Image.Image:
    """Pillow's own pipeline from the decoded image on: ``convert(mode)``, then ``resize``."""
    mode = spec.pixels.mode
    out = img.convert(mode) if img.mode != mode else img
    h, w = spec.size
    if out.size != (w, h):
        out = out.resize((w, h), spec.resample)
    return out


def _decode_pillow(where: str, f: IO[bytes], spec: DecodeSpec, fixes: Fixes) -> tuple[Image.Image, str]:
    h, w = spec.size
    with Image.open(f) as im:
        _check_pixels(where, *im.size, spec, fixes)  # from the header: Image.open decodes nothing yet
        mode = source_mode(im)  # before load(), which forgets a 16-bit raw mode
        if is_high_depth(mode):
            spec.pixels.check(where, im, mode)  # refused before decoding, unless declared
        if spec.decode == "fast" and im.format == "JPEG":
            im.draft(im.mode, (w, h))  # decode at the smallest 1/8..1 scale still >= the target
        im.load()
        conversion = spec.pixels.check(where, im, mode)
        out = _finish(im, spec)
        out.load()
        return out, conversion  # loaded: usable after the file is closed


def _decode_simple(
    where: str, data: bytes | memoryview, slot: np.ndarray[Any, Any], spec: DecodeSpec, fixes: Fixes
) -> Decoded | None:
    """A JPEG through ``simplejpeg``; ``None`` when it is one Pillow must decode (CMYK, odd header)."""
    header = _jpeg_simple.read_header(data)
    if header is None:
        return None
    height, width, mode = header
    _check_pixels(where, width, height, spec, fixes)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and width * height > 2 * pillow_limit:  # what Image.open would refuse
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {2 * pillow_limit} pixels, "
            "could be decompression bomb DOS attack."
        )
    try:
        conversion = spec.pixels.conversion(mode)  # RGB or L, 8-bit, opaque: refused only by mode="I;16"
    except SchemaError as err:
        raise type(err)(f"{where}: {err}", field="image") from None
    scale = _jpeg_simple.draft_scale(height, width, spec.size) if spec.decode == "fast" else 1
    dh, dw = -(-height // scale), -(-width // scale)
    direct = (dh, dw) == spec.size and mode == spec.pixels.mode and spec.channels_last and slot.flags.c_contiguous
    try:
        arr = _jpeg_simple.decode_jpeg(data, mode, scale=scale, out=slot if direct else None)
    except ValueError:
        return None  # TurboJPEG refuses what libjpeg only warns about (extraneous bytes): Pillow decides
    if direct:
        return Decoded("simplejpeg", 0, conversion)
    img = Image.frombuffer(mode, (arr.shape[1], arr.shape[0]), arr, "raw", mode, 0, 1)  # a view of arr
    return Decoded("simplejpeg", _copy_into(slot, _finish(img, spec), spec), conversion)


def _pillow_view(img: Image.Image) -> np.ndarray[Any, Any] | None:
    """(H, W, bands in memory) view of an image's own memory through its Arrow export; ``None`` if unavailable.

    RGB is held as RGBX (4 bands), L and I;16 as one.
    """
    if not HAS_ARROW:
        return None
    import pyarrow as pa

    try:
        arr = pa.array(img)
        flat = arr.values if isinstance(arr, pa.FixedSizeListArray) else arr
        values = flat.to_numpy(zero_copy_only=True)
    except (ValueError, TypeError, pa.ArrowException):
        return None  # e.g. an image Pillow keeps in several memory blocks
    if img.mode == "I;16":
        values = values.view(np.uint16)
    return values.reshape(img.height, img.width, -1)  # type: ignore[no-any-return]


def _copy_into(slot: np.ndarray[Any, Any], img: Image.Image, spec: DecodeSpec) -> int:
    """Copy a finished image into the slot; return the copies of its pixels made (1, or 2 when packed first)."""
    c = spec.pixels.channels
    if spec.channels_last and img.mode == "RGB":
        np.copyto(slot, np.asarray(img))  # packed RGB bytes: faster than reading RGBX and dropping X
        return 2
    view = _pillow_view(img)
    copies = 1
    if view is None:
        view, copies = np.asarray(img).reshape(img.height, img.width, c), 2
    pixels = view[..., :c]
    np.copyto(slot, pixels if spec.channels_last else pixels.transpose(2, 0, 1))
    return copies


class BufferFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it: encoded bytes read in place."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self.view)}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}, before the start of the image")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        stop = len(self.view) if size is None or size < 0 else min(len(self.view), self._pos + size)
        out = self.view[self._pos : stop].tobytes() if stop > self._pos else b""
        self._pos = max(self._pos, stop)
        return out

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        got = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(got)] = got
        return len(got)


def _decode_from(where: str, f: IO[bytes], slot: np.ndarray[Any, Any], spec: DecodeSpec, fixes: Fixes) -> Decoded:
    """Decode the image ``f`` holds into ``slot``: ``simplejpeg`` for a JPEG it serves, else Pillow."""
    src: IO[bytes] = f
    if spec.decoder == "simplejpeg" and f.read(3) == b"\xff\xd8\xff":
        data: bytes | memoryview = f.view if isinstance(f, BufferFile) else b"\xff\xd8\xff" + f.read()
        done = _decode_simple(where, data, slot, spec, fixes)
        if done is not None:
            return done
        if not isinstance(f, BufferFile):
            src = io.BytesIO(data)  # already read: Pillow takes the bytes
    src.seek(0)
    img, conversion = _decode_pillow(where, src, spec, fixes)
    return Decoded("Pillow", _copy_into(slot, img, spec), conversion)


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, Image.DecompressionBombError)


def decode_into(
    path: str, slot: np.ndarray[Any, Any], spec: DecodeSpec, *, where: str | None = None, fixes: Fixes = FILE_FIXES
) -> Decoded:
    """Decode ``path`` into ``slot`` (one sample of ``spec.shape``); :class:`CorruptFileError` names a bad file.

    A file whose mode the declared pixel format refuses raises that :class:`SchemaError` (naming it).
    ``where`` names the image in messages (default: the path), ``fixes`` the fixes they offer.
    """
    where = repr(path) if where is None else where
    try:
        with _no_bomb_warning(), _open_regular(path) as f:
            return _decode_from(where, f, slot, spec, fixes)
    except (CorruptFileError, SchemaError):
        raise
    except FileNotFoundError:
        raise CorruptFileError(f"{where}: the image file no longer exists") from None
    except _DECODE_ERRORS as err:
        raise _undecodable(where, err, fixes) from None


def decode_bytes_into(data: Any, slot: np.ndarray[Any, Any], spec: DecodeSpec, where: str) -> Decoded:
    """Decode the encoded image ``data`` (any buffer, read in place) into ``slot``, as :func:`decode_into`.

    ``where`` names the image (its field and row) in messages.
    """
    try:
        with _no_bomb_warning():
            return _decode_from(where, cast("IO[bytes]", BufferFile(data)), slot, spec, ROW_FIXES)
    except (CorruptFileError, SchemaError):
        raise
    except _DECODE_ERRORS as err:
        raise _undecodable(where, err, ROW_FIXES) from None


def record_decode(name: str, done: list[Decoded], spec: DecodeSpec, sample_bytes: int, origin: str = "") -> None:
    """A batch's decode ledger row for field ``name``, naming the decoders and each conversion of a mode."""
    if not done:
        return
    most = max(d.copies for d in done)
    if most == 0:
        how = "decoded straight into the batch slot"
    elif most == 1:
        how = "one copy into the batch slot"
    else:
        how = f"Pillow packs {'RGB' if spec.pixels.mode == 'RGB' else 'the pixels'}, then one copy into the slot"
    decoders = " + ".join(sorted({d.decoder for d in done}))
    conversions = "; ".join(sorted({d.conversion for d in done} - {"none"}))
    mode = spec.pixels.mode + (f" ({conversions})" if conversions else "")
    why = f"decode ({spec.decode}): {decoders} decode, {mode}, {spec.resample.name.lower()} resize, {how}"
    record(DECODE, name, why + (f" ({origin})" if origin else ""), copied=sum(d.copies for d in done) * sample_bytes)
