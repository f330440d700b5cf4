"""The benchmark lives outside the wheel and uses only the package's public surface."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import zcopy_data

ROOT = Path(__file__).resolve().parents[2]


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zcopy_data":
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "zcopy_data"]
        private = [n for n in names if any(part.startswith("_") for part in n.split(".")[1:])]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in private]
    return found


def test_nothing_in_benchmarks_imports_a_private_module():
    files = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) >= 8  # the runner, contenders, peers ... and the stand-alone benchmarks
    assert [f for f in files for f in _private_imports(f)] == []


def test_the_private_import_check_can_fail():
    bad = ROOT / "benchmarks" / "zcopy_bench" / "_probe_for_test.py"
    bad.write_text("from zcopy_data.memory import _x\nimport zcopy_data._mapping\n")
    try:
        assert len(_private_imports(bad)) == 2
    finally:
        bad.unlink()


def test_the_wheel_carries_no_benchmark():
    assert not (Path(zcopy_data.__file__).parent / "benchmark").exists()
    assert "zcopy_bench" not in {p.name for p in Path(zcopy_data.__file__).parent.iterdir()}


def test_bench_is_found_from_a_checkout_and_explained_elsewhere(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "from zcopy_data import cli; print(cli._bench('contenders').__file__)"
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).parent == ROOT / "benchmarks" / "zcopy_bench"
    # from elsewhere, with the package's own folder hidden: a clear message, not an ImportError
    code = (
        "from pathlib import Path; from zcopy_data import cli; "
        f"cli.__file__ = {str(tmp_path / 'pkg' / 'cli.py')!r}; cli._bench('contenders')"
    )
    missing = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "not shipped in the wheel" in missing.stderr and "make bench" in missing.stderr
    assert "Traceback" not in missing.stderr
