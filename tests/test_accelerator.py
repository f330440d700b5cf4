"""Accelerator discovery, and the rule that a DataLoader worker never touches the accelerator."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from tests.support import loader_raises
from zcopy_data._accelerator import accelerator, check_main_process, in_worker


def test_accelerator_follows_torch() -> None:
    found = accelerator()
    assert (found is None) == (not torch.accelerator.is_available())
    assert not in_worker()
    check_main_process("this")  # the main process: allowed


class _AsksInWorker(Dataset[int]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        assert in_worker()
        check_main_process("pinning")
        return i


def test_inside_a_worker_it_is_refused_with_the_fix() -> None:
    loader = DataLoader(_AsksInWorker(), batch_size=1, num_workers=1, timeout=60)
    with loader_raises(RuntimeError, match="pinning runs in the main process only.*Wrap the DataLoader"):
        next(iter(loader))
