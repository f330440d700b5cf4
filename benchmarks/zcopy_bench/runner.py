"""Run every contender x order x workers cell, alternating, each in a fresh process.

Method: the same files and the same sampler seed for everyone; every measurement is its own
process (same allocator and page-cache state); within each repeat the contenders of a cell run
back to back, in reversed order every other repeat, so machine drift hits all of them alike; each
process warms up one pass, then times ``epochs`` passes; rows report medians over all passes of
all repeats. The machine's gather limit is measured in the same run, between the contenders.

Rows are measurements, not verdicts. A target's verdict (and the "paired" workers / no workers
ratio) comes from pairs: the two loaders (or loader and limit loop) a target compares, built in
one process and taking turns of a few milliseconds in rounds (:func:`zcopy_bench.measure._group`),
in ``max(repeats, 3)`` processes; the verdict reads the median of the per-round ratios and its
95% interval (:mod:`zcopy_bench.verdict`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zcopy_bench.contenders import CONTENDERS, ORDERS, available
from zcopy_bench.data import DataSource, default_cache_dir, synthetic_source
from zcopy_bench.limits import LIMITS
from zcopy_bench.verdict import classify

__all__ = ["SCHEMA_VERSION", "BenchConfig", "machine_info", "run_bench"]

SCHEMA_VERSION = 3

_LIBRARIES = ("torch", "numpy", "zcopy-data", "tensordict", "datasets", "pyarrow", "matplotlib", "tqdm")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Attributes:
        source: a folder of ``.npy`` files or one ``.npy``; ``None`` generates ``n`` uint8
            ``shape`` images with int64 labels (written once, cached).
        contenders: names from :data:`~zcopy_bench.contenders.CONTENDERS`; ``None``
            means every one that imports here (peers that are not installed are skipped).
        repeats: processes per contender and cell; ``epochs``: timed passes per process (at least:
            short passes are repeated until they add up to ``min_timed_s`` seconds, at most 60).
        max_pass_s: a pass stops after this many seconds (slow peers would otherwise take minutes).
        threads: torch intra-op threads of every contender (1 by default, so that the 1-thread
            gather limit is the ceiling of a 0-worker loader; torch's own default is all cores).
        rounds: rounds per process of every pair (the two sides a target or a "paired" ratio
            compares, taking turns in one process; each pair runs in ``max(repeats, 3)`` processes);
            ``round_s``: seconds each side runs per round.
        check_targets: measure and judge the project's targets; ``None`` means "when the data
            is the reference data" (generated uint8 (3, 64, 64), batch 256, 1 thread).
    """

    n: int = 60_000
    shape: tuple[int, ...] = (3, 64, 64)
    source: Path | None = None
    batch_size: int = 256
    orders: tuple[str, ...] = ORDERS
    workers: tuple[int, ...] = (0, 2)
    contenders: tuple[str, ...] | None = None
    repeats: int = 3
    epochs: int = 3
    max_pass_s: float = 1.5
    min_timed_s: float = 0.5
    seed: int = 0
    threads: int = 1
    rounds: int = 4
    round_s: float = 0.05
    check_targets: bool | None = None
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} should be >= 1")
        if self.n < 1:
            raise ValueError(f"n={self.n} should be >= 1")
        if self.repeats < 1 or self.epochs < 1:
            raise ValueError(f"repeats={self.repeats} and epochs={self.epochs} should be >= 1")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads} should be >= 1")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} should be >= 1")
        if self.round_s < 0:
            raise ValueError(f"round_s={self.round_s} should be >= 0")
        if self.max_pass_s <= 0:
            raise ValueError(f"max_pass_s={self.max_pass_s} should be > 0")
        if self.min_timed_s < 0:
            raise ValueError(f"min_timed_s={self.min_timed_s} should be >= 0")
        if not self.orders or not self.workers:
            raise ValueError("orders and workers each need at least one value")
        for order in self.orders:
            if order not in ORDERS:
                raise ValueError(f"order {order!r} should be one of {', '.join(ORDERS)}")
        if any(w < 0 for w in self.workers):
            raise ValueError(f"workers={self.workers} should all be >= 0")
        for name in self.contenders or ():
            if name not in CONTENDERS:
                raise ValueError(f"contender {name!r} should be one of {', '.join(CONTENDERS)}")

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        """A smaller run (< 2 minutes): 20k samples, no workers, one repeat of two timed passes
        (and 3 processes of 3 paired rounds for the targets)."""
        base: dict[str, Any] = {
            "n": 20_000,
            "repeats": 1,
            "epochs": 2,
            "workers": (0,),
            "max_pass_s": 1.0,
            "rounds": 3,
        }
        return cls(**{**base, **kw})

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "shape": list(self.shape),
            "source": None if self.source is None else str(self.source),
            "batch_size": self.batch_size,
            "orders": list(self.orders),
            "workers": list(self.workers),
            "contenders": None if self.contenders is None else list(self.contenders),
            "repeats": self.repeats,
            "epochs": self.epochs,
            "max_pass_s": self.max_pass_s,
            "min_timed_s": self.min_timed_s,
            "seed": self.seed,
            "threads": self.threads,
            "rounds": self.rounds,
            "round_s": self.round_s,
            "check_targets": self.check_targets,
        }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "zcopy-data":
            import zcopy_data

            return zcopy_data.__version__
        return None


