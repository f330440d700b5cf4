"""Shared memory under pressure: a too-small ``/dev/shm`` and a too-small worker budget.

A full ``/dev/shm`` must be a clear error in the main process, never a bus error in a worker; a
budget too small for the batches a user holds must be a clear error or back-pressure, never an
overwritten batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support import ROOT, consume
from zcopy_data import NumpyDataset, ZeroCopyError, zero_copy_collate
from zcopy_data.memory.shared import SharedMemoryExhaustedError

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


def _private_shm_available() -> bool:
    """A private mount namespace with its own small tmpfs on /dev/shm (no effect outside the child)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
    )
    return probe.returncode == 0


SMALL_SHM = """
import json, sys
import numpy as np
from torch.utils.data import DataLoader, default_collate
from zcopy_data import NumpyDataset, zero_copy_collate
collate = zero_copy_collate if sys.argv[1] == "zero_copy_collate" else default_collate
ds = NumpyDataset({"x": np.ones((512, 64, 1024), np.uint8)})  # 64 KiB a sample: a 4 MiB batch
loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2, collate_fn=collate, timeout=30)
report = {"batches": 0, "error": None}
it = iter(loader)
try:
    for batch in it:
        report["batches"] += 1
except Exception as err:
    report["error"] = type(err).__name__ + ": " + str(err).strip().splitlines()[-1]
finally:
    it._shutdown_workers()
print(json.dumps(report))
"""


@pytest.mark.skipif(not _private_shm_available(), reason="needs unshare --mount --map-root-user (user namespaces)")
@pytest.mark.parametrize("collate", ["zero_copy_collate", "default_collate"])
def test_a_too_small_dev_shm_is_a_clear_error_not_a_bus_error(collate: str) -> None:
    mount_then_run = 'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$0" -c "$1" "$2"'
    proc = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", mount_then_run, sys.executable, SMALL_SHM, collate],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["batches"] == 0
    assert "Bus error" not in (report["error"] or "") and "signal" not in (report["error"] or ""), report
    if collate == "zero_copy_collate":
        assert report["error"].startswith("SharedMemoryExhaustedError"), report
        assert "needs a 4194368 B shared-memory buffer" in report["error"], report
        assert "/dev/shm has only" in report["error"], report
        assert "enlarge it" in report["error"], report
    else:  # the default path: PyTorch's own clear error (it reserves the pages with posix_fallocate)
        # its errno varies with the kernel: ENOSPC here, EAGAIN under some sandboxes
        assert "unable to allocate shared memory" in report["error"], report


def _digest(batch: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(batch["x"].numpy().tobytes()).hexdigest()


def _loader(ds: Any, **kwargs: Any) -> DataLoader[Any]:
    return DataLoader(
        ds, num_workers=2, collate_fn=zero_copy_collate, timeout=60, multiprocessing_context="fork", **kwargs
    )


def test_a_budget_smaller_than_one_batch_names_the_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", "4096")
    ds = NumpyDataset({"x": np.ones((64, 1024), np.float32)})
    sizes = r"needs 32832 B of shared memory for one batch, more than the 4096 B a worker may hold"
    with pytest.raises(SharedMemoryExhaustedError, match=sizes) as err:
        consume(_loader(ds, batch_size=8, shuffle=True))
    assert isinstance(err.value, (MemoryError, ZeroCopyError))


def test_holding_more_batches_than_the_budget_is_an_error_never_an_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    batch_bytes = 8 * 1024 * 4
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", str(3 * (batch_bytes + 4096 + 64)))
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_WAIT_S", "0.3")
    src = np.random.default_rng(1).standard_normal((400, 1024)).astype(np.float32)
    ds = NumpyDataset({"x": src, "i": np.arange(400)})
    held: list[tuple[dict[str, torch.Tensor], str]] = []
    it = iter(_loader(ds, batch_size=8, sampler=np.random.default_rng(2).permutation(400).tolist()))
    try:
        held_msg = r"still referenced by batches .* free batches you no longer need"
        with pytest.raises(SharedMemoryExhaustedError, match=held_msg):
            for batch in it:
                held.append((batch, _digest(batch)))
    finally:
        it._shutdown_workers()  # type: ignore[attr-defined]
    assert len(held) >= 4
    for batch, digest in held:
        assert _digest(batch) == digest, "a held batch was overwritten"
        assert np.array_equal(batch["x"].numpy(), src[batch["i"].numpy()])


def test_releasing_batches_keeps_a_small_budget_flowing(monkeypatch: pytest.MonkeyPatch) -> None:
    batch_bytes = 8 * 1024 * 4
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_BYTES", str(4 * (batch_bytes + 4096 + 64)))
    monkeypatch.setenv("ZCOPY_DATA_WORKER_SHM_WAIT_S", "10")
    src = np.random.default_rng(3).standard_normal((400, 1024)).astype(np.float32)
    ds = NumpyDataset({"x": src, "i": np.arange(400)})
    loader = _loader(ds, batch_size=8, shuffle=True, persistent_workers=True)
    for _ in range(3):
        for batch in loader:  # each batch is dropped before the next one arrives
            assert np.array_equal(batch["x"].numpy(), src[batch["i"].numpy()])
