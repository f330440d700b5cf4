"""A target's verdict from paired, repeated ratios: met, NOT met, or inconclusive, never a coin flip.

A target compares two things (zcopy_data and the default path, zcopy_data and the machine's gather
limit, ...). Measured in separate processes, their ratio swings by a third from run to run on a
shared 2-core machine, so a goal near the middle is "met" one run and "NOT met" the next. A verdict
here comes instead from rounds in which both sides run in one process, taking turns (A B B A ...):
one ratio per round, several rounds in several processes, and the verdict reads the median ratio
with its spread, the interval between the k-th lowest and the k-th highest ratio, k as large as
keeps that interval a >= 95% distribution-free confidence interval of the median (the min-max for
6 to 8 rounds, the 2nd lowest to the 2nd highest for 9 to 11, ...):

* ``met``: the whole interval is at or above the goal;
* ``NOT met``: the whole interval is below the goal;
* ``inconclusive``: the interval straddles the goal, or fewer than :data:`MIN_ROUNDS` rounds were
  measured (too few for such an interval). ``met`` is then ``None``: this run cannot tell, and says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["CONFIDENCE", "MIN_ROUNDS", "VERDICTS", "classify", "describe", "median_interval"]

CONFIDENCE = 0.95
MIN_ROUNDS = 6
"""Fewer rounds give no verdict: the min-max of 5 ratios covers their median only 94% of the time."""

VERDICTS = ("met", "NOT met", "inconclusive")


def _coverage(n: int, k: int) -> float:
    """P(k-th lowest <= median <= k-th highest) of ``n`` independent ratios (sign test)."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n


def median_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(low, high, coverage)``: the k-th lowest and k-th highest value, k the largest with coverage
    >= :data:`CONFIDENCE`; for fewer than :data:`MIN_ROUNDS` values, the min-max and its (lower) coverage."""
    if not values:
        raise ValueError("an interval of no values")
    xs = sorted(values)
    n, k = len(xs), 1
    while k < (n + 1) // 2 and _coverage(n, k + 1) >= CONFIDENCE:
        k += 1
    return float(xs[k - 1]), float(xs[n - k]), _coverage(n, k)


def classify(ratios: Sequence[float], goal: float) -> dict[str, Any]:
    """The verdict of per-round ratios against ``goal`` (higher is better), as the JSON record keeps it.

    Returns ``value`` (the median ratio), ``goal``, ``ratios`` (per round, in measuring order),
    ``rounds``, ``interval`` ``[low, high]`` with its ``confidence``, ``range`` ``[min, max]``,
    ``met`` (``True``, ``False`` or ``None``) and ``verdict`` (one of :data:`VERDICTS`).
    """
    if not ratios:
        raise ValueError("a verdict needs at least one paired round")
    if any(not math.isfinite(r) for r in ratios):
        raise ValueError(f"ratios should be finite numbers, found {list(ratios)}")
    low, high, coverage = median_interval(ratios)
    met: bool | None
    if len(ratios) < MIN_ROUNDS:
        met = None
    elif low >= goal:
        met = True
    elif high < goal:
        met = False
    else:
        met = None
    return {
        "value": float(statistics.median(ratios)),
        "goal": float(goal),
        "ratios": [float(r) for r in ratios],
        "rounds": len(ratios),
        "interval": [low, high],
        "confidence": round(coverage, 4),
        "range": [float(min(ratios)), float(max(ratios))],
        "met": met,
        "verdict": "met" if met else "NOT met" if met is False else "inconclusive",
    }


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def describe(target: dict[str, Any]) -> str:
    """One line: the median, the goal, how it was measured, and the verdict with its reason."""
    low, high = target["interval"]
    n = target["rounds"]
    verdict = target["verdict"]
    if verdict == "inconclusive":
        if n < MIN_ROUNDS:
            verdict += f" (only {n} paired round{'s' if n != 1 else ''}; a verdict needs {MIN_ROUNDS})"
        else:
            verdict += f" (ratios {_num(low)}-{_num(high)} straddle the goal; rerun on a quiet machine)"
    return (
        f"target {target['name']}: {_num(target['value'])} (goal >= {target['goal']:.3g}; median of {n} "
        f"paired rounds, {target['confidence']:.0%} interval {_num(low)}-{_num(high)}) {verdict}"
    )
