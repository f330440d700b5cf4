#!/usr/bin/env bash
# The GPU check, in one go, on a bare machine with a GPU: install, run the `cuda` tests, run the
# transfer benchmark, and write one JSON report.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else benchmarks/results)
#
# Writes OUT_DIR/gpu_check.json (card, test counts, benchmark figures, pass/fail per target), plus
# OUT_DIR/pytest_cuda.xml, OUT_DIR/transfer_bench.json and the logs. Needs no network: the
# package runs from this folder (PYTHONPATH), the machine's own torch is kept, and pip (short
# timeouts) is tried only for what is missing (numpy, pytest).
# Environment knobs: PYTHON; BENCH_ARGS (extra transfer_bench.py arguments, e.g.
# "--samples 20000"); GPU_CHECK_DEVICE (default cuda; "cpu" dry-runs the plumbing);
# GPU_CHECK_NO_INSTALL=1 (use the environment as it is); GPU_CHECK_SUITE_S (seconds for the rest of
# the test suite with a CUDA build of torch, where pinning and streams are real; default 180, 0 skips);
# GPU_CHECK_SUITE_PATHS (what that step runs; default tests).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ]; then
  say "no python with torch found; set PYTHON=/path/to/python"
  exit 2
fi
say "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'))"
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"

# 1. install (best effort, never replacing torch) ------------------------------------------------
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=10 PIP_RETRIES=0
pip_try() { timeout 60 "$PY" -m pip install --no-input "$@" >>"$OUT_DIR/pip.log" 2>&1; }
installed() { (cd / && "$PY" -c "import $1") >/dev/null 2>&1; }  # not from this folder: really installed?
# The cuda tests and the benchmark need torch, numpy and pytest only; the package itself runs
# from this folder. pip is used only when something is missing, and never to replace torch.
if [ -n "${GPU_CHECK_NO_INSTALL:-}" ]; then
  say "GPU_CHECK_NO_INSTALL set: installing nothing"
elif installed numpy && installed pytest; then
  say "torch, numpy and pytest present: nothing to install"
elif timeout 120 "$PY" -m pip install --no-input -c scripts/constraints.txt -e ".[dev]" >>"$OUT_DIR/pip.log" 2>&1; then
  say "installed -e .[dev]"
elif pip_try numpy pytest; then
  say "installed numpy and pytest (the full [dev] extra was not installable)"
else
  say "WARNING: pip could not install numpy/pytest (no package index?); see pip.log"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
[ "$TORCH_BEFORE" = "$TORCH_AFTER" ] || say "WARNING: torch changed from $TORCH_BEFORE to $TORCH_AFTER"
"$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1 || [ "$DEVICE" != "cuda" ] || say "WARNING: torch sees no CUDA device"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv \
  >"$OUT_DIR/nvidia_smi.csv" 2>/dev/null || true

# 2. the cuda tests -------------------------------------------------------------------------------
# Only modules that hold cuda tests are collected, so optional dependencies of other modules
# (pyarrow, Pillow, Lightning) need not be installed here.
mapfile -t CUDA_FILES < <(grep -rlE "pytest\.mark\.cuda|pytestmark = pytest\.mark\.cuda" tests --include='test_*.py' | sort)
say "cuda test modules: ${CUDA_FILES[*]:-none}"
T0=$SECONDS
if [ "${#CUDA_FILES[@]}" -gt 0 ]; then
  timeout 240 "$PY" -m pytest -m cuda -p no:cacheprovider -W "ignore::pytest.PytestConfigWarning" -rA \
    --continue-on-collection-errors \
    --junitxml="$OUT_DIR/pytest_cuda.xml" "${CUDA_FILES[@]}" >"$OUT_DIR/pytest_cuda.log" 2>&1
  PYTEST_RC=$?
else
  PYTEST_RC=5
fi
PYTEST_S=$((SECONDS - T0))
say "pytest -m cuda: exit $PYTEST_RC in ${PYTEST_S}s ($(tail -n 1 "$OUT_DIR/pytest_cuda.log" 2>/dev/null))"

