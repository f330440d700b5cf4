"""Devices, streams and events through PyTorch's generic accelerator API (CUDA first, not only).

Everything here runs in the main process only: a device stage inside a ``DataLoader`` worker
would initialise the accelerator in a forked child, which breaks it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from zcopy_data._accelerator import accelerator, check_main_process

__all__ = ["accelerator", "check_main_process", "on_stream", "resolve_device", "side_stream"]


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
