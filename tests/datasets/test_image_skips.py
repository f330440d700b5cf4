"""Every file skipped under ``on_error="skip"`` reaches the process iterating the loader: worker
processes (fork and spawn) and gather threads alike, with a plain ``DataLoader`` too."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from zcopy_data import LEDGER, ZeroCopyDataLoader, explain, zero_copy_collate
from zcopy_data.datasets import ImageFolderDataset, SkippedFileWarning

BAD = ["b_truncated.jpg", "d_garbage.png", "f_empty.jpg"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "root"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for name in ("a", "c", "e", "g"):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{name}.jpg")
    good = (root / "cat" / "a.jpg").read_bytes()
    (root / "cat" / BAD[0]).write_bytes(good[: len(good) // 3])
    (root / "cat" / BAD[1]).write_bytes(os.urandom(200))
    (root / "dog" / BAD[2]).write_bytes(b"")
    return root


def _epoch(loader: DataLoader) -> tuple[list[int], list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        it = iter(loader)
        try:
            labels = []
            for batch in it:
                assert type(batch) is dict  # the user sees a plain batch, whatever crossed
                labels += batch["label"].tolist()
        finally:
            if hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
    return labels, [w for w in caught if issubclass(w.category, SkippedFileWarning)]


def _bad(ds: ImageFolderDataset) -> list[str]:
    return sorted(f for f in ds.files if Path(f).name in BAD)


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("workers", "context", "kind"),
    [(0, None, "plain"), (2, "fork", "plain"), (2, "spawn", "plain"), (2, "fork", "zero-copy"), (2, None, "threads")],
)
def test_every_skipped_file_is_reported_in_the_main_process(folder: Path, workers: int, context: str | None,
                                                            kind: str) -> None:  # fmt: skip
    ds = ImageFolderDataset(folder, size=(8, 8), on_error="skip", threads=1)
    common = {"batch_size": 3, "num_workers": workers, "timeout": 60 if workers else 0}
    if kind == "plain":
        loader: DataLoader = DataLoader(ds, collate_fn=zero_copy_collate, multiprocessing_context=context, **common)
    elif kind == "zero-copy":
        loader = ZeroCopyDataLoader(ds, worker_mode="processes", multiprocessing_context=context, **common)
    else:
        loader = ZeroCopyDataLoader(ds, worker_mode="threads", **common)
        assert loader.uses_threads
    LEDGER.reset()
    labels, caught = _epoch(loader)
    bad = _bad(ds)
    assert sorted(p for p, _ in ds.skipped) == bad  # in this process's dataset
    assert all("cannot decode the image" in why for _, why in ds.skipped)
    assert sorted(next(p for p in bad if p in str(w.message)) for w in caught) == bad  # one warning per file
    assert labels == [int(label) for f, label in zip(ds.files, ds.labels, strict=True) if f not in bad]
    reported = [r.reason for r in LEDGER.rows if r.reason.startswith("skipped")]  # main-process rows
    assert all(any(p in why for why in reported) for p in bad) and len(reported) == len(bad)


def test_a_worker_process_does_not_warn_on_its_own_stderr(folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8), on_error="skip", threads=1)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=zero_copy_collate, timeout=60)
    _, caught = _epoch(loader)
    assert len(caught) == len(BAD)
    assert "SkippedFileWarning" not in capfd.readouterr().err  # reported once, here, not in the worker


def test_explain_lists_the_files_a_worker_skipped(folder: Path) -> None:
    ds = ImageFolderDataset(folder, size=(8, 8), on_error="skip", threads=1)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=zero_copy_collate, timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        ledger = explain(loader, batches=4)
    text = str(ledger)
    assert all(p in text for p in _bad(ds))
    decode = [r for r in ledger.rows if r.stage == "decode" and r.reason.startswith("skipped unreadable file")]
    assert len(decode) == len(BAD)
