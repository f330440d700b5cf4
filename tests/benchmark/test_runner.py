"""A tiny real run (fresh processes, real loaders): its JSON record, table and chart. No timings asserted."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zcopy_bench import BenchConfig, format_markdown, format_table, plot, run_bench, validate_result
from zcopy_bench.contenders import CONTENDERS, available
from zcopy_bench.runner import MIN_GROUP_RUNS, WORKERS_TOLERANCE, _plan, _targets, _worker_targets
from zcopy_bench.verdict import MIN_ROUNDS, classify, describe

INSTALLED = [n for n in CONTENDERS if available(n)[0]]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(2)
    np.save(folder / "image.npy", rng.integers(0, 256, size=(400, 3, 8, 8), dtype=np.uint8))
    np.save(folder / "label.npy", np.arange(400, dtype=np.int64))
    cfg = BenchConfig(
        source=folder,
        batch_size=64,
        workers=(0, 1),
        repeats=1,
        epochs=1,
        max_pass_s=0.05,
        min_timed_s=0,  # one timed pass per process: the tests check the record, not timings
        rounds=2,
        round_s=0,  # one batch per side and round
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return run_bench(cfg, log=lambda *_: None)


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny real run that measures and judges the targets (on data they are not stated for)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(3)
    np.save(folder / "image.npy", rng.integers(0, 256, size=(512, 3, 8, 8), dtype=np.uint8))
    np.save(folder / "label.npy", np.arange(512, dtype=np.int64))
    cfg = BenchConfig(
        source=folder,
        batch_size=64,
        orders=("shuffle", "block"),
        workers=(0, 2),
        contenders=("default", "zcopy", "plain"),
        repeats=1,
        epochs=1,
        max_pass_s=0.05,
        min_timed_s=0,
        rounds=2,  # x 3 processes: 6 rounds per pair, the fewest that give a verdict
        round_s=0.002,
        check_targets=True,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return run_bench(cfg, log=lambda *_: None)


def test_record_matches_schema(result: dict[str, Any]) -> None:
    validate_result(result)  # raises ValueError naming the first bad key
    again = json.loads(json.dumps(result))  # JSON-ready: no tuples, paths or numpy scalars
    validate_result(again)
    assert again == result
    broken = copy.deepcopy(result)
    del broken["rows"][0]["samples_per_s"]
    with pytest.raises(ValueError, match="samples_per_s"):
        validate_result(broken)


def test_every_installed_contender_has_every_cell(result: dict[str, Any]) -> None:
    cells = {(r["contender"], r["order"], r["workers"]) for r in result["rows"]}
    expected = {
        (n, o, w)
        for n in INSTALLED
        for o in ("seq", "shuffle", "block")
        for w in (0, 1)
        if w >= CONTENDERS[n].min_workers  # the worker-process row exists only with workers
    }
    assert cells == expected
    assert ("plain", "shuffle", 1) in cells and ("plain", "shuffle", 0) in cells
    assert {s["contender"] for s in result["skipped"]} == set(CONTENDERS) - set(INSTALLED)
    assert set(result["contenders"]) == set(INSTALLED)


def test_rows_are_consistent(result: dict[str, Any]) -> None:
    sample_bytes = 3 * 8 * 8 + 8
    assert result["data"]["sample_bytes"] == sample_bytes
    for r in result["rows"]:
        assert r["gb_per_s"] == pytest.approx(r["samples_per_s"] * sample_bytes / 1e9)
        assert r["runs"] == 1
        lim = result["limits"][r["order"]]["gather_1t"]["samples_per_s"]
        assert r["fraction_of_gather_1t"] == pytest.approx(r["samples_per_s"] / lim)
        if r["contender"] == "default":
            assert r["ratio_to_default"] == pytest.approx(1.0)
    zcopy = {(r["order"], r["workers"]): r["copies_per_batch"] for r in result["rows"] if r["contender"] == "zcopy"}
    assert zcopy[("seq", 0)] == 0.0  # a view
    assert zcopy[("shuffle", 0)] == 1.0  # one gather
    assert zcopy[("shuffle", 1)] == 1.0  # gathered into shared memory: the crossing is a handle


def test_machine_and_versions(result: dict[str, Any]) -> None:
    m = result["machine"]
    assert m["cpus"] >= 1
    assert m["libraries"]["torch"] and m["libraries"]["numpy"] and m["libraries"]["zcopy-data"]
    for library, contender in (("tensordict", "tensordict"), ("datasets", "hf")):
        assert (m["libraries"][library] is not None) == (contender in INSTALLED)


def test_targets_only_for_the_reference_data(result: dict[str, Any]) -> None:
    assert result["targets"] == []  # the goals are stated for generated (3, 64, 64) images at batch 256
    assert "\ntarget " not in format_table(result)  # and nothing else is printed as a verdict
    assert result["config"]["check_targets"] is None


def test_targets_are_judged_from_given_per_round_rates() -> None:
    zcopy, gather, default, plain = [700.0] * 6, [800.0] * 6, [100.0, 150.0, 160, 170, 180, 250], [600.0] * 6
    groups = {
        ("shuffle", "zcopy:0", "limit:gather_1t"): {"zcopy:0": zcopy, "limit:gather_1t": gather},
        ("shuffle", "zcopy:0", "default:0"): {"zcopy:0": zcopy, "default:0": default},
        ("shuffle", "plain:0", "zcopy:0"): {"plain:0": plain, "zcopy:0": zcopy},
        ("block", "zcopy:2", "default:2"): {"zcopy:2": [2100.0] * 6, "default:2": [100.0] * 6},
    }
    targets = {t["name"]: t for t in _targets(groups)}
    assert list(targets) == [
        "zcopy shuffle 0 workers: fraction of the 1-thread gather limit",
        "zcopy shuffle 0 workers: x default path",
        "plain shuffle 0 workers: fraction of zcopy (within 10%)",
        "zcopy block 2 workers: x default path with 2 workers",
    ]  # plain over the default path and zcopy with 2 workers shuffled were not paired: no target
    frac = targets["zcopy shuffle 0 workers: fraction of the 1-thread gather limit"]
    assert frac["value"] == 0.875 and frac["verdict"] == "NOT met" and frac["sides"] == "zcopy:0 / limit:gather_1t"
    x_default = targets["zcopy shuffle 0 workers: x default path"]
    assert x_default["ratios"] == [7.0, 700 / 150, 700 / 160, 700 / 170, 700 / 180, 2.8]
    assert x_default["verdict"] == "inconclusive" and x_default["met"] is None
    assert targets["plain shuffle 0 workers: fraction of zcopy (within 10%)"]["verdict"] == "NOT met"
    assert targets["zcopy block 2 workers: x default path with 2 workers"]["met"] is True

    paired = [{"order": "seq", "workers": 2, "ratio": 0.99, "ratios": [0.99, 1.0, 0.985, 1.01, 0.99, 1.0]}]
    (never_slower,) = _worker_targets(paired)
    assert never_slower["goal"] == 1 - WORKERS_TOLERANCE and "to within 2%" in never_slower["name"]
    assert never_slower["verdict"] == "met"
    assert _worker_targets([{**paired[0], "ratios": [0.97, 0.99, 1.0, 0.985, 1.01, 0.99]}])[0]["met"] is None
    assert _worker_targets([{**paired[0], "ratios": [0.9, 0.95, 0.97, 0.96, 0.92, 0.979]}])[0]["met"] is False
    assert _worker_targets([{**paired[0], "workers": 4}]) == []  # the goal is stated for 2 workers


def test_every_pair_runs_in_several_processes() -> None:
    cfg = BenchConfig(orders=("shuffle", "block"), workers=(0, 2), repeats=1)
    names = ["default", "zcopy", "plain"]
    plan = _plan(cfg, names, targets=True)
    groups = [(order, pair) for name, order, _, pair in plan if name == "group"]
    assert {(o, p) for o, p in groups} == {
        ("shuffle", ("zcopy:0", "limit:gather_1t")),
        ("shuffle", ("zcopy:0", "default:0")),
        ("shuffle", ("plain:0", "default:0")),
        ("shuffle", ("plain:0", "zcopy:0")),
        ("shuffle", ("zcopy:2", "zcopy:0")),
        ("shuffle", ("zcopy:2", "default:2")),
        ("block", ("zcopy:2", "zcopy:0")),
        ("block", ("zcopy:2", "default:2")),
    }
    assert all(groups.count(g) == MIN_GROUP_RUNS for g in groups)  # one repeat, but 3 processes per pair
    assert sum(name == "default" for name, *_ in plan) == 4  # the rows are still measured once per repeat
    assert [g for g in _plan(cfg, names) if g[0] == "group"] == [  # no targets: only the workers pairs
        *[("group", o, 2, ("zcopy:2", "zcopy:0")) for o in ("shuffle", "block")] * MIN_GROUP_RUNS
    ]
    assert [g for g in _plan(cfg, ["default"], targets=True) if g[0] == "group"] == []  # no zcopy, no pair


@pytest.mark.reliability
def test_measured_targets_have_a_verdict_only_from_paired_rounds(judged: dict[str, Any]) -> None:
    validate_result(judged)
    names = [t["name"] for t in judged["targets"]]
    assert names == [
        "zcopy shuffle 0 workers: fraction of the 1-thread gather limit",
        "zcopy shuffle 0 workers: x default path",
        "plain shuffle 0 workers: x default path",
        "plain shuffle 0 workers: fraction of zcopy (within 10%)",
        "zcopy shuffle 2 workers: x default path with 2 workers",
        "zcopy block 2 workers: x default path with 2 workers",
        "zcopy shuffle: 2 workers / 0 workers, paired in one process (never slower, to within 2%)",
        "zcopy block: 2 workers / 0 workers, paired in one process (never slower, to within 2%)",
    ]
    table = format_table(judged)
    for t in judged["targets"]:
        assert t["rounds"] == len(t["ratios"]) == MIN_GROUP_RUNS * 2 == MIN_ROUNDS  # 3 processes x 2 rounds
        assert all(r > 0 for r in t["ratios"])
        assert classify(t["ratios"], t["goal"]) == {
            k: v for k, v in t.items() if k not in ("name", "sides")
        }  # the verdict is the classification of the measured per-round ratios, nothing else
        assert describe(t) in table.splitlines()
        # the same measured ratios, judged against goals below, above and inside their interval
        low, high = t["interval"]
        assert classify(t["ratios"], low)["verdict"] == "met"
        assert classify(t["ratios"], high * 1.001)["verdict"] == "NOT met"
        if low < high:
            assert classify(t["ratios"], (low + high) / 2)["verdict"] == "inconclusive"
    verdict_lines = [line for line in table.splitlines() if line.startswith("target ")]
    assert len(verdict_lines) == len(judged["targets"])
    assert all(line.endswith((" met", " NOT met")) or "inconclusive (ratios " in line for line in verdict_lines)
    paired = {(p["order"], p["workers"]): p for p in judged["paired"]}
    never_slower = judged["targets"][-1]
    assert never_slower["ratios"] == paired[("block", 2)]["ratios"]
    broken = copy.deepcopy(judged)
    broken["targets"][0]["verdict"] = "met" if broken["targets"][0]["met"] is not True else "NOT met"
    with pytest.raises(ValueError, match=r"targets\[0\]: verdict"):
        validate_result(broken)


def test_workers_and_no_workers_are_also_measured_in_one_process(result: dict[str, Any]) -> None:
    assert {(p["order"], p["workers"]) for p in result["paired"]} == {(o, 1) for o in ("seq", "shuffle", "block")}
    for p in result["paired"]:
        assert len(p["ratios"]) == MIN_GROUP_RUNS * 2  # 3 processes of 2 rounds, though only one repeat
        assert p["ratio"] == statistics.median(p["ratios"])
        assert all(r > 0 for r in p["ratios"])
    assert "paired shuffle: zcopy with 1 workers / no workers" in format_table(result)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("rows", 0, "samples_per_s"), "fast", r"rows\[0\]\.samples_per_s: expected int or float, found str"),
        (("rows", 0, "workers"), True, r"rows\[0\]\.workers: expected int, found bool"),
        (("machine", "cpus"), None, r"machine\.cpus: expected int"),
        (("rows", 0, "order"), "zigzag", r"'zigzag' has no entry in result\.limits"),
        (("rows", 0, "runs"), 5, r"runs=5 but 1 rates"),
        (("limits", "seq", "gather_1t", "gb_per_s"), "x", r"limits\.seq\.gather_1t\.gb_per_s"),
        (("paired", 0, "ratio"), None, r"paired\[0\]\.ratio: expected int or float"),
    ],
)
def test_schema_rejects_wrong_types(result: dict[str, Any], path: tuple[Any, ...], value: Any, message: str) -> None:
    bad = copy.deepcopy(result)
    obj = bad
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        validate_result(bad)


@pytest.mark.parametrize("key", ["rows", "machine", "limits", "schema_version"])
def test_schema_rejects_missing_keys(result: dict[str, Any], key: str) -> None:
    bad = copy.deepcopy(result)
    del bad[key]
    with pytest.raises(ValueError, match=f"missing key.*{key}"):
        validate_result(bad)


def test_table_markdown_and_chart(result: dict[str, Any], tmp_path: Path) -> None:
    table = format_table(result)
    for name in INSTALLED:
        assert f"\n{name} " in table
    assert "limit shuffle" in table
    md = format_markdown(result).splitlines()
    assert len(md) == 2 + len(result["rows"])
    png = plot(result, tmp_path / "sub" / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 should be >= 1"),
        ({"orders": ("seq", "zigzag")}, "order 'zigzag' should be one of seq, shuffle, block"),
        ({"workers": (0, -1)}, r"workers=\(0, -1\) should all be >= 0"),
        ({"contenders": ("default", "ffcv")}, "contender 'ffcv' should be one of"),
        ({"repeats": 0}, "repeats=0 and epochs=3 should be >= 1"),
        ({"max_pass_s": 0}, "max_pass_s=0 should be > 0"),
        ({"min_timed_s": -1}, "min_timed_s=-1 should be >= 0"),
        ({"threads": 0}, "threads=0 should be >= 1"),
        ({"rounds": 0}, "rounds=0 should be >= 1"),
        ({"round_s": -0.1}, "round_s=-0.1 should be >= 0"),
    ],
)
def test_config_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kw)


def test_quick_is_smaller() -> None:
    quick, full = BenchConfig.quick(), BenchConfig()
    assert quick.n < full.n and quick.repeats < full.repeats and quick.workers == (0,)
    assert BenchConfig.quick(n=123).n == 123
