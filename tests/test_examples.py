"""Every script in examples/ runs, on generated data, and shows what it says it shows."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

from zcopy_data import DtypeDriftError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# examples/lightning_ddp.py needs several processes: tests/test_lightning_ddp.py runs it.
ELSEWHERE = {"lightning_ddp.py"}

pytestmark = [
    pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
]


def run(name: str, *argv: str) -> Any:
    """Load ``examples/<name>`` as a module (not as ``__main__``) and call its ``main(argv)``."""
    module = runpy.run_path(str(EXAMPLES / name), run_name=f"example_{name.removesuffix('.py')}")
    return module["main"](list(argv))


def test_every_example_has_a_smoke_test() -> None:
    tested = {"numpy_dataloader.py", "arrow_file.py", "image_folder.py", "lightning_fit.py"} | ELSEWHERE
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_numpy_dataloader(tmp_path: Path) -> None:
    out = run("numpy_dataloader.py", "--root", str(tmp_path), "--samples", "1024", "--batch-size", "128")
    assert out["first_is_view"]
    assert out["copied_per_batch"]["sequential"] == 0
    assert out["copied_per_batch"]["shuffled"] == 128 * (3 * 32 * 32 + 8)
    assert out["copied_per_batch"]["block-shuffled"] == 0  # every block a view of the file
    assert out["samples_on_device"] == 1024


def test_arrow_file(tmp_path: Path) -> None:
    out = run("arrow_file.py", "--root", str(tmp_path), "--rows", "400", "--chunk", "100", "--batch-size", "50")
    assert out["in_order"]
    assert out["sequential_copied"] == 0  # batches inside one record batch are views of the file
    assert out["shuffled_copied"] == 400 * (3 * 16 * 16 + 8 + 4)
    assert out["image_dtype"] == "torch.uint8"


def test_image_folder(tmp_path: Path) -> None:
    out = run("image_folder.py", "--root", str(tmp_path), "--per-class", "4", "--size", "16", "--batch-size", "6")
    assert out["per_class"] == [4, 4, 4]
    assert out["image_dtype"] == "torch.float32"
    assert out["image_shape"] == (3, 16, 16)
    assert out["copied_per_batch"] == 6 * (3 * 16 * 16 + 8)  # one write per image and label


def test_lightning_fit(tmp_path: Path) -> None:
    out = run("lightning_fit.py", "--root", str(tmp_path), "--samples", "512", "--batch-size", "64")
    assert out["val_acc"] > 0.9
    # block shuffling: views; the only host copy is the cast's float32 output (64 x 3 x 16 x 16 x 4 B),
    # and with an accelerator the host -> device hop of the uint8 images and int64 labels
    cast = 64 * 3 * 16 * 16 * torch.float32.itemsize
    hop = 64 * (3 * 16 * 16 + 8) if torch.cuda.is_available() else 0
    assert out["zcopy/bytes_copied_per_batch"] == cast + hop
    assert out["zcopy/samples_per_sec"] > 0


def test_lightning_fit_without_the_cast_is_rejected_at_setup(tmp_path: Path) -> None:
    with pytest.raises(DtypeDriftError, match=r"uint8\[3, 16, 16\], the model's input_schema expects float32"):
        run("lightning_fit.py", "--root", str(tmp_path), "--samples", "64", "--no-cast")
