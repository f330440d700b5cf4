"""A Hugging Face ``datasets.Dataset`` as column batches, each column in the dtype its feature declares.

HF's ``numpy`` and ``torch`` formats widen small integer arrays to ``int64``; reading rows in
Python format and converting each column with its feature's own dtype keeps ``uint8`` ``uint8``.
Images (``Image()`` features) are decoded once, here, so loading the shards is zero-copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zcopy_data.errors import SchemaError, describe

__all__ = ["hf_columns", "is_hf_dataset"]


def is_hf_dataset(source: Any) -> bool:
    """True for a ``datasets.Dataset`` (map-style, with ``features``), without importing ``datasets``."""
    module = type(source).__module__
    return module.startswith("datasets.") and hasattr(source, "features") and hasattr(source, "__len__")


def _feature_dtype(name: str, feature: Any) -> np.dtype[Any] | None:
    """The NumPy dtype a feature stores (``None`` for strings and images, converted apart)."""
    kind = type(feature).__name__
    dtype = getattr(feature, "dtype", None)
    if kind == "Value" and dtype in ("string", "large_string"):
        return None
    if kind in ("Value", "ClassLabel", "Array2D", "Array3D", "Array4D", "Array5D") and isinstance(dtype, str):
        return np.dtype(dtype)
    if kind == "Image":
        return None
    raise SchemaError(
        f"field {name!r}: the Hugging Face feature {feature!r} has no fixed-shape tensor or string column; "
        "map it to a Value, ArrayND, ClassLabel or Image feature (datasets.Dataset.cast_column), or remove it "
        "(remove_columns)",
        field=name,
    )


def hf_columns(source: Any, lo: int, hi: int) -> dict[str, np.ndarray[Any, Any] | list[str]]:
    """Rows ``lo:hi`` of ``source`` as columns: arrays (sample axis first) or lists of ``str``."""
    rows = source[lo:hi]  # Python format: lists per column, images as PIL
    out: dict[str, np.ndarray[Any, Any] | list[str]] = {}
    for name, feature in source.features.items():
        values = rows[name]
        dtype = _feature_dtype(name, feature)
        if type(feature).__name__ == "Image":
            arrays = [np.asarray(img) for img in values]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                odd = next(i for i, a in enumerate(arrays) if a.shape != arrays[0].shape)
                raise SchemaError(
                    f"{describe(name, lo + odd)}: image of shape {arrays[odd].shape}, earlier ones "
                    f"{arrays[0].shape}; resize every image to one size first (dataset.map with PIL resize)",
                    field=name,
                    index=lo + odd,
                )
            out[name] = np.stack(arrays) if arrays else np.empty((0,), np.uint8)
            continue
        bad = next((i for i, v in enumerate(values) if v is None), None)
        if bad is not None:
            raise SchemaError(
                f"{describe(name, lo + bad)}: a null; a shard column has no nulls; fill it first (dataset.map)",
                field=name,
                index=lo + bad,
            )
        out[name] = list(values) if dtype is None else np.asarray(values, dtype=dtype)
    return out