# 3. the transfer benchmark ----------------------------------------------------------------------
T0=$SECONDS
# shellcheck disable=SC2086
timeout 300 "$PY" benchmarks/transfer_bench.py --device "$DEVICE" --out "$OUT_DIR/transfer_bench.json" \
  ${BENCH_ARGS:-} >"$OUT_DIR/transfer_bench.log" 2>&1
BENCH_RC=$?
BENCH_S=$((SECONDS - T0))
say "transfer_bench: exit $BENCH_RC in ${BENCH_S}s"

# 4. the rest of the suite, on a CUDA build of torch --------------------------------------------
SUITE_S="${GPU_CHECK_SUITE_S:-180}"
SUITE_RC=-1
if [ "$SUITE_S" -gt 0 ]; then
  T0=$SECONDS
  # shellcheck disable=SC2086
  timeout -s INT -k 30 "$SUITE_S" "$PY" -m pytest -m "not cuda" -q -rfE -p no:cacheprovider -W "ignore::pytest.PytestConfigWarning" \
    --junitxml="$OUT_DIR/pytest_all.xml" ${GPU_CHECK_SUITE_PATHS:-tests} >"$OUT_DIR/pytest_all.log" 2>&1
  SUITE_RC=$?
  say "pytest -m 'not cuda': exit $SUITE_RC in $((SECONDS - T0))s ($(tail -n 1 "$OUT_DIR/pytest_all.log" 2>/dev/null))"
fi

# 5. one report -----------------------------------------------------------------------------------
"$PY" - "$OUT_DIR" "$PYTEST_RC" "$PYTEST_S" "$BENCH_RC" "$BENCH_S" "$SUITE_RC" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, pytest_rc, pytest_s, bench_rc, bench_s, suite_rc = Path(sys.argv[1]), *map(int, sys.argv[2:])
report = {
    "pytest_cuda": {"exit": pytest_rc, "seconds": pytest_s},
    "bench": {"exit": bench_rc, "seconds": bench_s},
    "pytest_rest": {"exit": suite_rc},  # -1: not run; 124: out of time (pytest is interrupted, so its counts are partial)
}


def junit(name):
    xml = out / name
    if not xml.exists():
        return {}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts


report["pytest_cuda"].update(junit("pytest_cuda.xml"))
report["pytest_rest"].update(junit("pytest_all.xml"))
smi = out / "nvidia_smi.csv"
if smi.exists():
    report["nvidia_smi"] = smi.read_text().strip().splitlines()
bench = out / "transfer_bench.json"
if bench.exists():
    data = json.loads(bench.read_text())
    report["card"] = data["environment"].get("card", data["environment"]["device"])
    report["transfer_bench"] = data
    def figure(section, key):
        return data.get(section, {}).get(key, data.get(section, {}).get("error"))

    report["targets"] = {
        "h2d_vs_plain_pinned_copy": {"value": figure("h2d", "ratio"), "target": ">= 0.9", "pass": data["pass"]["h2d"]},
        "end_to_end_vs_default_pinned_loader": {
            "value": figure("end_to_end", "ratio"), "target": ">= 2.0", "pass": data["pass"]["end_to_end"],
            "vs_best_worker_count": figure("end_to_end", "ratio_vs_best_default")},
        "step_vs_max_compute_copy": {
            "value": figure("step", "ratio_to_max"), "target": "<= 1.1", "pass": data["pass"]["step"]},
        "graph_replay_over_static_batches": {
            "ring_ms": figure("graph", "ring_replay_ms"), "copy_then_replay_ms": figure("graph", "copy_then_replay_ms"),
            "eager_ms": figure("graph", "eager_ms"), "pass": data["pass"].get("graph_matches_eager")},
        "cuda_tests_race_included": {
            "passed": report["pytest_cuda"].get("passed", 0),
            "pass": pytest_rc == 0 and report["pytest_cuda"].get("passed", 0) > 0,
        },
    }
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
summary = {k: v for k, v in report.items() if k != "transfer_bench"}
print(json.dumps(summary, indent=2))
EOF
say "report: $OUT_DIR/gpu_check.json"
[ "$PYTEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
