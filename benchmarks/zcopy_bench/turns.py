"""Contenders taking turns in one process: an endless batch stream each, a rate over a few tenths
of a second, and rounds in alternating order (A B C, C B A, ...) for ``verdict.classify``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["forever", "paired_rounds", "rate"]


def forever(epoch: Callable[[int], Iterable[Any]]) -> Callable[[], Any]:
    """The next batch of an endless stream: ``epoch(0)``, then ``epoch(1)``, ... back to back."""

    def batches() -> Iterator[Any]:
        e = 0
        while True:
            yield from epoch(e)
            e += 1

    it = batches()
    return lambda: next(it)


def rate(get: Callable[[], Any], seconds: float, per_batch: int) -> float:
    """Samples per second over at least ``seconds``, holding the previous batch as a trainer does."""
    held = get()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        held = get()
        n += 1
    del held
    return n * per_batch / elapsed


def paired_rounds(
    contenders: dict[str, Callable[[], Any]], rounds: int, seconds: float, per_batch: int
) -> list[dict[str, float]]:
    """One rate per contender per round, the order reversed every other round."""
    names = list(contenders)
    out = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        out.append({n: rate(contenders[n], seconds, per_batch) for n in order})
    return out
