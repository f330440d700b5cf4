"""Only regular files are read: a FIFO (or socket, device) given as data is refused, never waited on.

Opening a FIFO for reading blocks until a writer comes, so each case runs in a child process with
a timeout: a regression fails the test instead of hanging the suite (a blocked worker once outlived
its killed parent for 13 minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from tests.support import run_isolated

pytestmark = pytest.mark.reliability

CASES = """
import os, sys
import numpy as np
from torch.utils.data import DataLoader
from zcopy_data import ArrowDataset, NumpyDataset, zero_copy_collate
from zcopy_data.inspect import inspect_path

folder, case = sys.argv[1], sys.argv[2]
fifo = os.path.join(folder, "pipe")
try:
    if case == "npy":
        NumpyDataset({"x": fifo + ".npy"})
    elif case == "npy-folder-inspect":
        inspect_path(os.path.join(folder, "npys"))
    elif case == "arrow":
        ArrowDataset(fifo + ".arrow")
    elif case == "parquet":
        ArrowDataset.from_parquet(fifo + ".parquet", cache_dir=os.path.join(folder, "cache"))
    elif case == "compressed":
        ArrowDataset.from_compressed(fifo + ".feather", cache_dir=os.path.join(folder, "cache"))
    elif case == "inspect":
        inspect_path(fifo + ".arrow")
    elif case in ("swapped-npy", "swapped-arrow"):
        # built over a real file, which is then replaced by a FIFO: spawned workers open the path again
        real = os.path.join(folder, "real.npy" if case == "swapped-npy" else "real.arrow")
        ds = NumpyDataset({"x": real}) if case == "swapped-npy" else ArrowDataset(real)
        os.replace(fifo + (".npy" if case == "swapped-npy" else ".arrow"), real)
        loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn",
                            collate_fn=zero_copy_collate, timeout=60)
        next(iter(loader))
    print("NOT REFUSED")
except Exception as err:
    print(f"{type(err).__name__}: {err}")
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for suffix in (".npy", ".arrow", ".parquet", ".feather"):
        os.mkfifo(tmp_path / f"pipe{suffix}")
    (tmp_path / "npys").mkdir()
    np.save(tmp_path / "npys" / "a.npy", np.zeros(8, np.float32))
    os.mkfifo(tmp_path / "npys" / "b.npy")
    np.save(tmp_path / "real.npy", np.arange(64, dtype=np.float32).reshape(16, 4))
    table = pa.table({"x": np.arange(16, dtype=np.int64)})
    feather.write_feather(table, tmp_path / "real.arrow", compression="uncompressed")
    pq.write_table(table, tmp_path / "unused.parquet")
    return tmp_path


@pytest.mark.parametrize(
    ("case", "error", "name"),
    [
        ("npy", "SchemaError: field 'x'", "pipe.npy"),
        ("npy-folder-inspect", "CorruptFileError", "b.npy"),
        ("arrow", "CorruptFileError", "pipe.arrow"),
        ("parquet", "CorruptFileError", "pipe.parquet"),
        ("compressed", "CorruptFileError", "pipe.feather"),
        ("inspect", "CorruptFileError", "pipe.arrow"),
        ("swapped-npy", "FileChangedError", "real.npy"),
        ("swapped-arrow", "FileChangedError", "real.arrow"),
    ],
)
def test_a_fifo_is_refused_naming_it_never_waited_on(folder: Path, case: str, error: str, name: str) -> None:
    proc = run_isolated(CASES, str(folder), case, timeout=90)
    out = proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr
    assert out.startswith(error), out
    why = "was replaced after the dataset was built" if case.startswith("swapped") else "is not a regular file"
    assert name in out and why in out, out
