"""Shared fixtures: real files in a temporary folder, and the ``cuda`` marker's skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def npy_files(tmp_path: Path) -> dict[str, Path]:
    """100 uint8 (3, 4, 4) images and int64 labels written by ``np.save``."""
    rng = np.random.default_rng(0)
    paths = {"image": tmp_path / "images.npy", "label": tmp_path / "labels.npy"}
    np.save(paths["image"], rng.integers(0, 256, size=(100, 3, 4, 4), dtype=np.uint8))
    np.save(paths["label"], np.arange(100, dtype=np.int64))
    return paths


@pytest.fixture
def tokens() -> np.ndarray:
    """5,000 random token ids, as nanoGPT's ``uint16`` files hold them."""
    return np.random.default_rng(0).integers(0, 50257, 5000, dtype=np.uint16)


@pytest.fixture
def bin_file(tmp_path: Path, tokens: np.ndarray) -> Path:
    path = tmp_path / "train.bin"
    tokens.tofile(path)  # as nanoGPT's prepare.py writes it
    return path
