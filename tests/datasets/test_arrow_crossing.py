"""Contiguous ``ArrowDataset`` batches cross from worker processes as file descriptors: 0 bytes copied.

The mapping an Arrow dataset reads is registered when it is created, as every mapping is, so its
views cross like a ``.npy`` file's: the main process maps the file itself. Checked with data
pointers (the batch lies in one of this process's file mappings, not in shared memory) and with
the ledger.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support import in_a_file_mapping
from zcopy_data import explain, zero_copy_collate
from zcopy_data.datasets import ArrowDataset

N, BATCH = 240, 24



@pytest.fixture
def arrow_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.arange(N * 8, dtype=np.float32).reshape(N, 8)
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8),
            "label": pa.array(np.arange(N, dtype=np.int64)),
        }
    )
    path = tmp_path / "t.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=N)  # one record batch: every aligned batch is a view
    return path, x


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_contiguous_arrow_batches_from_two_worker_processes_cross_with_zero_copies(arrow_file, context) -> None:
    path, x = arrow_file
    loader = DataLoader(
        ArrowDataset(path),
        batch_size=BATCH,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=zero_copy_collate,
        timeout=60,
    )
    batches = list(loader)
    assert len(batches) == N // BATCH
    for b in batches:
        assert torch.equal(b["x"], torch.from_numpy(x[b["label"].numpy()]))
        assert in_a_file_mapping(b["x"]) and in_a_file_mapping(b["label"])  # not a shared-memory copy
        assert not b["x"].is_shared()
    ledger = explain(loader, batches=4)
    assert ledger.bytes_copied == 0
    crossing = {r.reason for r in ledger.rows if r.stage == "worker->main"}
    assert crossing and all(reason.startswith("descriptor") for reason in crossing), crossing
