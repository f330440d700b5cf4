"""Decode one image with Pillow and write its pixels into a batch slot: the one copy physics leaves.

JPEGs larger than the target are decoded at a reduced scale (draft mode: the decoder skips the
detail the resize would throw away), every mode becomes RGB, the image is resized to the fixed
size, and the pixels are copied once into the caller's slot of the batch buffer. For channels-first
slots the pixels are read through Pillow's Arrow export, a view of Pillow's own memory, so the
copy into the slot is the only one; channels-last slots take Pillow's packed RGB bytes.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from PIL import Image

from zcopy_data.datasets._errors import CorruptFileError

__all__ = ["HAS_ARROW", "decode_into", "open_rgb"]

# Pillow >= 11.2 exports its pixel memory through the Arrow C data interface.
HAS_ARROW = importlib.util.find_spec("pyarrow") is not None and hasattr(Image.Image, "__arrow_c_array__")


def open_rgb(path: str, size: tuple[int, int], resample: Any) -> Image.Image:
    """``path`` decoded, as RGB, resized to ``size`` = (H, W); :class:`CorruptFileError` names a bad file."""
    h, w = size
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (w, h))  # decode at the smallest 1/8..1 scale still >= the target
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            rgb.load()
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), resample)
            return rgb  # loaded: usable after the file is closed
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
    path: str, slot: np.ndarray[Any, Any], size: tuple[int, int], *, channels_last: bool, resample: Any
) -> int:
    """Decode ``path`` into ``slot`` ((3, H, W) or (H, W, 3) uint8); return the copies of the pixels made (1 or 2)."""
    img = open_rgb(path, size, resample)
    if not channels_last:
        view = _pillow_view(img)
        if view is not None:
            np.copyto(slot, view[..., :3].transpose(2, 0, 1))
            return 1
        np.copyto(slot, np.asarray(img).transpose(2, 0, 1))
        return 2
    np.copyto(slot, np.asarray(img))  # packed RGB bytes: faster than reading RGBX and dropping X
    return 2
