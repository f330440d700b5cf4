"""ZeroCopyDataModule, its setup checks, the transfer mixin and the callbacks, with a real Trainer."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from zcopy_data import (
    DtypeDriftError,
    Field,
    NumpyDataset,
    Schema,
    SchemaError,
    ShapeMismatchError,
    explain,
    zero_copy_collate,
)
from zcopy_data.lightning import (
    DevicePrefetchingLoader,
    LedgerLogger,
    ZeroCopyChecks,
    ZeroCopyDataModule,
    ZeroCopyTransfer,
)
from zcopy_data.transfer import Cast

pytestmark = [
    # Lightning's advice for real runs, not defects of a few-step CPU test run.
    pytest.mark.filterwarnings("ignore:The '(train|val|test|predict)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    # Lightning 2.6's CombinedLoader on torch >= 2.9 (lightning/pytorch/utilities/_pytree.py)
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:You have overridden `on_(before|after)_batch_transfer` in both"),
]

REPO = Path(__file__).resolve().parents[1]
N, B = 48, 8


def trainer(**kwargs: Any) -> pl.Trainer:
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    opts.update(kwargs)
    return pl.Trainer(**opts)


def columns(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.integers(0, 255, size=(n, 4), dtype=np.uint8), "y": np.arange(n, dtype=np.int64)}


class Net(pl.LightningModule):
    """Records what each step received; ``input_schema`` is what it expects after the casts."""

    input_schema: Schema | None = Schema({"x": Field(torch.float32, (4,)), "y": Field(torch.int64)})

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.seen: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "val": [], "test": [], "predict": []}
        self.ptrs: list[int] = []

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.lin(batch["x"].float() / 255), batch["y"] % 3)

    def _keep(self, split: str, batch: dict[str, torch.Tensor]) -> None:
        self.seen[split].append({k: v.clone() for k, v in batch.items()})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: ARG002
        self._keep("train", batch)
        self.ptrs.append(batch["y"].data_ptr())
        return self._loss(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # noqa: ARG002
        self._keep("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # noqa: ARG002
        self._keep("test", batch)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: ARG002
        self._keep("predict", batch)
        return self.lin(batch["x"].float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def labels(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(i) for b in batches for i in b["y"]]


# -- import behaviour --------------------------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO)},
    )


def test_importing_the_module_does_not_import_lightning() -> None:
    out = run_python("import sys, zcopy_data.lightning; print('lightning' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_missing_lightning_raises_with_the_install_hint() -> None:
    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "import zcopy_data.lightning as zl\n"
        "try:\n    zl.ZeroCopyDataModule\nexcept ModuleNotFoundError as e:\n    print(e)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "pip install 'zcopy-data[lightning]'" in out.stdout
    assert "ZeroCopyDataModule" in out.stdout


# -- fit / validate / test / predict -----------------------------------------------------------
def test_fit_validate_test_predict_cast_on_the_device(npy_files: dict[str, Path]) -> None:
    ds = NumpyDataset({"x": str(npy_files["image"]), "y": str(npy_files["label"])})
    preds = NumpyDataset({"x": str(npy_files["image"])})

    class ImageNet(Net):
        input_schema = Schema({"x": Field(torch.float16, (3, 4, 4)), "y": Field(torch.int64)})

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(48, 3)

        def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.lin(batch["x"].flatten(1).float()), batch["y"] % 3)

        def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: ARG002
            self._keep("predict", batch)
            return self.lin(batch["x"].flatten(1).float())

    dm = ZeroCopyDataModule(ds, ds, ds, preds, batch_size=16, eval_batch_size=25, cast={"x": torch.float16})
    model = ImageNet()
    t = trainer(max_epochs=1, limit_train_batches=3, num_sanity_val_steps=0)
    t.fit(model, dm)
    t.validate(model, dm)
    t.test(model, dm)
    out = t.predict(model, dm)

    source = np.load(npy_files["image"])
    assert len(model.seen["train"]) == 3
    for split in ("train", "val", "test", "predict"):
        for b in model.seen[split]:
            assert b["x"].dtype == torch.float16  # the cast ran, after the (CPU) transfer
            assert b["x"].shape[1:] == (3, 4, 4)
    # val ran inside fit and again in validate: sequential, all 100 samples each time
    assert labels(model.seen["val"]) == list(range(100)) * 2
    assert labels(model.seen["test"]) == list(range(100))
    got = torch.cat([b["x"] for b in model.seen["predict"]])
    assert torch.equal(got, torch.from_numpy(source).to(torch.float16))
    assert [p.shape[0] for p in out] == [25, 25, 25, 25]


def test_sequential_batches_reach_the_step_as_views_of_the_file(npy_files: dict[str, Path]) -> None:
    ds = NumpyDataset({"x": str(npy_files["image"]), "y": str(npy_files["label"])})

    class Viewer(Net):
        input_schema = None

        def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ARG002
            return self.lin.weight.sum() * 0

    model = Viewer()
    dm = ZeroCopyDataModule(ds, batch_size=10, shuffle="sequential")
    trainer(max_epochs=1).fit(model, dm)
    base = ds.columns()["y"].ctypes.data
    # no copy from file to training_step: collate viewed, the CPU transfer kept the tensor
    assert model.ptrs == [base + 10 * 8 * i for i in range(10)]


# -- same results as a default setup -----------------------------------------------------------
class Rows(Dataset[dict[str, np.ndarray]]):
    """What a user had before: per-sample dicts of NumPy rows, batched by default_collate."""

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        self.cols = cols

    def __len__(self) -> int:
        return len(self.cols["y"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.cols["x"][i], "y": self.cols["y"][i]}


class DefaultData(pl.LightningDataModule):
    def __init__(self, shuffle: bool, num_workers: int) -> None:
        super().__init__()
        self.shuffle, self.num_workers = shuffle, num_workers
        self.ds = Rows(columns())

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.ds, batch_size=B, shuffle=self.shuffle, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.ds, batch_size=B, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> Any:  # noqa: ARG002
        return {**batch, "x": batch["x"].float()}


@pytest.mark.parametrize(("shuffle", "num_workers"), [("shuffle", 0), ("sequential", 0), ("shuffle", 2)])
def test_swapping_the_datamodule_keeps_batches_order_and_weights(shuffle: str, num_workers: int) -> None:
    def run(dm: pl.LightningDataModule) -> Net:
        pl.seed_everything(1234, verbose=False)
        model = Net()
        trainer(max_epochs=2, num_sanity_val_steps=0).fit(model, dm)
        return model

    default = run(DefaultData(shuffle == "shuffle", num_workers))
    ds = NumpyDataset(columns())
    ours = run(
        ZeroCopyDataModule(ds, ds, batch_size=B, shuffle=shuffle, num_workers=num_workers, cast={"x": "float32"})
    )

    assert len(ours.seen["train"]) == len(default.seen["train"]) == 2 * N // B
    for a, b in zip(ours.seen["train"] + ours.seen["val"], default.seen["train"] + default.seen["val"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            assert torch.equal(a[k], b[k])
    epochs = labels(ours.seen["train"])
    assert sorted(epochs[:N]) == sorted(epochs[N:]) == list(range(N))
    if shuffle == "shuffle":
        assert epochs[:N] != epochs[N:]  # a new order every epoch
    for p, q in zip(ours.parameters(), default.parameters(), strict=True):
        assert torch.equal(p, q)


# -- block shuffling ---------------------------------------------------------------------------
def test_block_mode_sees_every_sample_once_per_epoch_in_contiguous_batches() -> None:
    ds = NumpyDataset(columns())
    model = Net()
    dm = ZeroCopyDataModule(ds, batch_size=B, shuffle="block", seed=3, cast={"x": torch.float32})
    trainer(max_epochs=3).fit(model, dm)
    steps = len(dm.train_dataloader())  # N // B + 1: the boundaries move, the blocks at them are short
    assert steps == N // B + 1 and len(model.seen["train"]) == 3 * steps
    per_epoch = [model.seen["train"][e * steps : (e + 1) * steps] for e in range(3)]
    orders = []
    for batches in per_epoch:
        seen = labels(batches)
        assert sorted(seen) == list(range(N))
        orders.append(seen)
        assert all(bool((torch.diff(b["y"]) == 1).all()) for b in batches)  # each batch one run: a view
    assert len({tuple(o) for o in orders}) == 3  # Lightning called set_epoch: a new order each epoch


# -- setup-time configuration checks -----------------------------------------------------------
def fit_expecting(error: type[Exception], dm: ZeroCopyDataModule, model: Net | None = None) -> str:
    model = model or Net()
    with pytest.raises(error) as info:
        trainer().fit(model, dm)
    assert model.seen["train"] == [] and model.seen["val"] == []  # rejected before the first batch
    return str(info.value)


def test_dtype_drift_between_dataset_and_model_is_rejected_at_setup() -> None:
    msg = fit_expecting(DtypeDriftError, ZeroCopyDataModule(NumpyDataset(columns()), batch_size=B))
    assert "field 'x'" in msg
    assert "uint8[4]" in msg and "float32[4]" in msg  # both sides
    assert "cast={'x': torch.float32}" in msg  # the fix


def test_cast_to_the_wrong_dtype_shows_the_cast() -> None:
    dm = ZeroCopyDataModule(NumpyDataset(columns()), batch_size=B, cast={"x": torch.float16})
    msg = fit_expecting(DtypeDriftError, dm)
    assert "x: uint8->float16" in msg and "float16[4]" in msg and "float32[4]" in msg


def test_cast_naming_an_unknown_field_is_rejected_at_setup() -> None:
    dm = ZeroCopyDataModule(NumpyDataset(columns()), batch_size=B, cast={"x": torch.float32, "img": torch.float32})
    msg = fit_expecting(SchemaError, dm)
    assert msg.startswith("train dataset: field 'img': the cast map names it") and "['x', 'y']" in msg


def test_shape_drift_is_rejected_at_setup() -> None:
    cols = columns()
    cols["x"] = np.zeros((N, 5), np.uint8)
    dm = ZeroCopyDataModule(NumpyDataset(cols), batch_size=B, cast={"x": torch.float32})
    msg = fit_expecting(ShapeMismatchError, dm)
    assert "float32[5]" in msg and "float32[4]" in msg


def test_a_field_the_model_needs_but_the_dataset_lacks_is_rejected() -> None:
    dm = ZeroCopyDataModule(NumpyDataset({"x": columns()["x"]}), batch_size=B, cast={"x": torch.float32})
    msg = fit_expecting(SchemaError, dm)
    assert "field 'y'" in msg and "int64[]" in msg and "['x']" in msg


def test_drift_in_the_val_dataset_is_rejected_before_the_sanity_check() -> None:
    train = NumpyDataset(columns())
    val_cols = columns()
    val_cols["y"] = val_cols["y"].astype(np.int32)
    dm = ZeroCopyDataModule(train, NumpyDataset(val_cols), batch_size=B, cast={"x": torch.float32})
    msg = fit_expecting(DtypeDriftError, dm)
    assert "val dataset" in msg and "int32[]" in msg and "int64[]" in msg


def test_val_must_match_train_when_the_model_declares_nothing() -> None:
    class Undeclared(Net):
        input_schema = None

    val_cols = columns()
    val_cols["x"] = val_cols["x"].astype(np.float32)
    dm = ZeroCopyDataModule(NumpyDataset(columns()), NumpyDataset(val_cols), batch_size=B)
    msg = fit_expecting(DtypeDriftError, dm, Undeclared())
    assert "val dataset gives float32[4], the train dataset expects uint8[4]" in msg


def test_input_schema_argument_serves_a_model_without_one_and_must_agree_with_one() -> None:
    class Undeclared(Net):
        input_schema = None

    declared = {"x": Field(torch.float64, (4,)), "y": Field(torch.int64)}
    dm = ZeroCopyDataModule(NumpyDataset(columns()), batch_size=B, cast={"x": torch.float32}, input_schema=declared)
    msg = fit_expecting(DtypeDriftError, dm, Undeclared())
    assert "float64[4]" in msg and "float32[4]" in msg
    msg = fit_expecting(SchemaError, dm, Net())
    assert "the data module declares" in msg and "Net.input_schema declares" in msg


def test_predict_dataset_may_lack_labels_but_not_drift() -> None:
    model = Net()
    ok = ZeroCopyDataModule(predict_dataset=NumpyDataset({"x": columns()["x"]}), batch_size=B, cast={"x": "float32"})
    assert len(trainer().predict(model, ok)) == N // B
    bad = ZeroCopyDataModule(predict_dataset=NumpyDataset({"x": columns()["x"]}), batch_size=B)
    with pytest.raises(DtypeDriftError, match="predict dataset gives uint8"):
        trainer().predict(model, bad)


def test_constructor_rejects_bad_arguments() -> None:
    ds = NumpyDataset(columns())
    with pytest.raises(ValueError, match="shuffle='random' should be one of"):
        ZeroCopyDataModule(ds, shuffle="random")
    with pytest.raises(ValueError, match="batch_size=0"):
        ZeroCopyDataModule(ds, batch_size=0)
    with pytest.raises(SchemaError, match="field 'x': cast dtype: not a dtype: 'floaty'"):
        ZeroCopyDataModule(ds, cast={"x": "floaty"})


def test_splits_left_out_are_not_offered_to_lightning() -> None:
    model = Net()
    dm = ZeroCopyDataModule(NumpyDataset(columns()), batch_size=B, cast={"x": torch.float32})
    t = trainer(max_epochs=1)
    t.fit(model, dm)
    assert model.seen["val"] == [] and len(model.seen["train"]) == N // B
    assert t.val_dataloaders is None or len(t.val_dataloaders) == 0


# -- an existing data module: the mixin and the checks callback --------------------------------
class Existing(ZeroCopyTransfer, pl.LightningDataModule):
    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.cast = {"x": torch.float32}
        self.ds = NumpyDataset(cols)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.ds, batch_size=B, collate_fn=zero_copy_collate)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.ds, batch_size=B, collate_fn=zero_copy_collate)


def test_mixin_casts_on_the_device_and_keeps_the_models_own_hook() -> None:
    class Augmenting(Net):
        def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> Any:  # noqa: ARG002
            assert batch["x"].dtype == torch.float32  # the data module's cast ran first
            return {**batch, "x": batch["x"] + 1000}

    model = Augmenting()
    trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[ZeroCopyChecks()]).fit(model, Existing(columns()))
    xs = torch.cat([b["x"] for b in model.seen["train"]])
    assert xs.dtype == torch.float32
    assert torch.equal(xs, torch.from_numpy(columns()["x"]).float() + 1000)


def test_checks_callback_rejects_drift_of_an_existing_datamodule_before_any_batch() -> None:
    cols = columns()
    cols["y"] = cols["y"].astype(np.int16)
    model = Net()
    with pytest.raises(
        DtypeDriftError, match=r"val dataset .* gives int16\[\], the model's input_schema expects int64"
    ):
        trainer(callbacks=[ZeroCopyChecks()]).fit(model, Existing(cols))
    assert model.seen["train"] == [] and model.seen["val"] == []
    model = Net()
    with pytest.raises(DtypeDriftError, match=r"train dataset .* gives int16\[\]"):
        trainer(num_sanity_val_steps=0, callbacks=[ZeroCopyChecks()]).fit(model, Existing(cols))
    assert model.seen["train"] == []


def test_checks_callback_takes_an_explicit_cast_map() -> None:
    model = Net()
    checks = ZeroCopyChecks(cast={"x": torch.float64})
    with pytest.raises(DtypeDriftError, match=r"x: uint8->float64"):
        trainer(callbacks=[checks]).fit(model, Existing(columns()))


# -- ledger figures through Lightning's logger -------------------------------------------------
def logged(tmp_path: Path) -> list[dict[str, str]]:
    (path,) = tmp_path.rglob("metrics.csv")
    with path.open() as f:
        return [row for row in csv.DictReader(f) if row.get("zcopy/bytes_copied_per_batch")]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(("shuffle", "copied"), [("sequential", 0), ("shuffle", B * (4 + 8))])
def test_ledger_logger_logs_exact_bytes_per_batch(tmp_path: Path, shuffle: str, copied: int, num_workers: int) -> None:
    from lightning.pytorch.loggers import CSVLogger

    ds = NumpyDataset(columns())
    dm = ZeroCopyDataModule(ds, batch_size=B, shuffle=shuffle, num_workers=num_workers, cast={"x": torch.float32})
    t = trainer(max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=[LedgerLogger()])
    t.fit(Net(), dm)
    rows = logged(tmp_path)
    assert len(rows) == N // B
    per_batch = [float(r["zcopy/bytes_copied_per_batch"]) for r in rows]
    cast = B * 4 * 4  # the device cast writes x as float32: the one copy a cast must make
    if num_workers == 0:
        # a gather copies x (4 B) and y (8 B) per sample, a view nothing; the CPU "transfer" moves nothing
        assert per_batch == [copied + cast] * (N // B)
    else:
        # worker records reach the main process: what explain() finds for this loader, plus the cast
        dm.record_ledger = False
        plan = explain(dm.train_dataloader(), batches=N // B)
        assert per_batch == [plan.bytes_copied / plan.batches + cast] * (N // B)
        assert per_batch[0] >= copied + cast
    viewed = B * (4 + 8) if shuffle == "sequential" else 0
    assert all(float(r["zcopy/bytes_viewed_per_batch"]) >= viewed for r in rows)
    assert all(float(r["zcopy/samples_per_sec"]) > 0 for r in rows)


def test_block_mode_loader_gets_lightnings_worker_seeding() -> None:
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl.seed_everything(5, workers=True, verbose=False)
    try:
        dm = ZeroCopyDataModule(
            NumpyDataset(columns()), batch_size=B, shuffle="block", num_workers=1, cast={"x": "float32"}
        )
        t = trainer(max_epochs=1)
        t.fit(Net(), dm)
        init = t.train_dataloader.loader.worker_init_fn
        assert init.func is pl_worker_init_function and init.keywords == {"rank": 0}
    finally:
        os.environ.pop("PL_SEED_WORKERS", None)


def test_datamodule_pickles_for_ddp_spawn() -> None:
    dm = ZeroCopyDataModule(
        NumpyDataset(columns()), batch_size=B, shuffle="block", cast={"x": Cast(torch.float16, scale=2)}
    )
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.val_dataloader is None and clone.shuffle == "block"
    batch = next(iter(clone.train_dataloader()))
    assert torch.equal(clone.on_after_batch_transfer(batch, 0)["x"], batch["x"].to(torch.float16) * 2)


def test_ledger_logger_with_an_existing_datamodule_uses_the_process_ledger(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    t = trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[LedgerLogger()],
    )
    t.fit(Net(), Existing(columns()))
    # sequential views copy nothing; what each batch costs is its float32 cast of x
    assert [float(r["zcopy/bytes_copied_per_batch"]) for r in logged(tmp_path)] == [B * 4 * 4] * (N // B)


def test_device_prefetch_loaders_survive_lightnings_reinstantiation() -> None:
    ds = NumpyDataset(columns())
    runs = {}
    for depth in (0, 2):
        pl.seed_everything(0, verbose=False)
        model = Net()
        dm = ZeroCopyDataModule(ds, ds, predict_dataset=ds, batch_size=B, cast={"x": "float32"}, device_prefetch=depth)
        t = trainer(max_epochs=1)
        t.fit(model, dm)
        t.predict(model, dm)
        runs[depth] = (model, t)
    (plain, _), (prefetched, t) = runs[0], runs[2]
    # Lightning re-created the predict loader (to track indices): still ours, extra arguments kept
    loader = t.predict_dataloaders
    assert isinstance(loader, DevicePrefetchingLoader)
    assert loader.depth == 2 and loader.device == torch.device("cpu")
    assert type(loader.batch_sampler).__name__ == "_IndexBatchSamplerWrapper"
    for split in ("train", "val", "predict"):
        for a, b in zip(prefetched.seen[split], plain.seen[split], strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
@pytest.mark.parametrize("device_prefetch", [0, 2])
def test_fit_on_cuda_gives_the_cpu_batches_cast_on_the_device(device_prefetch: int) -> None:
    ds = NumpyDataset(columns())
    runs = {}
    for accelerator in ("cpu", "gpu"):
        pl.seed_everything(0, verbose=False)
        model = Net()
        dm = ZeroCopyDataModule(
            ds, ds, batch_size=B, shuffle="shuffle", cast={"x": torch.float32}, device_prefetch=device_prefetch
        )
        trainer(accelerator=accelerator, max_epochs=2).fit(model, dm)
        runs[accelerator] = model
    for split in ("train", "val"):
        gpu, cpu = runs["gpu"].seen[split], runs["cpu"].seen[split]
        assert len(gpu) == len(cpu) > 0
        for a, b in zip(gpu, cpu, strict=True):
            assert a["x"].device.type == "cuda" and a["x"].dtype == torch.float32
            assert torch.equal(a["x"].cpu(), b["x"]) and torch.equal(a["y"].cpu(), b["y"])
