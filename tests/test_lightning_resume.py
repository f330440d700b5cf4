"""Stop a real Trainer mid-epoch, save a real checkpoint file, resume with ``fit(ckpt_path=...)``:
the interrupted epoch is covered exactly once, in the uninterrupted order, and later epochs match."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.test_lightning import Net, columns, labels, trainer
from zcopy_data import NumpyDataset, ZeroCopyDataLoader
from zcopy_data.lightning import ZeroCopyDataModule, ZeroCopyTransfer

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.filterwarnings("ignore:The '(train|val|test|predict)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
]

N, B = 100, 10


def _module(shuffle: str, workers: int) -> ZeroCopyDataModule:
    return ZeroCopyDataModule(
        NumpyDataset(columns(N)), batch_size=B, shuffle=shuffle, num_workers=workers, seed=4, cast={"x": "float32"}
    )


def _fit(dm: pl.LightningDataModule, epochs: int, ckpt: Path | None = None, **kw: Any) -> Net:
    torch.manual_seed(0)
    net = Net()
    net.input_schema = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dataloader is not resumable" (nor any other) warning
        warnings.filterwarnings("ignore", "The '.*_dataloader' does not have many workers")
        warnings.filterwarnings("ignore", "The number of training batches .* is smaller than the logging")
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        warnings.filterwarnings("ignore", "You defined a `validation_step` but have no `val_dataloader`")
        warnings.filterwarnings("ignore", "Be aware that when using `ckpt_path`, callbacks used to create")
        trainer(max_epochs=epochs, **kw).fit(net, dm, ckpt_path=ckpt)
    return net


def _stop_and_save(dm: pl.LightningDataModule, steps: int, path: Path) -> Net:
    """A run stopped after ``steps`` steps (a pre-empted job), its checkpoint taken by
    ``ModelCheckpoint`` at that step, as a real run's is, copied to ``path``."""
    torch.manual_seed(0)
    net = Net()
    net.input_schema = None
    every = ModelCheckpoint(dirpath=path.parent / "ckpts", every_n_train_steps=steps, save_top_k=-1)
    trainer(max_steps=steps, enable_checkpointing=True, callbacks=[every]).fit(net, dm)
    (saved,) = (path.parent / "ckpts").glob(f"*step={steps}.ckpt")
    saved.rename(path)
    shutil.rmtree(path.parent / "ckpts")
    return net


@pytest.mark.parametrize(("shuffle", "workers"), [("sequential", 0), ("shuffle", 0), ("block", 0), ("shuffle", 2)])
def test_a_stopped_fit_resumes_mid_epoch_where_it_stopped(tmp_path: Path, shuffle: str, workers: int) -> None:
    whole = labels(_fit(_module(shuffle, workers), 2).seen["train"])
    per_epoch = N  # every sample once (block: in N // B + 1 batches)

    ckpt = tmp_path / "stopped.ckpt"
    stopped = _stop_and_save(_module(shuffle, workers), 4, ckpt).seen["train"]
    assert len(stopped) == 4
    first = labels(stopped)
    assert first == whole[: len(first)]
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["batches_done"] == 4  # the batches trained on, not the one fetched ahead

    rest = labels(_fit(_module(shuffle, workers), 2, ckpt).seen["train"])
    epoch0 = first + rest[: per_epoch - len(first)]
    assert sorted(epoch0) == list(range(N))  # every sample of the interrupted epoch exactly once
    assert epoch0 == whole[:per_epoch]  # in the uninterrupted order
    if shuffle != "shuffle":  # DataLoader(shuffle=True) draws later epochs from the global generator
        assert first + rest == whole  # the next epoch too


class UserData(ZeroCopyTransfer, pl.LightningDataModule):
    """A user's own data module with the mixin and a ZeroCopyDataLoader it builds itself."""

    def train_dataloader(self) -> ZeroCopyDataLoader:
        g = torch.Generator()
        g.manual_seed(3)
        return ZeroCopyDataLoader(NumpyDataset(columns(N)), batch_size=B, shuffle=True, generator=g)


def test_the_mixin_makes_a_users_loader_resume_mid_epoch(tmp_path: Path) -> None:
    whole = labels(_fit(UserData(), 2).seen["train"])
    ckpt = tmp_path / "stopped.ckpt"
    first = labels(_stop_and_save(UserData(), 3, ckpt).seen["train"])
    rest = labels(_fit(UserData(), 2, ckpt).seen["train"])
    assert first + rest == whole


def test_a_checkpoint_at_an_epochs_end_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    whole = labels(_fit(_module("block", 0), 2).seen["train"])
    ckpt = tmp_path / "end.ckpt"
    first = labels(_stop_and_save(_module("block", 0), len(_module("block", 0).train_dataloader()), ckpt).seen["train"])
    rest = labels(_fit(_module("block", 0), 2, ckpt).seen["train"])
    assert first + rest == whole
    assert np.array_equal(np.sort(rest), np.arange(N))
