"""The host -> device hop: exact-size pinned buffers, stream-aware copies, casts on the device.

>>> import torch
>>> from zcopy_data.transfer import to_device
>>> to_device({"x": torch.zeros(2, dtype=torch.uint8)}, "cpu", cast={"x": torch.float16})["x"]
tensor([0., 0.], dtype=torch.float16)
"""

from zcopy_data.errors import PoolExhaustedError
from zcopy_data.memory.pinned import PinnedBufferPool, PinnedSlot
from zcopy_data.transfer.cast import Cast, DeviceCast, validate_cast
from zcopy_data.transfer.device import DevicePrefetcher, to_device
from zcopy_data.transfer.resident import DeviceResidentDataset, to_device_resident
from zcopy_data.transfer.static import StaticRing

__all__ = [
    "Cast",
    "DeviceCast",
    "DevicePrefetcher",
    "DeviceResidentDataset",
    "PinnedBufferPool",
    "PinnedSlot",
    "PoolExhaustedError",
    "StaticRing",
    "to_device",
    "to_device_resident",
    "validate_cast",
]
