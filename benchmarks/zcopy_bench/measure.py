"""Measurements, each in a fresh process.

``python -m zcopy_bench.measure '<json spec>'`` runs one and prints its JSON result.
``python -m zcopy_bench.measure --serve`` is the runner's fork server: it imports torch,
zcopy_data and the installed peers once, then forks a fresh child for every spec line it reads
on stdin and writes the child's JSON result as one line. Every measurement so starts from the
same untouched allocator state (glibc keeping or returning freed buffers makes the default path
swing by half from run to run) without paying seconds of imports each time.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from zcopy_bench.contenders import CONTENDERS, batch_len, build_loader, make_batch_sampler
from zcopy_bench.data import DataSource
from zcopy_bench.limits import measure_limits

__all__ = ["measure", "memory_mib"]

_SAMPLE_EVERY = 16  # batches between memory samples
MIN_TIMED_S = 0.5
"""Default of the spec's ``min_timed_s``: timed passes continue (up to ``MAX_PASSES``) until they
add up to this many seconds."""
MAX_PASSES = 60


def memory_mib() -> float:
    """Resident anonymous + shared memory of this process (MiB): what a loader allocates, not the file
    pages it maps (those are page cache, shared with every process reading the file)."""
    total_kib = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:")):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def _timed_pass(loader: Iterable[Any], epoch: int, cap_s: float, peak: list[float]) -> float:
    """Samples/s over one epoch, or over the batches that fit in ``cap_s`` seconds."""
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    n = batches = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch_len(batch)
        batches += 1
        if batches % _SAMPLE_EVERY == 0:
            peak[0] = max(peak[0], memory_mib())
        if time.perf_counter() - t0 > cap_s:
            break
    return n / (time.perf_counter() - t0)


def _ledger_copies(loader: Any) -> float:
    """Copies of the batch's bytes per batch, read from zcopy_data's copy ledger."""
    from zcopy_data import explain

    ledger = explain(loader, batches=4)
    assembled = sum(r.bytes_viewed + r.bytes_copied for r in ledger.rows if r.stage == "collate")
    return ledger.bytes_copied / assembled if assembled else 0.0


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up one pass, then time ``epochs`` passes; samples/s of each."""
    torch.set_num_threads(int(spec.get("threads", 1)))
    src = DataSource.from_spec(spec["source"])
    cap = float(spec["max_pass_s"])
    if spec["contender"] == "limits":
        batches = make_batch_sampler(src.n, spec["order"], spec["batch_size"], spec["seed"])
        return {"limits": measure_limits(src, batches, spec["batch_size"], passes=spec["epochs"], cap_s=cap)}
    if spec["contender"] == "pair":
        return {"pair": _paired(spec, src, cap)}
    name, workers = spec["contender"], int(spec["workers"])
    start_mib = memory_mib()  # what the process inherited (torch, peers' imports): not the loader's
    loader = build_loader(
        name, src, spec["order"], spec["batch_size"], workers, seed=spec["seed"], cache=Path(spec["cache"])
    )
    peak = [start_mib]
    _timed_pass(loader, 0, cap, peak)  # warm-up: page cache, mappings, buffers, workers
    rates: list[float] = []
    timed = 0.0
    # at least ``epochs`` passes, and more while they add up to under min_timed_s: a pass of views
    # takes a few milliseconds, too short for one timing to mean much
    min_timed = float(spec.get("min_timed_s", MIN_TIMED_S))
    while len(rates) < spec["epochs"] or (timed < min_timed and len(rates) < MAX_PASSES):
        t0 = time.perf_counter()
        rates.append(_timed_pass(loader, len(rates) + 1, cap, peak))
        timed += time.perf_counter() - t0
    counter = CONTENDERS[name].copies
    copies: float | None
    if counter is None:
        copies, basis = _ledger_copies(loader), "ledger: zcopy_data.explain over 4 batches"
    else:
        copies, basis = counter(spec["order"], workers)
    del loader  # stop persistent workers before reading their peak memory
    return {
        "rates": rates,
        "copies_per_batch": copies,
        "copies_basis": basis,
        "peak_mem_mib": peak[0] - start_mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _paired(spec: dict[str, Any], src: DataSource, cap: float) -> dict[str, list[float]]:
    """zcopy_data with no workers and with ``workers``, in this one process, passes alternating.

    Both loaders then share everything a process can differ in (memory layout, CPU, allocator),
    so their ratio is free of the process-to-process spread that dominates sub-millisecond passes.
    """
    loaders = {
        key: build_loader(
            "zcopy", src, spec["order"], spec["batch_size"], w, seed=spec["seed"], cache=Path(spec["cache"])
        )
        for key, w in (("none", 0), ("workers", int(spec["workers"])))
    }
    peak = [memory_mib()]
    rates: dict[str, list[float]] = {key: [] for key in loaders}
    for loader in loaders.values():
        _timed_pass(loader, 0, cap, peak)  # warm-up
    timed, min_timed = 0.0, 2 * float(spec.get("min_timed_s", MIN_TIMED_S))
    passes = 0
    while passes < spec["epochs"] or (timed < min_timed and passes < MAX_PASSES):
        passes += 1
        t0 = time.perf_counter()
        for key, loader in loaders.items() if passes % 2 else reversed(loaders.items()):
            rates[key].append(_timed_pass(loader, passes, cap, peak))
        timed += time.perf_counter() - t0
    return rates


def _in_child(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": measure(spec)}
    except BaseException:
        return {"error": traceback.format_exc()}


def serve(preload: list[str]) -> None:
    """Fork a fresh child per spec line on stdin; one JSON result line per spec on the original stdout."""
    for name in preload:
        importlib.import_module(name)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of loaders and libraries go to stderr, not into the results
    for line in sys.stdin:
        spec = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, leave without running the server's exit handlers
            os.close(r)
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(_in_child(spec)))
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        out.write((data or json.dumps({"error": f"the measuring process died (wait status {status})"})) + "\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2:])
    else:
        print(json.dumps(measure(json.loads(sys.argv[1]))))
