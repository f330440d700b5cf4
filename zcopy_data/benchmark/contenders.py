"""The loaders under test, each built the way its users build it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from zcopy_data.collate import zero_copy_collate
from zcopy_data.datasets import NumpyDataset

__all__ = ["CONTENDERS", "PerSampleNpy", "build_loader"]


class PerSampleNpy(Dataset[dict[str, Any]]):
    """The default path: one ``__getitem__`` per sample over memory-mapped ``.npy`` files."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.arrays = {k: np.load(p, mmap_mode="c") for k, p in paths.items()}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: a[i] for k, a in self.arrays.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"])  # type: ignore[misc]


def _sampler(n: int, order: str, seed: int) -> Any:
    if order == "seq":
        return SequentialSampler(range(n))
    if order == "shuffle":
        return RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"{order=} should be 'seq' or 'shuffle'")


def _default(paths: dict[str, Path], order: str, batch_size: int, workers: int, seed: int) -> DataLoader[Any]:
    ds = PerSampleNpy(paths)
    return DataLoader(ds, batch_size=batch_size, sampler=_sampler(len(ds), order, seed), num_workers=workers)


def _zcopy(paths: dict[str, Path], order: str, batch_size: int, workers: int, seed: int) -> DataLoader[Any]:
    ds = NumpyDataset({k: str(p) for k, p in paths.items()})
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=_sampler(len(ds), order, seed),
        num_workers=workers,
        collate_fn=zero_copy_collate,
    )


CONTENDERS: dict[str, Callable[..., DataLoader[Any]]] = {"default": _default, "zcopy": _zcopy}


def build_loader(
    name: str, paths: dict[str, Path], order: str, batch_size: int, workers: int, seed: int = 0
) -> DataLoader[Any]:
    return CONTENDERS[name](paths, order, batch_size, workers, seed)
