from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("transfer_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_bench_runs_on_cpu_and_writes_every_figure(tmp_path, capsys):
    bench = _load()
    threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    args = ["--device", "cpu", "--quick", "--samples", "300", "--shape", "3,8,8", "--batch-size", "64"]
    bench.main([*args, "--workers", "0", "--out", str(out)])
    assert torch.get_num_threads() == threads
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["environment"]["device"] == "cpu"
    assert [k for k in ("h2d", "end_to_end", "step") if "error" in report[k]] == []
    for key in ("plain_copy_gbps", "to_device_gbps", "ratio"):
        assert report["h2d"]["batch"][key] > 0 and report["h2d"]["large"][key] > 0
    e2e = report["end_to_end"]
    assert e2e["samples"] == 300 and e2e["batch_bytes"] == 64 * (3 * 8 * 8 + 8)
    assert e2e["default_samples_per_s"]["workers=0"] > 0 and e2e["zcopy_samples_per_s"]["workers=0"] > 0
    assert e2e["ratio"] == e2e["zcopy_samples_per_s"]["workers=0"] / e2e["default_samples_per_s"]["workers=0"]
    assert e2e["ratio_vs_best_default"] == e2e["ratio"]  # one worker count only
    step = report["step"]
    assert [c["compute_over_copy"] for c in step["cases"]] == [1.0, 2.0]
    assert all(c["step_ms"] > 0 and c["compute_ms"] > 0 for c in step["cases"])
    assert step["ratio_to_max"] == max(c["ratio_to_max"] for c in step["cases"])
    assert report["pinned_bytes"]["image_batch_request"] == 64 * 3 * 8 * 8
    assert report["pinned_bytes"]["zcopy_pool"] == 0  # nothing is pinned for device="cpu"
    assert set(report["pass"]) == {"h2d", "end_to_end", "step"}
