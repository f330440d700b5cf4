"""``docs/RELIABILITY.md`` stays exact: every test it cites exists with the status it claims, and every
test of this suite is cited."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "docs" / "RELIABILITY.md"
REF = re.compile(r"`(?:(test_\w+\.py))?::(test_\w+)(?:\[[^\]`]*\])?`")


def _marks(node: ast.FunctionDef) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _suite() -> dict[tuple[str, str], set[str]]:
    """(file, test) -> the pytest marks on it, for every test function of this folder."""
    tests = {}
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                tests[(path.name, node.name)] = _marks(node)
    return tests


def _rows() -> list[tuple[str, list[tuple[str, str]]]]:
    """(status, cited tests) for every table row of the document."""
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        refs, current = [], None
        for file, name in REF.findall(line):
            current = file or current
            if current is not None:
                refs.append((current, name))
        if refs:
            rows.append((cells[-1], refs))
    return rows


def test_the_document_cites_tests() -> None:
    assert len(_rows()) > 50


@pytest.mark.parametrize(("status", "refs"), _rows(), ids=lambda v: v if isinstance(v, str) else v[0][1])
def test_every_cited_test_exists_with_the_claimed_status(status: str, refs: list[tuple[str, str]]) -> None:
    suite = _suite()
    for ref in refs:
        assert ref in suite, f"RELIABILITY.md cites {ref[0]}::{ref[1]}, which does not exist"
        marks = suite[ref]
        if status == "pass":
            assert "xfail" not in marks, f"{ref[1]} is listed as passing but marked xfail"
        elif status.startswith("xfail"):
            assert "xfail" in marks, f"{ref[1]} is listed as xfail but not marked so"
        elif status == "not run":
            assert "cuda" in marks, f"{ref[1]} is listed as not run but is not a cuda test"
        else:
            pytest.fail(f"unknown status {status!r} for {ref[1]}")


def test_every_test_of_the_suite_is_in_the_document() -> None:
    cited = {ref for _, refs in _rows() for ref in refs}
    missing = sorted(f"{f}::{t}" for f, t in _suite() if (f, t) not in cited and f != Path(__file__).name)
    assert missing == [], f"tests missing from RELIABILITY.md: {missing}"