def _proc_value(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    """This machine and the library versions, for the JSON record."""
    mem = _proc_value("/proc/meminfo", "MemTotal")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _proc_value("/proc/cpuinfo", "model name") or platform.processor() or None,
        "memory_gib": None if mem is None else round(int(mem.split()[0]) / 2**20, 1),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {d: _version(d) for d in _LIBRARIES},
    }


_CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def _child_path() -> str:
    """``PYTHONPATH`` for the fork server: this benchmark's folder first (it is not installed)."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([here, rest]) if rest else here


class _ForkServer:
    """``measure --serve`` in a subprocess: one fresh forked process per measurement."""

    def __init__(self, preload: list[str]) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zcopy_bench.measure", "--serve", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env={**os.environ, **_CHILD_ENV, "PYTHONPATH": _child_path()},
        )

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        line = ""
        try:
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            pass
        reply: dict[str, Any] = (
            json.loads(line) if line else {"error": "the fork server exited:\n" + self._stderr_tail()}
        )
        if "error" in reply:
            what = f"{spec['contender']}/{spec['order']}/workers={spec['workers']}"
            raise RuntimeError(f"benchmark run {what} failed:\n{reply['error']}")
        result: dict[str, Any] = reply["ok"]
        return result

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


def _warm_page_cache(src: DataSource) -> None:
    """Read every file once so the first contender does not pay for the disk."""
    for p in src.paths.values():
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


class _Progress:
    """A tqdm bar over the measuring processes when asked, else plain log lines."""

    def __init__(self, total: int, enabled: bool, log: Any) -> None:
        self.log = log
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="run", desc="bench", file=sys.stderr, dynamic_ncols=True)

    def start(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)

    def done(self, line: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_GOALS_2W = {"shuffle": 4.0, "block": 20.0}
"""zcopy with 2 workers: at least this many times the default path with 2 workers, per order."""
WORKERS_TOLERANCE = 0.02
"""2 workers are "never slower" than none to within this: views cost the same code either way, so
their ratio is parity, give or take what a paired round resolves."""


MIN_GROUP_RUNS = 3
"""Every pair runs in at least this many processes (``repeats`` when more), so a shift that one
process's memory layout or allocator state gives both sides shows in the per-round spread."""

Pair = tuple[str, str]
"""Two sides taking turns in one process, as side keys (:func:`zcopy_bench.measure.side_key`):
``("zcopy:0", "default:0")`` measures zcopy over the default path, both without workers."""


def _side(key: str) -> dict[str, Any]:
    """The measuring spec of a side key: ``"zcopy:2"`` or ``"limit:gather_1t"``."""
    kind, _, rest = key.partition(":")
    return {"limit": rest} if kind == "limit" else {"contender": kind, "workers": int(rest)}


