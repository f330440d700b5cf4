"""Helpers for the adversarial suite: isolated child processes, epochs, shared-memory accounting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import get_worker_info

from zcopy_data import NumpyDataset, _mapping

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


def run_isolated(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, so a crash (SIGSEGV, SIGBUS) cannot take pytest down."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def torch_segments(pids: list[int]) -> list[str]:
    """Shared-memory segments in ``/dev/shm`` created by these processes (torch names them by pid).

    Filtering by pid keeps the check exact while other test runs share the machine.
    """
    if not SHM.is_dir():
        return []
    prefixes = tuple(f"torch_{pid}_" for pid in pids)
    return sorted(name for name in os.listdir(SHM) if name.startswith(prefixes))


def consume(loader: Iterable[Any]) -> list[Any]:
    """Every batch of one epoch; the workers are shut down even when a batch raises.

    A failed epoch's iterator otherwise stays alive through the exception's traceback, and the
    next loader's forked workers inherit it: PyTorch then stalls up to 2 x 5 s in worker joins
    (seen with ``default_collate`` too). Shutting down explicitly keeps each test independent.
    """
    it = iter(loader)
    try:
        return list(it)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()


class ExitingDataset(NumpyDataset):
    """A ``NumpyDataset`` whose worker process dies on the batch holding ``fatal``.

    ``code >= 0`` exits with ``os._exit(code)``; ``code < 0`` kills the worker with signal ``-code``.

    Lives in an importable module so that spawned workers can unpickle it.
    """

    def __init__(self, columns: dict[str, Any], fatal: int, code: int = 7) -> None:
        super().__init__(columns)
        self.fatal, self.code = fatal, code

    def __getitems__(self, indices: Any) -> Any:
        if get_worker_info() is not None and self.fatal in list(indices):
            if self.code < 0:  # die by this signal (a native crash, the OOM killer)
                os.kill(os.getpid(), -self.code)
                time.sleep(10)
            os._exit(self.code)
        return super().__getitems__(indices)


class SleepingDataset(NumpyDataset):
    """A ``NumpyDataset`` whose workers hang on the batch holding ``stuck`` (a deadlock stand-in)."""

    def __init__(self, columns: dict[str, Any], stuck: int, seconds: float = 60) -> None:
        super().__init__(columns)
        self.stuck, self.seconds = stuck, seconds

    def __getitems__(self, indices: Any) -> Any:
        if get_worker_info() is not None and self.stuck in list(indices):
            time.sleep(self.seconds)
        return super().__getitems__(indices)


def let_go(err: BaseException) -> None:
    """Release, now, the frames ``err``'s traceback holds: a failed ``DataLoader`` iterator among them.

    Kept alive by its exception, a worker-process iterator is reclaimed later by the cycle
    collector, which finalises its queues before it: the shutdown message never reaches the
    workers, and PyTorch waits 5 s per worker before it terminates them, in whichever later test
    the collection happens. Released here, it shuts down at once, as it does in a loop that
    drops the exception.
    """
    traceback.clear_frames(err.__traceback__)  # type: ignore[arg-type]


@contextmanager
def loader_raises(expected: type[BaseException], match: str | None = None) -> Iterator[pytest.ExceptionInfo[Any]]:
    """``pytest.raises`` around a ``DataLoader``'s iteration, the failed iterator let go (see :func:`let_go`)."""
    with pytest.raises(expected, match=match) as err:
        yield err
    let_go(err.value)


def in_a_file_mapping(t: torch.Tensor) -> bool:
    """Whether ``t``'s data lies inside a file mapping this process holds (a view of a file, not a copy)."""
    ptr = t.data_ptr()
    return any(r.start <= ptr < r.stop for r in list(_mapping._ranges.values()))
