"""Run every contender x order x workers cell, alternating, each in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zcopy_data.benchmark.data import make_synthetic

__all__ = ["BenchConfig", "format_table", "run_bench"]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``quick()`` is the demo's smaller version."""

    n: int = 60_000
    shape: tuple[int, ...] = (3, 64, 64)
    batch_size: int = 256
    orders: tuple[str, ...] = ("seq", "shuffle")
    workers: tuple[int, ...] = (0, 2)
    contenders: tuple[str, ...] = ("default", "zcopy")
    repeats: int = 3
    epochs: int = 2
    seed: int = 0
    data_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{self.batch_size=} should be >= 1")
        if self.repeats < 1 or self.epochs < 1:
            raise ValueError(f"{self.repeats=} and {self.epochs=} should be >= 1")
        for order in self.orders:
            if order not in ("seq", "shuffle"):
                raise ValueError(f"order {order!r} should be one of 'seq', 'shuffle'")

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        base: dict[str, Any] = {"n": 20_000, "repeats": 1, "epochs": 2, "workers": (0,)}
        return cls(**{**base, **kw})


def _run_one(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "zcopy_data.benchmark.measure", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark run {spec['contender']}/{spec['order']} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_bench(cfg: BenchConfig, *, log: Any = print) -> dict[str, Any]:
    """Measure and return a JSON-ready record (machine, versions, one row per cell)."""
    paths = make_synthetic(cfg.n, cfg.shape, folder=cfg.data_dir, seed=cfg.seed)
    cells = [(o, w) for w in cfg.workers for o in cfg.orders]
    samples: dict[tuple[str, str, int], list[float]] = {}
    peak: dict[tuple[str, str, int], float] = {}
    for rep in range(cfg.repeats):
        for order, workers in cells:
            # Alternate contenders within each cell so machine drift cancels out.
            for name in cfg.contenders if rep % 2 == 0 else tuple(reversed(cfg.contenders)):
                spec = {
                    "contender": name,
                    "order": order,
                    "workers": workers,
                    "batch_size": cfg.batch_size,
                    "epochs": cfg.epochs,
                    "seed": cfg.seed,
                    "paths": {k: str(v) for k, v in paths.items()},
                }
                res = _run_one(spec)
                key = (name, order, workers)
                samples.setdefault(key, []).extend(res["rates"])
                peak[key] = max(peak.get(key, 0.0), res["peak_rss_mib"])
                log(f"  {name:<8} {order:<8} workers={workers}  {statistics.median(res['rates']):>12,.0f} samples/s")
    sample_bytes = int(np.prod(cfg.shape)) + 8
    rows = []
    for (name, order, workers), rates in samples.items():
        med = statistics.median(rates)
        base = (
            statistics.median(samples[("default", order, workers)]) if ("default", order, workers) in samples else None
        )
        rows.append(
            {
                "contender": name,
                "order": order,
                "workers": workers,
                "samples_per_s": med,
                "gb_per_s": med * sample_bytes / 1e9,
                "ratio_to_default": (med / base) if base else None,
                "runs": len(rates),
                "peak_rss_mib": peak[(name, order, workers)],
            }
        )
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "data_dir"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    head = f"{'contender':<10} {'order':<8} {'workers':>7} {'samples/s':>12} {'GB/s':>6} {'x default':>9}"
    lines = [head, "-" * len(head)]
    for r in sorted(result["rows"], key=lambda r: (r["workers"], r["order"], r["contender"])):
        ratio = "" if r["ratio_to_default"] is None else f"{r['ratio_to_default']:.1f}x"
        lines.append(
            f"{r['contender']:<10} {r['order']:<8} {r['workers']:>7} {r['samples_per_s']:>12,.0f} "
            f"{r['gb_per_s']:>6.2f} {ratio:>9}"
        )
    return "\n".join(lines)
