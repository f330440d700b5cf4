"""The loaders under test, each built the way its users build it, over the same index order.

Every contender gets the same batch sampler (same order, same seed), so all of them read the
same samples in the same sequence; only how a batch is assembled differs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from zcopy_bench.data import DataSource
from zcopy_data import NumpyDataset, ZeroCopyDataLoader, zero_copy_collate

__all__ = [
    "CONTENDERS",
    "ORDERS",
    "Contender",
    "PerSampleNpy",
    "available",
    "build_loader",
    "make_batch_sampler",
]

ORDERS = ("seq", "shuffle", "block")
"""``seq``: 0, 1, 2, ...; ``shuffle``: a random permutation; ``block``: contiguous batches in shuffled order."""


def make_batch_sampler(n: int, order: str, batch_size: int, seed: int = 0) -> Iterable[list[int]]:
    """The batches of indices every contender reads, for one order; re-iterating gives the next epoch."""
    if order == "seq":
        return BatchSampler(SequentialSampler(range(n)), batch_size, drop_last=False)
    if order == "shuffle":
        sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
        return BatchSampler(sampler, batch_size, drop_last=False)
    if order == "block":
        from zcopy_data import BlockShuffleSampler

        return BlockShuffleSampler(n, batch_size, shuffle=True, seed=seed)
    raise ValueError(f"{order=} should be one of {', '.join(ORDERS)}")


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


def _loader_kw(workers: int) -> dict[str, Any]:
    # Persistent workers for every contender alike: worker start-up is not what is compared.
    return {"num_workers": workers, "persistent_workers": workers > 0}


def _default(src: DataSource, batches: Iterable[list[int]], workers: int, cache: Path) -> Iterable[Any]:  # noqa: ARG001
    return DataLoader(PerSampleNpy(src.paths), batch_sampler=batches, **_loader_kw(workers))


def _zcopy(src: DataSource, batches: Iterable[list[int]], workers: int, cache: Path) -> Iterable[Any]:  # noqa: ARG001
    ds = NumpyDataset({k: str(p) for k, p in src.paths.items()})
    # workers: gather threads (ZeroCopyDataLoader's "auto" for columnar datasets)
    return ZeroCopyDataLoader(ds, batch_sampler=batches, **_loader_kw(workers))


def _plain(src: DataSource, batches: Iterable[list[int]], workers: int, cache: Path) -> Iterable[Any]:  # noqa: ARG001
    """The headline usage: a plain ``DataLoader`` with ``collate_fn=zero_copy_collate``.

    With no workers it runs in the loop's own process; with workers they are processes.
    """
    ds = NumpyDataset({k: str(p) for k, p in src.paths.items()})
    return DataLoader(ds, batch_sampler=batches, collate_fn=zero_copy_collate, **_loader_kw(workers))


Copies = tuple[float | None, str]


@dataclass(frozen=True)
class Contender:
    """One way of loading batches.

    Attributes:
        name: short id (``--contenders``, JSON ``rows[].contender``).
        title: what it is, for the table's legend.
        build: ``(source, batch_sampler, workers, cache_dir) -> iterable of batches``.
        copies: ``(order, workers) -> (copies of the batch's bytes per batch, how that was counted)``;
            ``None`` means "read it from the copy ledger in the measuring process".
        requires: the module it needs; the contender is skipped when it does not import.
        pip: what to install to enable it.
        prepare: one-off conversion of the source into the contender's own format (cached).
        min_workers: the contender is measured only at this many workers or more.
    """

    name: str
    title: str
    build: Callable[[DataSource, Iterable[list[int]], int, Path], Iterable[Any]]
    copies: Callable[[str, int], Copies] | None = None
    requires: str | None = None
    pip: str | None = None
    prepare: Callable[[DataSource, Path], None] | None = None
    min_workers: int = 0


def _default_copies(order: str, workers: int) -> Copies:  # noqa: ARG001
    return (
        1.0,
        "counted: per-sample items are views of the mapping (torch.as_tensor shares them); "
        "default_collate stacks them with 1 copy (into shared memory inside a worker, so arrays "
        "cross as a handle; per-sample NumPy scalars are copied once more when pickled)",
    )


def _peer_contenders() -> list[Contender]:
    from zcopy_bench import peers

    return [
        Contender(
            name="tensordict",
            title="tensordict MemoryMappedTensor (TensorDict.memmap, td[idx])",
            build=peers.build_tensordict,
            copies=peers.tensordict_copies,
            requires="tensordict",
            pip="tensordict>=0.15",
            prepare=peers.prepare_tensordict,
        ),
        Contender(
            name="hf",
            title='Hugging Face datasets (save_to_disk, with_format("torch"))',
            build=peers.build_hf,
            copies=peers.hf_copies,
            requires="datasets",
            pip="datasets>=3",
            prepare=peers.prepare_hf,
        ),
    ]


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in [
        Contender("default", "default DataLoader (per-sample __getitem__, default_collate)", _default, _default_copies),
        Contender("zcopy", "zcopy_data (NumpyDataset, ZeroCopyDataLoader: workers are gather threads)", _zcopy, None),
        Contender(
            "plain",
            "zcopy_data on a plain DataLoader (NumpyDataset, collate_fn=zero_copy_collate; workers are processes)",
            _plain,
            None,
        ),
        *_peer_contenders(),
    ]
}


def available(name: str) -> tuple[bool, str]:
    """Whether a contender can run here, and if not, the install hint."""
    c = CONTENDERS[name]
    if c.requires is None or importlib.util.find_spec(c.requires) is not None:
        return True, ""
    return False, f"{c.requires} is not installed; pip install '{c.pip}' to add the {name!r} row"


def build_loader(
    name: str, src: DataSource, order: str, batch_size: int, workers: int, *, seed: int = 0, cache: Path
) -> Iterable[Any]:
    """The contender's loader over ``src`` in ``order``; the batch sampler is shared by construction."""
    return CONTENDERS[name].build(src, make_batch_sampler(src.n, order, batch_size, seed), workers, cache)


def batch_len(batch: Any) -> int:
    """Samples in a batch of any contender (a dict of tensors, a TensorDict, a tuple)."""
    size = getattr(batch, "batch_size", None)
    if isinstance(size, torch.Size) and len(size):
        return int(size[0])
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(first) if isinstance(first, Sized) else int(first.shape[0])
