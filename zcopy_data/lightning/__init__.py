"""Lightning integration: zero-copy loaders, the device hop, and configuration checks.

Swap a ``LightningDataModule`` for :class:`ZeroCopyDataModule`::

    import lightning.pytorch as pl
    import torch
    from zcopy_data import Field, NumpyDataset, Schema
    from zcopy_data.lightning import LedgerLogger, ZeroCopyDataModule

    class Net(pl.LightningModule):
        # What training_step receives, after the device casts: checked at setup().
        input_schema = Schema({"image": Field(torch.float32, (3, 64, 64)), "label": Field(torch.int64)})
        ...

    train = NumpyDataset({"image": "images.npy", "label": "labels.npy"})
    dm = ZeroCopyDataModule(train, batch_size=256, num_workers=2, shuffle="block",
                            cast={"image": torch.float32})
    pl.Trainer(callbacks=[LedgerLogger()]).fit(Net(), dm)

``device_prefetch=2`` copies batches to the accelerator two ahead of the step, on a side stream,
so the copies overlap the model's compute (Lightning alone copies each batch just before its step).

Keep an existing data module and give it the same hop and checks instead: put
:class:`ZeroCopyTransfer` first among its bases (``class MyData(ZeroCopyTransfer,
pl.LightningDataModule)``, with ``cast = {...}``), use ``collate_fn=zero_copy_collate`` in its
loaders, and add the :class:`ZeroCopyChecks` callback to the ``Trainer``.

The model's declared input schema is the ``input_schema`` attribute of the ``LightningModule``
(a :class:`~zcopy_data.Schema` or a mapping ``name -> Field``), set in ``__init__`` or on the
class: the data module's ``setup()`` runs before the model's.

**DDP, one machine or many.** Nothing beyond what Lightning and ``torch.distributed`` provide
is needed. ``Trainer(strategy="ddp", devices=N, num_nodes=M)``: ``"sequential"`` and
``"shuffle"`` loaders are plain ``DataLoader`` objects, so Lightning injects its
``DistributedSampler`` and calls ``set_epoch`` every epoch; ``"block"`` loaders shard by
``trainer.global_rank`` / ``trainer.world_size`` themselves and Lightning calls their
``set_epoch``. Every rank sees a disjoint shard each epoch, and the shuffled order depends only on
the seed and the epoch, the same on every node. On several machines, start the same script on
each with the usual environment (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``; or
``torchrun``, SLURM): datasets are opened on every node from a path all of them can read (a
``.npy`` or Arrow file is mapped, never sent over the network by zcopy_data).

Lightning is an optional dependency: ``pip install 'zcopy-data[lightning]'``. Importing this
module does not import Lightning; the first use of a class that needs it does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zcopy_data.lightning._checks import INPUT_SCHEMA_ATTR, check_configuration
from zcopy_data.lightning._hooks import ZeroCopyTransfer
from zcopy_data.lightning._loaders import SHUFFLE_MODES, DevicePrefetchingLoader, ShardedLoader

if TYPE_CHECKING:
    from zcopy_data.lightning._callbacks import LedgerLogger, ZeroCopyChecks
    from zcopy_data.lightning._datamodule import ZeroCopyDataModule

__all__ = [
    "INPUT_SCHEMA_ATTR",
    "SHUFFLE_MODES",
    "DevicePrefetchingLoader",
    "LedgerLogger",
    "ShardedLoader",
    "ZeroCopyChecks",
    "ZeroCopyDataModule",
    "ZeroCopyTransfer",
    "check_configuration",
]

INSTALL_HINT = "pip install 'zcopy-data[lightning]'"

_LAZY = {
    "LedgerLogger": "_callbacks",
    "ZeroCopyChecks": "_callbacks",
    "ZeroCopyDataModule": "_datamodule",
}


def require_lightning(what: str) -> None:
    """Import Lightning, or raise ``ModuleNotFoundError`` with the install hint."""
    try:
        importlib.import_module("lightning.pytorch")
    except ImportError as err:
        raise ModuleNotFoundError(
            f"zcopy_data.lightning.{what} needs Lightning, which is not installed ({err}); "
            f"install it with: {INSTALL_HINT}",
            name="lightning",
        ) from None


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_lightning(name)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
