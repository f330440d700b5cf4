"""Is there an accelerator, and are we allowed to touch it (never inside a ``DataLoader`` worker)."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

__all__ = ["accelerator", "check_main_process", "in_worker"]


def accelerator() -> torch.device | None:
    """This build's accelerator (``cuda``, ``xpu``, ``mps``...) when one is usable, else ``None``."""
    if not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator()


def in_worker() -> bool:
    """True inside a ``DataLoader`` worker process."""
    return get_worker_info() is not None


def check_main_process(what: str) -> None:
    """Raise inside a ``DataLoader`` worker: the accelerator must not be initialised there."""
    if get_worker_info() is not None:
        raise RuntimeError(
            f"{what} runs in the main process only; inside a DataLoader worker it would initialise the "
            "accelerator in a forked child. Wrap the DataLoader instead of calling it from the dataset."
        )
