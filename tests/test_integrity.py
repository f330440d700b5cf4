"""Integrity over many epochs: nothing lost, nothing duplicated, nothing corrupted, nothing overwritten.

Real ``.npy`` files, real workers. Every epoch must visit each index exactly once, every batch must
match the source byte for byte, batches the user still holds must not change when later batches
arrive, and in-place ops on batches must never reach the files on disk.
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support import consume
from zcopy_data import NumpyDataset, zero_copy_collate

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

N = 203  # not a multiple of any batch size used below


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(8)
    paths = {"image": tmp_path / "image.npy", "label": tmp_path / "label.npy", "weight": tmp_path / "weight.npy"}
    np.save(paths["image"], rng.integers(0, 256, size=(N, 3, 8, 8), dtype=np.uint8))
    np.save(paths["label"], np.arange(N, dtype=np.int64))  # the label is the index: batches say who they hold
    np.save(paths["weight"], rng.standard_normal((N, 5)).astype(np.float32))
    return paths


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _batch_digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(batch):
        h.update(name.encode())
        h.update(batch[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def _reference(files: dict[str, Path]) -> dict[str, np.ndarray[Any, Any]]:
    """The source, read into private memory (no mapping shared with the loader)."""
    return {name: np.load(path, mmap_mode=None) for name, path in files.items()}


def _check_epoch(
    batches: list[dict[str, torch.Tensor]], ref: dict[str, np.ndarray[Any, Any]], drop_last: bool, bs: int
) -> None:
    seen = np.concatenate([b["label"].numpy() for b in batches])
    expected = (N // bs) * bs if drop_last else N
    assert len(seen) == expected
    assert len(np.unique(seen)) == len(seen), "an index was delivered twice in one epoch"
    if not drop_last:
        assert np.array_equal(np.sort(seen), np.arange(N)), "an index was lost"
    for b in batches:
        idx = b["label"].numpy()
        for name in ("image", "weight"):
            assert np.array_equal(b[name].numpy(), ref[name][idx]), f"{name} of {idx[:4]}... differs from the file"


@pytest.mark.parametrize("copy", [False, True], ids=["views", "copy"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["sequential", "shuffle"])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_index_once_per_epoch_and_held_batches_never_change(
    files: dict[str, Path], workers: int, shuffle: bool, copy: bool
) -> None:
    ref = _reference(files)
    ds = NumpyDataset({k: str(v) for k, v in files.items()}, copy=copy)
    bs, drop_last = 16, shuffle  # drop_last with shuffle: a different tail is dropped every epoch
    loader = DataLoader(
        ds,
        batch_size=bs,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=zero_copy_collate,
        generator=torch.Generator().manual_seed(3),
        timeout=60 if workers else 0,
    )
    held: list[tuple[dict[str, torch.Tensor], str]] = []
    orders = []
    for _ in range(6):
        batches = consume(loader) if workers == 0 else list(loader)
        _check_epoch(batches, ref, drop_last, bs)
        orders.append(np.concatenate([b["label"].numpy() for b in batches]))
        held += [(b, _batch_digest(b)) for b in batches]
    for batch, digest in held:  # every batch of every epoch, still referenced: unchanged
        assert _batch_digest(batch) == digest
    if shuffle:
        assert not all(np.array_equal(orders[0], o) for o in orders[1:]), "shuffle gave the same order every epoch"


IN_PLACE_OPS = [
    lambda t: t.add_(1),
    lambda t: t.mul_(0),
    lambda t: t.fill_(7),
    lambda t: t.zero_(),
    lambda t: t.copy_(torch.flip(t, [0])),
    lambda t: t[::2].neg_() if t.is_floating_point() else t[::2].bitwise_not_(),
    lambda t: t.resize_(0),  # shrinking is allowed on a view and must not touch the mapping
]


@pytest.mark.parametrize("copy", [False, True], ids=["views", "copy"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["sequential", "shuffle"])
@pytest.mark.parametrize("workers", [0, 2])
def test_in_place_ops_on_batches_never_change_the_files(
    files: dict[str, Path], workers: int, shuffle: bool, copy: bool
) -> None:
    before = {name: _digest(path) for name, path in files.items()}
    ds = NumpyDataset({k: str(v) for k, v in files.items()}, copy=copy)
    loader = DataLoader(
        ds,
        batch_size=10,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=zero_copy_collate,
        timeout=60 if workers else 0,
    )
    for _ in range(2):
        for n, batch in enumerate(consume(loader)):
            for t in batch.values():
                IN_PLACE_OPS[n % len(IN_PLACE_OPS)](t)
    assert {name: _digest(path) for name, path in files.items()} == before
    fresh = NumpyDataset({k: str(v) for k, v in files.items()})
    ref = _reference(files)
    assert all(np.array_equal(fresh.columns()[k], ref[k]) for k in files)


def test_writes_through_a_view_batch_are_visible_to_later_reads_in_the_same_process(files: dict[str, Path]) -> None:
    """Documented: contiguous batches are views of the dataset's private (copy-on-write) mapping."""
    ds = NumpyDataset({k: str(v) for k, v in files.items()})
    original = np.load(files["weight"])[20:30].copy()
    batch = zero_copy_collate(ds.__getitems__(list(range(20, 30))))
    batch["weight"].fill_(-1)
    again = zero_copy_collate(ds.__getitems__(list(range(20, 30))))  # same dataset, same process
    assert torch.all(again["weight"] == -1)
    gathered = zero_copy_collate(ds.__getitems__([29, 20]))  # gathers read the same mapping
    assert torch.all(gathered["weight"] == -1)
    other = NumpyDataset({k: str(v) for k, v in files.items()})  # another dataset maps the file afresh
    assert np.array_equal(other.columns()["weight"][20:30], original)
    assert np.array_equal(np.load(files["weight"])[20:30], original)  # and the file never changed