def _pairs(cfg: BenchConfig, names: list[str], order: str, workers: int, targets: bool) -> list[Pair]:
    """The pairs measured taking turns in one process for one cell (each pair in its own process).

    0 workers, shuffled (targets only): zcopy over the 1-thread gather limit and over the default
    path, plain over the default path and over zcopy. With torch on every core (``threads`` =
    the CPU count): zcopy with 0 and 2 workers over the all-thread ``index_select`` limit, and
    with workers over without. Otherwise, with workers: zcopy with them over zcopy
    without (the "paired" ratio), and zcopy over the default path, both with 2 workers, where a
    target compares them. None without zcopy.
    """
    out: list[Pair] = []
    if "zcopy" not in names:
        return out
    if targets and _all_cores(cfg):  # every core gathering: against the all-thread limit only
        if order == "shuffle" and workers in (0, 2):
            out.append((f"zcopy:{workers}", "limit:index_select_all"))
        if workers and 0 in cfg.workers:
            out.append((f"zcopy:{workers}", "zcopy:0"))
        return out
    if workers == 0:
        if targets and order == "shuffle":
            out.append(("zcopy:0", "limit:gather_1t"))
            if "default" in names:
                out.append(("zcopy:0", "default:0"))
            if "plain" in names and "default" in names:
                out.append(("plain:0", "default:0"))
            if "plain" in names:
                out.append(("plain:0", "zcopy:0"))
        return out
    if 0 in cfg.workers:
        out.append((f"zcopy:{workers}", "zcopy:0"))
    if targets and workers == 2 and order in _GOALS_2W and "default" in names:
        out.append(("zcopy:2", "default:2"))
    return out


_Step = tuple[str, str, int, Pair | None]


def _plan(cfg: BenchConfig, names: list[str], targets: bool = False) -> list[_Step]:
    plan: list[_Step] = []
    groups = any(_pairs(cfg, names, o, w, targets) for o in cfg.orders for w in cfg.workers)
    for rep in range(max(cfg.repeats, MIN_GROUP_RUNS) if groups else cfg.repeats):
        for workers in cfg.workers:
            for order in cfg.orders:
                if rep < cfg.repeats:
                    if workers == cfg.workers[0]:
                        plan.append(("limits", order, 0, None))  # the limit takes no workers: once per order and repeat
                    # Alternate contenders within each cell so machine drift cancels out.
                    for name in names if rep % 2 == 0 else reversed(names):
                        if workers >= CONTENDERS[name].min_workers:
                            plan.append((name, order, workers, None))
                for pair in _pairs(cfg, names, order, workers, targets):
                    plan.append(("group", order, workers, pair))  # the pair taking turns in one process
    return plan


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def run_bench(cfg: BenchConfig, *, log: Any = print, progress: bool = False) -> dict[str, Any]:
    """Measure every cell and return the JSON-ready record (see :mod:`zcopy_bench.schema`)."""
    started = time.perf_counter()
    cache = Path(cfg.cache_dir or default_cache_dir())
    src = synthetic_source(cfg.n, cfg.shape, folder=cache, seed=cfg.seed) if cfg.source is None else None
    if src is None:
        from zcopy_bench.data import open_source

        src = open_source(cfg.source)  # type: ignore[arg-type]
    skipped: list[dict[str, str]] = []
    names: list[str] = []
    for name in cfg.contenders or tuple(CONTENDERS):
        ok, why = available(name)
        prepare = CONTENDERS[name].prepare
        if ok and prepare is not None:
            log(f"preparing {name}'s copy of the data (once, cached in {cache}) ...")
            try:
                prepare(src, cache)
            except (ValueError, TypeError) as err:
                ok, why = False, f"could not convert the data for {name}: {err}"
        if ok:
            names.append(name)
        else:
            skipped.append({"contender": name, "reason": why})
            log(f"skipping {name}: {why}")
    if cfg.batch_size > src.n:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {src.n} samples of {src.origin}")
    _warm_page_cache(src)
    targets = _is_reference(cfg, src) if cfg.check_targets is None else cfg.check_targets

    base = {
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "max_pass_s": cfg.max_pass_s,
        "min_timed_s": cfg.min_timed_s,
        "threads": cfg.threads,
        "rounds": cfg.rounds,
        "round_s": cfg.round_s,
        "source": src.to_spec(),
        "cache": str(cache),
    }
    rates: dict[tuple[str, str, int], list[float]] = {}
    limit_rates: dict[tuple[str, str], list[float]] = {}
    info: dict[tuple[str, str, int], dict[str, Any]] = {}
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    plan = _plan(cfg, names, targets)
    server = _ForkServer([r for n in names if (r := CONTENDERS[n].requires)])
    bar = _Progress(len(plan), progress, log)
    try:
        for name, order, workers, pair in plan:
            bar.start(f"{name} {order} w={workers}" + (f" {pair[0]} / {pair[1]}" if pair else ""))
            spec = {**base, "contender": name, "order": order, "workers": workers}
            if pair is not None:
                spec["sides"] = [_side(key) for key in pair]
            res = server.run(spec)
            if pair is not None:
                group = groups.setdefault((order, *pair), {})
                for key, values in res["group"].items():
                    group.setdefault(key, []).extend(values)
                ratio = _median([x / y for x, y in zip(res["group"][pair[0]], res["group"][pair[1]], strict=True)])
                bar.done(f"  paired   {order:<8} {pair[0]} / {pair[1]}: {ratio:.3f} (median of {cfg.rounds} rounds)")
                continue
            if name == "limits":
                for kind, values in res["limits"].items():
                    limit_rates.setdefault((order, kind), []).extend(values)
                bar.done(f"  limit    {order:<8}            {_median(res['limits']['gather_1t']):>12,.0f} samples/s")
                continue
            key = (name, order, workers)
            rates.setdefault(key, []).extend(res["rates"])
            prev = info.get(key)
            info[key] = {
                "copies_per_batch": res["copies_per_batch"],
                "copies_basis": res["copies_basis"],
                "peak_mem_mib": max(res["peak_mem_mib"], prev["peak_mem_mib"] if prev else 0.0),
                "peak_rss_mib": max(res["peak_rss_mib"], prev["peak_rss_mib"] if prev else 0.0),
            }
            bar.done(f"  {name:<10} {order:<8} workers={workers}  {_median(res['rates']):>12,.0f} samples/s")
    finally:
        bar.close()
        server.close()
    record = _record(cfg, src, names, skipped, rates, limit_rates, info, time.perf_counter() - started)
    record["paired"] = _paired(groups)
    if targets:
        record["targets"] = _targets(groups) + _worker_targets(record["paired"])
    return record


