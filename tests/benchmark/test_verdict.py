"""A target's verdict from per-round ratios: met, NOT met or inconclusive, at and around the boundaries.

No timings: the ratios are given; ``test_runner.py`` judges ratios measured in a real run.
"""

from __future__ import annotations

import math

import pytest
from zcopy_bench.verdict import CONFIDENCE, MIN_ROUNDS, VERDICTS, classify, describe, median_interval

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize(
    ("ratios", "goal", "verdict"),
    [
        ([1.0] * 6, 1.0, "met"),  # the interval's low end on the goal clears it
        ([0.9, 0.95, 1.0, 1.1, 1.2, 1.3], 0.9, "met"),  # 6 rounds: the min-max, the min on the goal
        ([0.89, 0.95, 1.0, 1.1, 1.2, 1.3], 0.9, "inconclusive"),  # one round of six below
        ([0.8, 0.85, 0.86, 0.87, 0.88, 0.8999], 0.9, "NOT met"),  # every round below
        ([0.8, 0.85, 0.86, 0.87, 0.88, 0.9], 0.9, "inconclusive"),  # the high end on the goal: not below it
        ([2.9, 3.5, 3.9, 4.1, 4.19, 4.6, 5.0], 4.0, "inconclusive"),  # the demo's old coin flip
        ([0.5, *[1.0] * 8], 0.9, "met"),  # 9 rounds: 2nd lowest to 2nd highest, one outlier is trimmed
        ([0.5, 0.5, *[1.0] * 7], 0.9, "inconclusive"),  # two are not
        ([*[0.8] * 8, 5.0], 0.9, "NOT met"),  # one high outlier of nine neither
        ([0.1, 0.2, *[1.0] * 10], 0.9, "met"),  # 12 rounds: 3rd lowest to 3rd highest
        ([0.1, 0.2, 0.3, *[1.0] * 9], 0.9, "inconclusive"),
        ([10.0] * (MIN_ROUNDS - 1), 1.0, "inconclusive"),  # too few rounds for any verdict
        ([0.1] * (MIN_ROUNDS - 1), 1.0, "inconclusive"),
    ],
)
def test_verdict_at_the_boundaries(ratios: list[float], goal: float, verdict: str) -> None:
    t = classify(ratios, goal)
    assert t["verdict"] == verdict
    assert t["met"] is {"met": True, "NOT met": False, "inconclusive": None}[verdict]
    assert t["rounds"] == len(ratios) and t["ratios"] == ratios and t["goal"] == goal
    assert t["range"] == [min(ratios), max(ratios)]
    low, high = t["interval"]
    assert min(ratios) <= low <= t["value"] <= high <= max(ratios)
    if verdict == "met":
        assert low >= goal
    elif verdict == "NOT met":
        assert high < goal
    elif len(ratios) >= MIN_ROUNDS:
        assert low < goal <= high  # straddles


def test_the_verdict_ignores_round_order_and_scales_with_the_goal() -> None:
    ratios = [1.3, 0.95, 1.1, 1.0, 1.2, 0.97, 1.05]
    assert classify(ratios, 0.9)["verdict"] == classify(sorted(ratios), 0.9)["verdict"] == "met"
    for goal in (0.5, 0.9, 0.95, 1.0, 1.1, 1.3, 1.31, 2.0):
        scaled = classify([3 * r for r in ratios], 3 * goal)
        assert scaled["verdict"] == classify(ratios, goal)["verdict"]
    # moving the goal up across the ratios goes met -> inconclusive -> NOT met, never back
    order = [classify(ratios, g / 100)["verdict"] for g in range(80, 140)]
    assert order == sorted(order, key=["met", "inconclusive", "NOT met"].index)
    assert set(order) == set(VERDICTS)


@pytest.mark.parametrize("n", range(1, 41))
def test_the_interval_is_a_95_percent_interval_of_the_median(n: int) -> None:
    xs = [float(i) for i in range(n)]
    low, high, coverage = median_interval(xs[::-1])
    k = int(low) + 1  # the k-th lowest and k-th highest
    assert high == n - k and low <= (n - 1) / 2 <= high

    def cover(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    assert coverage == pytest.approx(cover(k))
    if n >= MIN_ROUNDS:
        assert coverage >= CONFIDENCE
        assert k == (n + 1) // 2 or cover(k + 1) < CONFIDENCE  # the narrowest that keeps 95%
    else:
        assert k == 1 and coverage < CONFIDENCE  # why fewer rounds give no verdict


def test_bad_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one paired round"):
        classify([], 1.0)
    with pytest.raises(ValueError, match="finite"):
        classify([1.0, math.nan, 1.0], 1.0)
    with pytest.raises(ValueError, match="finite"):
        classify([1.0, math.inf], 1.0)


def test_the_printed_line_says_how_it_was_measured_and_why_it_is_inconclusive() -> None:
    name = "zcopy shuffle 0 workers: x default path"
    met = describe({"name": name, **classify([4.2, 4.5, 4.4, 4.3, 4.6, 4.1], 4.0)})
    assert met == f"target {name}: 4.350 (goal >= 4; median of 6 paired rounds, 97% interval 4.100-4.600) met"
    assert describe({"name": name, **classify([3.2, 3.5, 3.4, 3.3, 3.6, 3.1], 4.0)}).endswith(" NOT met")
    straddle = describe({"name": name, **classify([2.9, 3.5, 3.9, 4.1, 4.19, 4.6, 5.0], 4.0)})
    assert straddle.endswith("inconclusive (ratios 2.900-5.000 straddle the goal; rerun on a quiet machine)")
    few = describe({"name": name, **classify([9.0, 9.5], 4.0)})
    assert few.endswith(f"inconclusive (only 2 paired rounds; a verdict needs {MIN_ROUNDS})")
    assert "20.5 (goal >= 20;" in describe({"name": name, **classify([20.5] * 6, 20.0)})
