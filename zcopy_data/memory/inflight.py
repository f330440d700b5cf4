"""Host memory kept referenced until the non-blocking device copies reading it have completed.

A pooled buffer is reused only when no tensor references its storage, so holding the host
tensors of a copy here until the copy's event completes is what keeps a pool from rewriting a
buffer the device is still reading.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["hold_until", "inflight", "reap"]

_inflight: deque[tuple[Any, Sequence[Any]]] = deque()
_lock = threading.Lock()


def hold_until(event: Any, refs: Sequence[Any]) -> None:
    """Keep ``refs`` (host tensors a non-blocking copy reads) referenced until ``event`` completes."""
    with _lock:
        _inflight.append((event, refs))
    reap()


def reap(*, wait_one: bool = False) -> bool:
    """Drop the references of completed copies (oldest first). ``wait_one``: block on the oldest.

    Returns True when something was released.
    """
    if not _inflight:
        return False
    if wait_one:
        with _lock:
            oldest = _inflight[0][0] if _inflight else None
        if oldest is not None:
            oldest.synchronize()  # outside the lock: other threads keep issuing copies meanwhile
    released = False
    with _lock:
        while _inflight and _inflight[0][0].query():
            _inflight.popleft()
            released = True
    return released


def inflight() -> int:
    """How many copies still hold host memory (for tests and diagnostics)."""
    with _lock:
        return len(_inflight)