Groups = dict[tuple[str, str, str], dict[str, list[float]]]
"""``(order, a, b) -> {a: samples/s per round, b: ...}``, rounds of every process of the pair in turn."""


def _round_ratios(groups: Groups, order: str, a: str, b: str) -> list[float] | None:
    """Side ``a`` over side ``b``, one ratio per round; ``None`` when the pair was not measured."""
    group = groups.get((order, a, b))
    if group is None:
        return None
    return [x / y for x, y in zip(group[a], group[b], strict=True)]


def _paired(groups: Groups) -> list[dict[str, Any]]:
    """zcopy with workers over zcopy without, per order and worker count: per-round ratios, median."""
    out = []
    for order, a, b in groups:
        kind, _, workers = a.partition(":")
        if kind == "zcopy" and b == "zcopy:0" and int(workers) > 0:
            ratios = _round_ratios(groups, order, a, b) or []
            out.append({"order": order, "workers": int(workers), "ratio": _median(ratios), "ratios": ratios})
    return out


def _record(
    cfg: BenchConfig,
    src: DataSource,
    names: list[str],
    skipped: list[dict[str, str]],
    rates: dict[tuple[str, str, int], list[float]],
    limit_rates: dict[tuple[str, str], list[float]],
    info: dict[tuple[str, str, int], dict[str, Any]],
    wall_s: float,
) -> dict[str, Any]:
    gb = src.sample_bytes / 1e9
    limits: dict[str, dict[str, dict[str, Any]]] = {
        order: {
            kind: {
                "description": LIMITS[kind],
                "samples_per_s": _median(limit_rates[(order, kind)]),
                "gb_per_s": _median(limit_rates[(order, kind)]) * gb,
                "runs": len(limit_rates[(order, kind)]),
            }
            for kind in LIMITS
        }
        for order in cfg.orders
    }
    rows = []
    for workers in cfg.workers:
        for order in cfg.orders:
            for name in names:
                key = (name, order, workers)
                if key not in rates:
                    continue  # not measured at this worker count
                med = _median(rates[key])
                base = rates.get(("default", order, workers))
                lim = limits[order]
                rows.append(
                    {
                        "contender": name,
                        "order": order,
                        "workers": workers,
                        "samples_per_s": med,
                        "gb_per_s": med * gb,
                        **info[key],
                        "ratio_to_default": med / _median(base) if base else None,
                        "fraction_of_gather_1t": med / lim["gather_1t"]["samples_per_s"],
                        "fraction_of_index_select_all": med / lim["index_select_all"]["samples_per_s"],
                        "runs": len(rates[key]),
                        "rates": rates[key],
                    }
                )
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": round(wall_s, 1),
        "config": cfg.to_json(),
        "data": {
            "origin": src.origin,
            "n": src.n,
            "sample_bytes": src.sample_bytes,
            "fields": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in src.fields.items()},
        },
        "machine": machine_info(),
        "contenders": {n: CONTENDERS[n].title for n in names},
        "skipped": skipped,
        "limits": limits,
        "rows": rows,
        "targets": [],  # filled in by run_bench from the paired groups
    }


