"""Devices, streams and events through PyTorch's generic accelerator API (CUDA first, not only).

Everything here runs in the main process only: a device stage inside a ``DataLoader`` worker
would initialise the accelerator in a forked child, which breaks it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = [
    "accelerator",
    "hold_until",
    "on_stream",
    "reap",
    "resolve_device",
    "side_stream",
]


def accelerator() -> torch.device | None:
    """This build's accelerator (``cuda``, ``xpu``, ``mps``...) when one is usable, else ``None``."""
    if not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator()


def check_main_process(what: str) -> None:
    """Raise inside a ``DataLoader`` worker: the accelerator must not be initialised there."""
    if get_worker_info() is not None:
        raise RuntimeError(
            f"{what} runs in the main process only; inside a DataLoader worker it would initialise the "
            "accelerator in a forked child. Wrap the DataLoader instead of calling it from the dataset."
        )


def resolve_device(device: torch.device | str | int) -> torch.device:
    """``device`` with an explicit index; raise for an accelerator this build does not have."""
    acc = accelerator()
    if isinstance(device, int):  # a bare index means this build's accelerator
        if acc is None:
            raise ValueError(f"device={device!r}: no accelerator is available; use device='cpu'")
        return torch.device(acc.type, device)
    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if acc is None or acc.type != dev.type:
        have = "no accelerator" if acc is None else f"the accelerator {acc.type!r}"
        raise ValueError(f"device={str(dev)!r}: this build has {have}; use device='cpu' or a {have} device")
    if dev.index is None:
        return torch.device(dev.type, torch.accelerator.current_device_index())
    return dev


_streams: dict[torch.device, torch.Stream] = {}
_streams_lock = threading.Lock()


def side_stream(device: torch.device) -> torch.Stream:
    """The one persistent transfer stream of ``device`` (created on first use, never per epoch)."""
    check_main_process("a device transfer")
    with _streams_lock:
        stream = _streams.get(device)
        if stream is None:
            stream = _streams[device] = torch.Stream(device=device)
        return stream


@contextmanager
def on_stream(stream: torch.Stream) -> Iterator[None]:
    """Make ``stream`` current for the block; restore the previous stream and device after."""
    prev_index = torch.accelerator.current_device_index()
    prev = torch.accelerator.current_stream(stream.device)
    torch.accelerator.set_stream(stream)
    try:
        yield
    finally:
        torch.accelerator.set_stream(prev)
        torch.accelerator.set_device_index(prev_index)


# -- host memory kept alive until the copies reading it have completed ------------------------
_inflight: deque[tuple[torch.Event, Sequence[Any]]] = deque()
_inflight_lock = threading.Lock()


def hold_until(event: torch.Event, refs: Sequence[Any]) -> None:
    """Keep ``refs`` (host tensors a non-blocking copy reads) referenced until ``event`` completes.

    A pinned buffer is only reused when no tensor references its storage, so holding the
    tensors here is what keeps a pool from rewriting a buffer the device is still reading.
    """
    with _inflight_lock:
        _inflight.append((event, refs))
    reap()


def reap(*, wait_one: bool = False) -> bool:
    """Drop the references of completed copies (oldest first). ``wait_one``: block on the oldest.

    Returns True when something was released.
    """
    if wait_one:
        with _inflight_lock:
            oldest = _inflight[0][0] if _inflight else None
        if oldest is not None:
            oldest.synchronize()  # outside the lock: other threads keep issuing copies meanwhile
    released = False
    with _inflight_lock:
        while _inflight and _inflight[0][0].query():
            _inflight.popleft()
            released = True
    return released


def inflight() -> int:
    """How many copies still hold host memory (for tests and diagnostics)."""
    with _inflight_lock:
        return len(_inflight)
