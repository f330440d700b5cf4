"""Small real ``.npy`` data sets for the benchmark's tests (written by ``np.save`` in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def npy_folder(tmp_path: Path) -> Path:
    """600 uint8 (3, 8, 8) images and int64 labels: one .npy file per field."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    np.save(folder / "image.npy", rng.integers(0, 256, size=(600, 3, 8, 8), dtype=np.uint8))
    np.save(folder / "label.npy", np.arange(600, dtype=np.int64))
    return folder
