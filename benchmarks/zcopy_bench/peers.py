"""Peers, each used the way its documentation shows: tensordict memory-mapped tensors and
Hugging Face ``datasets``. Both need the data in their own on-disk format first; that
conversion is done once per source, cached, and never timed.

Imports are local: a peer that is not installed only loses its row.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from zcopy_bench.data import DataSource

__all__ = ["build_hf", "build_tensordict", "hf_copies", "prepare_hf", "prepare_tensordict", "tensordict_copies"]

_CHUNK = 4096


def _cache_dir(src: DataSource, cache: Path, peer: str) -> Path:
    return Path(cache) / "peers" / f"{peer}-{src.key}"


def _convert_once(target: Path, write: Any) -> None:
    """Run ``write(tmp_folder)`` unless ``target`` exists, then move the result into place."""
    if target.exists():
        return
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _identity(batch: Any) -> Any:
    return batch


# -- tensordict ---------------------------------------------------------------------------------
def prepare_tensordict(src: DataSource, cache: Path) -> None:
    """``TensorDict.memmap(prefix)``: one raw memory-mapped file per field."""
    from tensordict import TensorDict

    def write(folder: Path) -> None:
        arrays = {k: torch.from_numpy(np.load(p, mmap_mode="c")) for k, p in src.paths.items()}
        TensorDict(arrays, batch_size=[src.n]).memmap(folder, num_threads=1)

    _convert_once(_cache_dir(src, cache, "tensordict"), write)


def build_tensordict(src: DataSource, batches: Iterable[list[int]], workers: int, cache: Path) -> Iterable[Any]:
    """``DataLoader(td, batch_sampler=..., collate_fn=identity)``: ``td[indices]`` per batch."""
    from tensordict import TensorDict

    td = TensorDict.load_memmap(_cache_dir(src, cache, "tensordict"))
    return DataLoader(
        td,
        batch_sampler=batches,
        collate_fn=_identity,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def tensordict_copies(order: str, workers: int) -> tuple[float, str]:  # noqa: ARG001
    extra = " + 1 when a worker's batch is pickled into shared memory" if workers else ""
    return (1.0 + (workers > 0), f"counted: td[indices] gathers every field (1){extra}")


# -- Hugging Face datasets ----------------------------------------------------------------------
def _hf_features(src: DataSource) -> Any:
    import datasets

    arrays = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    feats: dict[str, Any] = {}
    for name, (dtype, shape) in src.fields.items():
        if not shape:
            feats[name] = datasets.Value(dtype)
        elif len(shape) == 1:
            feats[name] = datasets.Sequence(datasets.Value(dtype), length=shape[0])
        elif len(shape) in arrays:
            feats[name] = arrays[len(shape)](shape=shape, dtype=dtype)
        else:
            raise ValueError(f"field {name!r}: {len(shape)}-d samples have no Hugging Face datasets feature")
    return datasets.Features(feats)


def prepare_hf(src: DataSource, cache: Path) -> None:
    """``Dataset.from_dict(..., features)`` in chunks, then ``save_to_disk`` (Arrow, memory-mapped on load)."""
    import datasets

    def write(folder: Path) -> None:
        datasets.disable_progress_bars()
        feats = _hf_features(src)
        arrays = {k: np.load(p, mmap_mode="r") for k, p in src.paths.items()}
        parts = [
            datasets.Dataset.from_dict({k: a[s : s + _CHUNK] for k, a in arrays.items()}, features=feats)
            for s in range(0, src.n, _CHUNK)
        ]
        datasets.concatenate_datasets(parts).save_to_disk(str(folder))

    _convert_once(_cache_dir(src, cache, "hf"), write)


def build_hf(src: DataSource, batches: Iterable[list[int]], workers: int, cache: Path) -> Iterable[Any]:
    """``DataLoader(load_from_disk(...).with_format("torch"), batch_sampler=...)``, default collate."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_from_disk(str(_cache_dir(src, cache, "hf"))).with_format("torch")
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0)


def hf_copies(order: str, workers: int) -> tuple[float, str]:  # noqa: ARG001
    return (
        3.0,
        "counted (at least): Arrow take of the rows (1), torch.tensor widening integers to int64 (1, 8x the "
        "bytes for uint8), default_collate stacking the per-sample rows (1)",
    )
