"""The Arrow types real writers produce: polars' string_view, lz4 IPC, Hugging Face ArrayND, large_string."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ArrowDataset
from zcopy_data.errors import UnsupportedColumnError
from zcopy_data.ledger import LEDGER

pl = pytest.importorskip("polars")


def test_polars_string_view_is_served_as_lists_on_request(tmp_path: Path):
    path = tmp_path / "p.arrow"
    pl.DataFrame({"x": np.arange(10, dtype=np.float32), "s": [f"w{i}" for i in range(10)]}).write_ipc(path)
    assert str(pa.ipc.open_file(str(path)).schema.field("s").type) == "string_view"
    with pytest.raises(UnsupportedColumnError, match=r"field 's'.*string_view.*strings='list'"):
        ArrowDataset(path)
    ds = ArrowDataset(path, strings="list")
    LEDGER.reset()
    batch = zero_copy_collate(ds.__getitems__([3, 1, 7]))
    assert batch["s"] == ["w3", "w1", "w7"] and torch.equal(batch["x"], torch.tensor([3.0, 1.0, 7.0]))
    assert {r.field: r.bytes_copied for r in LEDGER.rows}["s"] == 6


def test_large_string_is_served_as_lists_on_request(tmp_path: Path):
    path = tmp_path / "l.arrow"
    table = pa.table({"s": pa.array(["a", "bb", "ccc"], pa.large_string()), "y": pa.array([1, 2, 3])})
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
    assert zero_copy_collate(ArrowDataset(path, strings="list").__getitems__([2, 0]))["s"] == ["ccc", "a"]


def test_compressed_ipc_message_names_the_polars_and_pyarrow_fixes(tmp_path: Path):
    path = tmp_path / "c.arrow"
    pl.DataFrame({"x": np.arange(1000, dtype=np.float32)}).write_ipc(path, compression="lz4")
    with pytest.raises(UnsupportedColumnError) as err:
        ArrowDataset(path)
    assert "compression='uncompressed'" in str(err.value) and "IpcWriteOptions(compression=None)" in str(err.value)
    assert "from polars" in str(err.value) and "from_compressed" in str(err.value)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (1, 2, 2, 2)])
def test_hugging_face_array_nd_columns_are_zero_copy_with_their_declared_shape(tmp_path: Path, shape):
    datasets = pytest.importorskip("datasets")
    kind = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D}[len(shape)]
    a = np.arange(10 * int(np.prod(shape)), dtype=np.float32).reshape(10, *shape)
    hf = datasets.Dataset.from_dict({"a": a}, features=datasets.Features({"a": kind(shape, "float32")}))
    hf.save_to_disk(str(tmp_path / "hf"), num_shards=2)
    ds = ArrowDataset(tmp_path / "hf")
    assert ds.schema["a"].shape == shape
    LEDGER.reset()
    view = zero_copy_collate(ds.__getitems__(range(1, 4)))
    assert np.array_equal(view["a"].numpy(), a[1:4]) and LEDGER.bytes_copied == 0
    idx = np.array([9, 0, 5])
    assert torch.equal(zero_copy_collate(ds.__getitems__(idx))["a"], torch.from_numpy(a[idx]))


def test_ipc_stream_is_labelled_a_stream(tmp_path: Path):
    path = tmp_path / "s.arrows"
    table = pa.table({"x": pa.array([1.0, 2.0], pa.float32())})
    with pa.ipc.new_stream(str(path), table.schema) as w:
        w.write_table(table)
    assert ArrowDataset(path).origin == "IPC stream"
    zero_copy_collate(ArrowDataset(path).__getitems__([1, 0]))
    assert "(IPC stream)" in LEDGER.rows[-1].reason
