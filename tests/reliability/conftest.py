"""Helpers for the adversarial suite: isolated child processes and shared-memory accounting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def shm_available() -> None:
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm")
