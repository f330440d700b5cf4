"""A tiny real run (fresh processes, real loaders): its JSON record, table and chart. No timings asserted."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zcopy_bench import BenchConfig, format_markdown, format_table, plot, run_bench, validate_result
from zcopy_bench.contenders import CONTENDERS, available
from zcopy_bench.runner import _targets, _worker_targets

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
    targets = _targets(result["rows"])
    assert [t["goal"] for t in targets] == [0.9, 4.0, 4.0, 0.9]
    cell = {(r["contender"], r["order"], r["workers"]): r for r in result["rows"]}
    zcopy, plain = cell[("zcopy", "shuffle", 0)], cell[("plain", "shuffle", 0)]
    assert targets[0]["value"] == zcopy["fraction_of_gather_1t"]
    assert targets[1]["value"] == zcopy["ratio_to_default"]
    assert targets[2]["value"] == plain["ratio_to_default"]
    assert targets[3]["value"] == pytest.approx(plain["samples_per_s"] / zcopy["samples_per_s"])
    for t in targets:
        assert t["met"] == (t["value"] >= t["goal"])
    paired = [{"order": "seq", "workers": 2, "ratio": 0.97, "ratios": [0.97]}]
    (never_slower,) = _worker_targets(paired)
    assert never_slower["goal"] == 0.995 and never_slower["value"] == 0.97 and not never_slower["met"]
    spread = {**paired[0], "ratio": 0.99, "ratios": [0.97, 0.99, 1.01]}  # +-2% between processes
    (within,) = _worker_targets([spread])
    assert within["goal"] == pytest.approx(0.98) and within["met"] and "+-2.0%" in within["name"]
    noisy = {**paired[0], "ratios": [0.8, 1.2]}
    assert _worker_targets([noisy])[0]["goal"] == 0.97  # the tolerance never exceeds 3%
    assert _worker_targets([{**paired[0], "workers": 4}]) == []  # the goal is stated for 2 workers


def test_workers_and_no_workers_are_also_measured_in_one_process(result: dict[str, Any]) -> None:
    assert {(p["order"], p["workers"]) for p in result["paired"]} == {(o, 1) for o in ("seq", "shuffle", "block")}
    for p in result["paired"]:
        assert len(p["ratios"]) == 1  # one process per repeat
        assert p["ratio"] == p["ratios"][0] > 0
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
    ],
)
def test_config_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kw)


def test_quick_is_smaller() -> None:
    quick, full = BenchConfig.quick(), BenchConfig()
    assert quick.n < full.n and quick.repeats < full.repeats and quick.workers == (0,)
    assert BenchConfig.quick(n=123).n == 123
