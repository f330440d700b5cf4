"""One sample's values as what a column stores: a NumPy array (tensors, PIL images, numbers) or a ``str``.

Conversion never changes a dtype: a ``uint8`` PIL image stays ``uint8`` (H, W, C), a Python
``int`` is ``int64`` and a ``float`` ``float64`` (as ``default_collate`` batches them). A Python
list has no dtype of its own, so it is refused unless the schema declares one.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from zcopy_data._dtypes import numpy_dtype
from zcopy_data.errors import SchemaError, describe
from zcopy_data.writer._layout import Column

__all__ = ["to_value"]


def _pil_image_type() -> type | None:
    module = sys.modules.get("PIL.Image")  # a sample cannot be a PIL image unless Pillow is imported
    return None if module is None else module.Image


def to_value(value: Any, name: str, index: int, column: Column | None) -> np.ndarray[Any, Any] | str:
    """``value`` as an array or ``str``; ``column`` (when frozen) gives a Python list its dtype."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return _tensor(value, name, index)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, bool):
        return np.asarray(value, dtype=np.bool_)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int64)
    if isinstance(value, float):
        return np.asarray(value, dtype=np.float64)
    pil = _pil_image_type()
    if pil is not None and isinstance(value, pil):
        return np.asarray(value)  # (H, W) or (H, W, C), the image's own dtype (uint8 for RGB / L)
    if isinstance(value, (list, tuple)) and column is not None and column.dtype is not None:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or not np.array_equal(arr.astype(column.dtype), arr):
            raise SchemaError(
                f"{describe(name, index)}: a list that is not exactly representable as {column.describe()}; "
                "store the field as a NumPy array of that dtype",
                field=name,
                index=index,
            )
        return arr.astype(column.dtype)
    what = "a list (no dtype of its own)" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"
    raise SchemaError(
        f"{describe(name, index)}: cannot write {what}; fields must be NumPy arrays, tensors, numbers, PIL images "
        "or str; convert it (np.asarray(v, dtype=...)) or declare its dtype with schema=",
        field=name,
        index=index,
    )


def _tensor(t: torch.Tensor, name: str, index: int) -> np.ndarray[Any, Any]:
    try:
        numpy_dtype(t.dtype)
    except TypeError:
        raise SchemaError(
            f"{describe(name, index)}: {t.dtype} has no NumPy or Arrow type; store it as float32, or "
            "t.view(torch.int16) and view it back after loading",
            field=name,
            index=index,
        ) from None
    return t.detach().cpu().resolve_conj().resolve_neg().numpy()
