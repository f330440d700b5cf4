"""Synthetic benchmark data: uint8 images and int64 labels in ``.npy`` files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["default_cache_dir", "make_synthetic"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZCOPY_DATA_CACHE", Path(tempfile.gettempdir()) / "zcopy-data-bench"))


def make_synthetic(
    n: int = 60_000, shape: tuple[int, ...] = (3, 64, 64), *, folder: Path | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write (once) ``images.npy`` (n, *shape) uint8 and ``labels.npy`` (n,) int64; return their paths."""
    folder = Path(folder or default_cache_dir()) / f"n{n}_{'x'.join(map(str, shape))}_s{seed}"
    paths = {"image": folder / "images.npy", "label": folder / "labels.npy"}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(folder / "images.tmp.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
    chunk = max(1, 4096)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        images[start:stop] = rng.integers(0, 256, size=(stop - start, *shape), dtype=np.uint8)
    images.flush()
    del images
    np.save(folder / "labels.tmp.npy", rng.integers(0, 1000, size=n, dtype=np.int64))
    os.replace(folder / "images.tmp.npy", paths["image"])
    os.replace(folder / "labels.tmp.npy", paths["label"])
    return paths
