"""The host -> device stage: bad cast maps fail before the first batch; prefetched batches stay intact."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Sampler

from zcopy_data import DtypeDriftError, NumpyDataset, SchemaError, zero_copy_collate
from zcopy_data.transfer import DevicePrefetcher

pytestmark = pytest.mark.reliability


class _Watched(Sampler[int]):
    """A sampler that records whether anyone started iterating it."""

    def __init__(self, n: int) -> None:
        self.n, self.started = n, False

    def __iter__(self) -> Iterator[int]:
        self.started = True
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def _dataset(n: int = 96) -> NumpyDataset:
    rng = np.random.default_rng(5)
    return NumpyDataset({"image": rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8), "label": np.arange(n)})


@pytest.mark.parametrize(
    ("cast", "error", "message"),
    [
        ({"nope": torch.float16}, SchemaError, "field 'nope': the cast map names it, the data has no such field"),
        ({"image": torch.bool}, DtypeDriftError, "field 'image': cannot cast uint8 to bool"),
        ({"image": {"dtype": torch.float16, "std": 0}}, SchemaError, "field 'image': cast std: expected non-zero"),
    ],
    ids=["unknown-field", "lossy-bool", "zero-std"],
)
def test_a_bad_cast_map_is_refused_before_the_first_batch(cast: Any, error: type, message: str) -> None:
    sampler = _Watched(96)
    loader = DataLoader(_dataset(), batch_size=8, sampler=sampler, collate_fn=zero_copy_collate)
    with pytest.raises(error, match=message):
        DevicePrefetcher(loader, "cpu", cast=cast)
    assert not sampler.started, "a batch was loaded before the configuration was checked"


def _digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(batch):
        h.update(batch[name].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_epochs(device: str, workers: int, epochs: int) -> None:
    ds = _dataset()
    src = ds.columns()["image"].copy()
    loader = DataLoader(
        ds, batch_size=8, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
        collate_fn=zero_copy_collate, timeout=60 if workers else 0,
    )  # fmt: skip
    prefetcher = DevicePrefetcher(loader, device, depth=2, cast={"image": torch.float16})
    held = []
    for _ in range(epochs):
        seen = []
        for batch in prefetcher:
            idx = batch["label"].cpu().numpy()
            assert batch["image"].dtype == torch.float16
            assert batch["image"].device.type == torch.device(device).type
            assert np.array_equal(batch["image"].cpu().numpy(), src[idx].astype(np.float16))
            seen += idx.tolist()
            held.append((batch, _digest(batch)))
        assert sorted(seen) == list(range(len(ds)))
    for batch, digest in held:
        assert _digest(batch) == digest, "a batch the user still holds changed"


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_cast_batches_are_intact_and_stay_intact_on_cpu(workers: int) -> None:
    _check_epochs("cpu", workers, epochs=3)


@pytest.mark.cuda
@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_cast_batches_are_intact_and_stay_intact_on_cuda(workers: int) -> None:
    _check_epochs("cuda", workers, epochs=5)