def _target(name: str, goal: float, ratios: list[float], sides: tuple[str, str]) -> dict[str, Any]:
    return {"name": name, "sides": f"{sides[0]} / {sides[1]}", **classify(ratios, goal)}


def _worker_targets(paired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Never slower with 2 workers than with none, from the paired rounds (one process per repeat).

    Batches that are views cost the same code with and without workers, so their ratio is parity:
    the goal is 1 less :data:`WORKERS_TOLERANCE`, stated in the target's name.
    """
    tol = WORKERS_TOLERANCE
    return [
        _target(
            f"zcopy {p['order']}: 2 workers / 0 workers, paired in one process (never slower, to within {tol:.0%})",
            1.0 - tol,
            p["ratios"],
            ("zcopy:2", "zcopy:0"),
        )
        for p in paired
        if p["workers"] == 2
    ]


def _all_cores(cfg: BenchConfig) -> bool:
    """torch at its default thread count (one per core), on a machine with several."""
    return cfg.threads > 1 and cfg.threads == (os.cpu_count() or 1)


def _is_reference(cfg: BenchConfig, src: DataSource) -> bool:
    """The project's goals are stated for generated uint8 (3, 64, 64) images at batch 256, torch on 1
    thread (the per-batch goals) or on every core (``--threads`` = CPU count: the all-core goals)."""
    one_or_all = cfg.threads == 1 or _all_cores(cfg)
    return src.origin == "synthetic" and cfg.shape == (3, 64, 64) and cfg.batch_size == 256 and one_or_all


def _targets(groups: Groups) -> list[dict[str, Any]]:
    """The project's goals for zcopy_data, where this run measured them in paired rounds.

    Shuffled, 0 workers, both ways of using it: ``ZeroCopyDataLoader`` (``zcopy``) and a plain
    ``DataLoader`` with ``collate_fn=zero_copy_collate`` (``plain``), each holding the previous batch
    while the next is fetched, as every ``for batch in loader:`` does; then zcopy with 2 workers
    against the default path with 2 workers. Every ratio is per round of one group (both sides in
    one process, taking turns); the rows' medians from separate processes give no verdict.
    """
    out = []
    for name, goal, a, b in (
        ("zcopy shuffle 0 workers: fraction of the 1-thread gather limit", 0.9, "zcopy:0", "limit:gather_1t"),
        ("zcopy shuffle 0 workers: x default path", 4.0, "zcopy:0", "default:0"),
        ("plain shuffle 0 workers: x default path", 4.0, "plain:0", "default:0"),
        ("plain shuffle 0 workers: fraction of zcopy (within 10%)", 0.9, "plain:0", "zcopy:0"),
    ):
        ratios = _round_ratios(groups, "shuffle", a, b)
        if ratios:
            out.append(_target(name, goal, ratios, (a, b)))
    for workers in (0, 2):
        a, b = f"zcopy:{workers}", "limit:index_select_all"
        ratios = _round_ratios(groups, "shuffle", a, b)
        if ratios:
            name = f"zcopy shuffle {workers} workers, torch on every core: fraction of the all-thread gather limit"
            out.append(_target(name, 0.9, ratios, (a, b)))
    for order, goal in _GOALS_2W.items():
        ratios = _round_ratios(groups, order, "zcopy:2", "default:2")
        if ratios:
            name = f"zcopy {order} 2 workers: x default path with 2 workers"
            out.append(_target(name, goal, ratios, ("zcopy:2", "default:2")))
    return out
