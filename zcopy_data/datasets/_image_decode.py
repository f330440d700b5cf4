"""Decode one image with Pillow and write its pixels into a batch slot: the one copy physics leaves.

JPEGs larger than the target are decoded at a reduced scale (draft mode: the decoder skips the
detail the resize would throw away), every mode becomes RGB, the image is resized to the fixed
size, and the pixels are copied once into the caller's slot of the batch buffer. For channels-first
slots the pixels are read through Pillow's Arrow export, a view of Pillow's own memory, so the
copy into the slot is the only one; channels-last slots take Pillow's packed RGB bytes.

Only regular files are read (a FIFO put where an image was would block its reader forever), and an
image whose header declares more pixels than ``max_pixels`` is refused before anything is decoded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
from PIL import Image

from zcopy_data.datasets._image_files import not_regular
from zcopy_data.errors import CorruptFileError

__all__ = ["HAS_ARROW", "check_max_pixels", "decode_into", "open_rgb"]

# Pillow >= 11.2 exports its pixel memory through the Arrow C data interface.
HAS_ARROW = importlib.util.find_spec("pyarrow") is not None and hasattr(Image.Image, "__arrow_c_array__")


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


def open_rgb(path: str, size: tuple[int, int], resample: Any, max_pixels: int | None = None) -> Image.Image:
    """``path`` decoded, as RGB, resized to ``size`` = (H, W); :class:`CorruptFileError` names a bad file.

    An image declaring more than ``max_pixels`` pixels is refused from its header, before decoding.
    """
    h, w = size
    try:
        with _no_bomb_warning(), _open_regular(path) as f, Image.open(f) as im:
            width, height = im.size  # from the header: Image.open decodes nothing yet
            if max_pixels is not None and width * height > max_pixels:
                raise CorruptFileError(
                    f"{path!r}: the image is {width} x {height} = {width * height:,} pixels, above "
                    f"max_pixels={max_pixels:,}; fix: downscale the file, or pass a higher max_pixels= "
                    "(None: no limit), or on_error='skip' to leave such files out (each one is reported)"
                )
            if im.format == "JPEG":
                im.draft("RGB", (w, h))  # decode at the smallest 1/8..1 scale still >= the target
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            rgb.load()
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), resample)
            return rgb  # loaded: usable after the file is closed
    except CorruptFileError:
        raise
    except FileNotFoundError:
        raise CorruptFileError(f"{path!r}: the image file no longer exists") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, Image.DecompressionBombError) as err:
        raise CorruptFileError(
            f"{path!r}: cannot decode the image ({type(err).__name__}: {err}); fix: re-encode or remove the file, "
            "or pass on_error='skip' to leave unreadable files out (each one is reported)"
        ) from None


def _pillow_view(img: Image.Image) -> np.ndarray[Any, Any] | None:
    """(H, W, 4) view of an RGB image's own memory through its Arrow export; ``None`` if unavailable."""
    if not HAS_ARROW:
        return None
    import pyarrow as pa

    try:
        values = pa.array(img).values
    except (ValueError, TypeError, pa.ArrowException):
        return None  # e.g. an image Pillow keeps in several memory blocks
    return values.to_numpy(zero_copy_only=True).reshape(img.height, img.width, 4)  # type: ignore[no-any-return]


def decode_into(
    path: str,
    slot: np.ndarray[Any, Any],
    size: tuple[int, int],
    *,
    channels_last: bool,
    resample: Any,
    max_pixels: int | None = None,
) -> int:
    """Decode ``path`` into ``slot`` ((3, H, W) or (H, W, 3) uint8); return the copies of the pixels made (1 or 2)."""
    img = open_rgb(path, size, resample, max_pixels)
    if not channels_last:
        view = _pillow_view(img)
        if view is not None:
            np.copyto(slot, view[..., :3].transpose(2, 0, 1))
            return 1
        np.copyto(slot, np.asarray(img).transpose(2, 0, 1))
        return 2
    np.copyto(slot, np.asarray(img))  # packed RGB bytes: faster than reading RGBX and dropping X
    return 2
