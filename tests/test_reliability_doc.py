"""``docs/RELIABILITY.md`` stays exact: every test it cites exists with the status it claims, and every
test marked ``reliability`` (anywhere under ``tests/``) is cited."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "RELIABILITY.md"
REF = re.compile(r"`(?:((?:\w+/)*test_\w+\.py))?::(test_\w+)(?:\[[^\]`]*\])?`")


def _marks(node: ast.FunctionDef) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _module_marks(tree: ast.Module) -> set[str]:
    """The marks of a module's ``pytestmark`` (one mark or a list of them)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return {
                a.attr
                for v in values
                for a in [v.func if isinstance(v, ast.Call) else v]
                if isinstance(a, ast.Attribute)
            }
    return set()


@functools.cache
def _suite() -> dict[tuple[str, str], set[str]]:
    """(file relative to tests/, test) -> its pytest marks, for every test marked ``reliability``."""
    tests = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module = _module_marks(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = module | _marks(node)
                if "reliability" in marks:
                    tests[(path.relative_to(TESTS).as_posix(), node.name)] = marks
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
    assert len(_suite()) > 100  # the reliability suite is found across the mirror
    assert missing == [], f"tests missing from RELIABILITY.md: {missing}"
