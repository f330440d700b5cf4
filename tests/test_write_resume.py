"""``write`` interrupted by SIGKILL and run again gives the bytes of an uninterrupted run; output is deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT
from zcopy_data.writer import INDEX_NAME, write

N = 20_000
# 8x8x3 uint8 + int64 label + a str offset = 204 B a row: shards of 4096 rows (5 shards), record batches of 512
SIZES = {"shard_size": 204 * 4096, "record_batch_size": 204 * 512}


def make_samples(n: int = N) -> list[dict[str, Any]]:
    """Dicts of small PIL images, labels and captions: the Python objects workers copy on read."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return [{"image": Image.fromarray(pixels[i]), "label": i % 10, "caption": f"sample {i}"} for i in range(n)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of one uninterrupted write, in this process."""
    out = tmp_path_factory.mktemp("reference")
    write(make_samples(), out, progress=False, **SIZES)
    return files_of(out)


_CHILD = """
import sys, time
from tests.test_write_resume import SIZES, make_samples
from zcopy_data.writer import write

class StallsHalfway(list):
    # the same samples; reads past the middle crawl, so the parent's SIGKILL lands mid-shard
    def __getitem__(self, i):
        if i >= len(self) // 2:
            time.sleep(0.05)
        return super().__getitem__(i)

write(StallsHalfway(make_samples()), sys.argv[1], progress=False, **SIZES)
"""


def _kill_halfway(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), str(out)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        # shards 0 and 1 (rows 0..8191) complete, shard 2 (8192..12287) stalls at row 10000
        while not (out / ".shard-00002.arrow.partial").exists() or not (out / "shard-00001.arrow.done.json").exists():
            assert child.poll() is None, f"the writer exited early with {child.returncode}"
            assert time.monotonic() < deadline, "the writer never reached shard 2"
            time.sleep(0.01)
        time.sleep(0.2)  # let it write a few record batches of shard 2 into the temp file
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.reliability
def test_a_write_killed_halfway_resumes_into_the_same_bytes(tmp_path, reference):
    out = tmp_path / "shards"
    _kill_halfway(out)
    left = sorted(p.name for p in out.iterdir())
    assert INDEX_NAME not in left  # the index is written last
    assert left == [
        ".shard-00002.arrow.partial",
        "shard-00000.arrow",
        "shard-00000.arrow.done.json",
        "shard-00001.arrow",
        "shard-00001.arrow.done.json",
    ]
    assert (out / ".shard-00002.arrow.partial").stat().st_size > 0
    before = {k: (out / f"shard-0000{k}.arrow").stat() for k in (0, 1)}

    report = write(make_samples(), out, progress=False, **SIZES)

    assert (report.kept, report.written, report.shards, report.rows) == (2, 3, 5, N)
    for k, st in before.items():  # kept, not rewritten
        now = (out / f"shard-0000{k}.arrow").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert files_of(out) == reference  # byte-identical, and no partial file or sidecar left


@pytest.mark.reliability
def test_a_corrupted_shard_is_written_again(tmp_path, reference):
    out = tmp_path / "shards"
    _kill_halfway(out)
    shard = out / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the SHA-256 can tell
    shard.write_bytes(bytes(data))
    report = write(make_samples(), out, progress=False, **SIZES)
    assert (report.kept, report.written) == (1, 4)
    assert files_of(out) == reference


def test_rerunning_a_complete_write_keeps_every_shard(tmp_path, reference):
    out = tmp_path / "shards"
    write(make_samples(), out, progress=False, **SIZES)
    report = write(make_samples(), out, progress=False, **SIZES)
    assert (report.kept, report.written) == (5, 0)
    assert files_of(out) == reference


def test_other_arguments_rewrite_every_shard_and_drop_stale_ones(tmp_path):
    out = tmp_path / "shards"
    samples = make_samples(3000)
    write(samples, out, progress=False, shard_size=204 * 512, record_batch_size=204 * 512)
    assert len(json.loads((out / INDEX_NAME).read_text())["shards"]) == 6
    report = write(samples, out, progress=False, shard_size=204 * 1024, record_batch_size=204 * 512)
    assert (report.kept, report.written, report.shards) == (0, 3, 3)
    assert sorted(p.name for p in out.iterdir()) == [*(f"shard-0000{k}.arrow" for k in range(3)), INDEX_NAME]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_parallel_workers_write_the_same_bytes(tmp_path, reference, start_method):
    out = tmp_path / "shards"
    report = write(make_samples(), out, progress=False, workers=2, start_method=start_method, **SIZES)
    assert (report.written, report.shards) == (5, 5)
    assert files_of(out) == reference


def test_an_iterable_writes_the_same_bytes_and_resumes(tmp_path, reference):
    out = tmp_path / "shards"
    report = write(iter(make_samples()), out, progress=False, **SIZES)
    assert report.rows == N
    assert files_of(out) == reference
    (out / "shard-00003.arrow").unlink()
    report = write(iter(make_samples()), out, progress=False, **SIZES)
    assert (report.kept, report.written) == (4, 1)
    assert files_of(out) == reference
