"""The device hop and the device casts the Lightning hooks delegate to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zcopy_data.lightning._checks import cast_targets

__all__ = ["apply_cast", "move_to_device"]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of ``batch`` to ``device`` (no-op for tensors already there)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def apply_cast(batch: Any, cast: Mapping[str, Any]) -> Any:
    """Cast the named fields of a dict batch on their device."""
    targets = cast_targets(cast)
    if not isinstance(batch, Mapping):
        return batch
    out = dict(batch)
    for name, dtype in targets.items():
        out[name] = out[name].to(dtype)
    return out