def test_copy_true_isolates_batches_from_later_reads(files: dict[str, Path]) -> None:
    ds = NumpyDataset({k: str(v) for k, v in files.items()}, copy=True)
    original = np.load(files["weight"])[20:30].copy()
    zero_copy_collate(ds.__getitems__(list(range(20, 30))))["weight"].fill_(-1)
    again = zero_copy_collate(ds.__getitems__(list(range(20, 30))))["weight"]
    assert np.array_equal(again.numpy(), original)


def test_gathered_batches_are_private_copies(files: dict[str, Path]) -> None:
    ds = NumpyDataset({k: str(v) for k, v in files.items()})
    original = np.load(files["weight"])[[5, 9]].copy()
    zero_copy_collate(ds.__getitems__([9, 5]))["weight"].fill_(-1)
    assert np.array_equal(zero_copy_collate(ds.__getitems__([5, 9]))["weight"].numpy(), original)


def test_writes_to_view_batches_from_workers_persist_in_this_process_never_in_the_file(files: dict[str, Path]) -> None:
    """Documented: a contiguous batch from a worker crosses as a file descriptor and is rebuilt over the main
    process's one copy-on-write mapping of that file, so a write to it is seen by every later view batch of that
    file in this process (other loaders and datasets included) while one of them lives, never by the file, never
    by gathered batches. Once no batch uses the mapping it is released: later batches read the file again.
    ``copy=True`` isolates."""
    ref = _reference(files)
    paths = {k: str(v) for k, v in files.items()}

    def epoch(ds: NumpyDataset, shuffle: bool = False) -> list[dict[str, torch.Tensor]]:
        loader = DataLoader(ds, batch_size=10, shuffle=shuffle, num_workers=2, collate_fn=zero_copy_collate, timeout=60)
        return consume(loader)

    first = epoch(NumpyDataset(paths))
    for b in first:
        b["weight"].fill_(-1)
    again = epoch(NumpyDataset(paths))  # a new dataset and loader over the same file, the first batches held
    assert all(torch.all(b["weight"] == -1) for b in again)
    del first, again, b
    gc.collect()
    for b in epoch(NumpyDataset(paths)):  # nothing held the mapping: it was released, the file is read again
        assert np.array_equal(b["weight"].numpy(), ref["weight"][b["label"].numpy()])
    for b in epoch(NumpyDataset(paths), shuffle=True):  # gathers read the workers' own mappings
        assert np.array_equal(b["weight"].numpy(), ref["weight"][b["label"].numpy()])
    for b in epoch(NumpyDataset(paths, copy=True)):
        assert np.array_equal(b["weight"].numpy(), ref["weight"][b["label"].numpy()])
    assert np.array_equal(np.load(files["weight"]), ref["weight"])  # the file never changed


def test_views_of_any_kind_keep_a_worker_buffer_from_being_reused() -> None:
    """Only a view of each batch is kept (a NumPy slice, a transpose, DLPack, a raw storage, ...), the batch
    itself is dropped: the shared-memory buffer under it must not be handed out again while the view lives."""
    src = np.random.default_rng(9).standard_normal((960, 64)).astype(np.float32)
    ds = NumpyDataset({"x": src, "i": np.arange(len(src))})
    loader = DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        collate_fn=zero_copy_collate,
        timeout=60,
    )
    keepers = {
        "numpy slice": lambda x: x.numpy()[2:5],
        "tensor slice": lambda x: x[2:5],
        "transpose": lambda x: x.T[:, 2:5],
        "from_numpy": lambda x: torch.from_numpy(x.numpy()[2:5]),
        "memoryview": lambda x: memoryview(x.numpy())[2:5],
        "dlpack": lambda x: torch.from_dlpack(x[2:5]),
        "storage": lambda x: torch.empty(0, dtype=x.dtype).set_(x.untyped_storage(), x.storage_offset(), x.shape)[2:5],
        "frombuffer": lambda x: np.frombuffer(x.numpy(), dtype=np.float32).reshape(x.shape)[2:5],
    }
    held = []
    for _ in range(2):
        for n, batch in enumerate(loader):
            name = list(keepers)[n % len(keepers)]
            view = keepers[name](batch["x"])
            held.append((name, view, batch["i"].numpy()[2:5].copy()))
            del batch, view
    gc.collect()
    for name, view, idx in held:
        got = np.asarray(view).T if name == "transpose" else np.asarray(view)
        assert np.array_equal(got, src[idx]), f"a batch kept alive only by a {name} was overwritten"
