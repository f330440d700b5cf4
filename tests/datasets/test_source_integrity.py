"""Integrity of the file-backed sources over epochs: Arrow (views and gathers across record batches) and
image folders; in-place ops on their batches never crash and never reach the files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.support import consume, run_isolated
from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset, ImageFolderDataset
from zcopy_data.samplers import BlockShuffleSampler

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]
N = 157


def _digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(batch):
        h.update(batch[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def arrow_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(11)
    ref = {
        "x": rng.standard_normal((N, 3)).astype(np.float32),
        "i": np.arange(N, dtype=np.int64),
        "u": rng.integers(0, 2**16, N, dtype=np.uint16),
    }
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(ref["x"].ravel()), 3),
            "i": pa.array(ref["i"]),
            "u": pa.array(ref["u"]),
        }
    )
    path = tmp_path / "t.arrow"
    with pa.ipc.new_file(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=23):  # 7 record batches of uneven fill
            writer.write_batch(batch)
    return path, ref


def _loaders(ds: Any, workers: int) -> dict[str, tuple[DataLoader[Any], Any]]:
    common: dict[str, Any] = {"num_workers": workers, "collate_fn": zero_copy_collate, "timeout": 60 if workers else 0}
    block = BlockShuffleSampler(ds, 10, seed=1)
    return {
        "sequential": (DataLoader(ds, batch_size=10, **common), None),
        "shuffle": (DataLoader(ds, batch_size=10, shuffle=True, **common), None),
        "block": (DataLoader(ds, batch_sampler=block, **common), block),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_arrow_epochs_deliver_every_row_once_intact_and_held_batches_never_change(
    arrow_file: tuple[Path, dict[str, np.ndarray[Any, Any]]], workers: int
) -> None:
    path, ref = arrow_file
    ds = ArrowDataset(path)
    held = []
    for epoch in range(3):
        for name, (loader, sampler) in _loaders(ds, workers).items():
            if sampler is not None:
                sampler.set_epoch(epoch)
            batches = consume(loader)
            seen = np.concatenate([b["i"].numpy() for b in batches])
            assert sorted(seen.tolist()) == list(range(N)), f"{name}: a row lost or repeated"
            for b in batches:
                idx = b["i"].numpy()
                assert np.array_equal(b["x"].numpy(), ref["x"][idx]), name
                assert np.array_equal(b["u"].numpy(), ref["u"][idx]), name
                held.append((b, _digest(b)))
    for b, digest in held:
        assert _digest(b) == digest, "a held batch changed"


ARROW_IN_PLACE = """
import hashlib, sys
import numpy as np
import torch
from torch.utils.data import DataLoader
from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset

path, workers = sys.argv[1], int(sys.argv[2])
before = hashlib.sha256(open(path, "rb").read()).hexdigest()
ds = ArrowDataset(path)
for shuffle in (False, True):
    loader = DataLoader(ds, batch_size=10, shuffle=shuffle, num_workers=workers, collate_fn=zero_copy_collate,
                        timeout=60 if workers else 0)
    for batch in loader:
        for t in batch.values():
            if t.dtype != torch.uint16:  # torch has no add/mul kernels for uint16
                t.add_(1).mul_(3)
            t.zero_()
assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before, "the Arrow file changed"
import pyarrow as pa
on_disk = pa.ipc.open_file(pa.memory_map(path)).read_all()  # a separate, shared mapping of the file
assert on_disk.column("i").to_pylist() == list(range(on_disk.num_rows))
# documented: writes through view batches stay in this process's copy-on-write mapping of the file,
# which every ArrowDataset over that file in this process shares
fresh = ArrowDataset(path)
print("ok", zero_copy_collate(fresh.__getitems__([5]))["i"].tolist())
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_in_place_ops_on_arrow_batches_never_crash_nor_write_the_file(
    arrow_file: tuple[Path, dict[str, np.ndarray[Any, Any]]], workers: int
) -> None:
    path, _ = arrow_file
    proc = run_isolated(ARROW_IN_PLACE, str(path), str(workers))
    assert proc.returncode == 0, f"rc={proc.returncode}: {proc.stderr[-1000:]}"
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize("workers", [0, 2])
def test_image_epochs_are_exact_and_in_place_ops_never_touch_the_files(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(12)
    root = tmp_path / "img"
    pixels = {}
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(9):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            path = root / cls / f"{k}.png"  # lossless, and already the declared size: exact pixels
            Image.fromarray(arr).save(path)
            pixels[str(path)] = arr.transpose(2, 0, 1)
    digests = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in pixels}
    ds = ImageFolderDataset(root, size=(12, 12))
    held = []
    for epoch in range(2):
        for name, (loader, sampler) in _loaders(ds, workers).items():
            if sampler is not None:
                sampler.set_epoch(epoch)
            batches = consume(loader)
            got = {}
            for b in batches:
                for image, label in zip(b["image"].numpy(), b["label"].tolist(), strict=True):
                    matches = [p for p, px in pixels.items() if np.array_equal(px, image)]
                    assert len(matches) == 1, f"{name}: an image that is in no file"
                    assert label == (0 if "/a/" in matches[0] else 1)
                    got[matches[0]] = got.get(matches[0], 0) + 1
                held.append((b, _digest(b)))
            assert got == dict.fromkeys(pixels, 1), f"{name}: an image lost or repeated"
    for b, digest in held:
        assert _digest(b) == digest, "a held batch changed"
    for loader, _ in _loaders(ds, workers).values():
        for b in consume(loader):
            b["image"].add_(7).mul_(3)
            b["label"].zero_()
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in pixels} == digests
