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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from zcopy_bench.contenders import CONTENDERS, batch_len, build_loader, make_batch_sampler
from zcopy_bench.data import DataSource
from zcopy_bench.limits import Loop, limit_loops, measure_limits

__all__ = ["measure", "memory_mib", "side_key"]

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


def _pass(loader: Iterable[Any], epoch: int, cap_s: float, peak: list[float] | None) -> tuple[int, float]:
    """Samples and seconds of one epoch, or of the batches that fit in ``cap_s`` seconds; the peak
    memory is sampled every few batches into ``peak[0]`` unless it is ``None``."""
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    n = batches = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch_len(batch)
        batches += 1
        if peak is not None and batches % _SAMPLE_EVERY == 0:
            peak[0] = max(peak[0], memory_mib())
        if time.perf_counter() - t0 > cap_s:
            break
    return n, time.perf_counter() - t0


def _timed_pass(loader: Iterable[Any], epoch: int, cap_s: float, peak: list[float]) -> float:
    """Samples/s over one epoch, or over the batches that fit in ``cap_s`` seconds."""
    n, seconds = _pass(loader, epoch, cap_s, peak)
    return n / seconds


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
    if spec["contender"] == "group":
        return {"group": _group(spec, src, cap)}
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


def side_key(side: dict[str, Any]) -> str:
    """A group side's name in results: ``"zcopy:2"`` (contender: workers) or ``"limit:gather_1t"``."""
    return f"limit:{side['limit']}" if "limit" in side else f"{side['contender']}:{int(side['workers'])}"


_CHUNK_S = 0.005
"""Seconds of one side's turn within a round: the sides alternate this often (A B B A A B ...)."""


class _Stream:
    """One side of a group, timed in turns: its samples and seconds over at least ``min_s`` of work."""

    threads = 1

    def warm_up(self) -> None:
        """One whole pass: page cache, mappings, buffers, workers."""
        raise NotImplementedError

    def turn(self, min_s: float) -> tuple[int, float]:
        raise NotImplementedError


class _LoaderStream(_Stream):
    """A loader's batches, one iterator carried across turns (a new epoch when it ends).

    With ``whole`` passes instead (each capped at ``cap`` seconds), as a group with a loader with
    workers runs both its sides: an iterator left open would keep its workers fetching during the
    other side's turn, and both sides then pay the same per-pass costs. No memory is sampled.
    """

    def __init__(self, loader: Iterable[Any], workers: int, threads: int, cap: float) -> None:
        self.loader, self.workers, self.threads, self.cap = loader, workers, threads, cap
        self.whole = workers > 0
        self.it: Iterator[Any] | None = None
        self.held: Any = None  # the previous batch, held while the next is fetched, as a training loop does
        self.epoch = 0

    def warm_up(self) -> None:
        _pass(self.loader, 0, self.cap, None)

    def turn(self, min_s: float) -> tuple[int, float]:
        n, elapsed = 0, 0.0
        if self.whole:
            while elapsed < min_s or n == 0:
                self.epoch += 1
                k, seconds = _pass(self.loader, self.epoch, self.cap, None)
                n, elapsed = n + k, elapsed + seconds
            return n, elapsed
        t0 = time.perf_counter()
        while elapsed < min_s or n == 0:
            if self.it is None:
                self.epoch += 1
                sampler = getattr(self.loader, "batch_sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
                self.it = iter(self.loader)
            try:
                self.held = next(self.it)
            except StopIteration:
                self.it = None
                continue
            n += batch_len(self.held)
            elapsed = time.perf_counter() - t0
        return n, elapsed


class _LimitStream(_Stream):
    """A limit loop over one epoch of prepared indices, carried on cyclically across turns."""

    def __init__(self, loop: Loop, epoch: list[Any]) -> None:
        self.step, self.threads = loop
        self.epoch, self.i = epoch, 0

    def warm_up(self) -> None:
        for idx in self.epoch:
            self.step(idx)

    def turn(self, min_s: float) -> tuple[int, float]:
        n, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < min_s or n == 0:
            idx = self.epoch[self.i]
            self.i = (self.i + 1) % len(self.epoch)
            self.step(idx)
            n += idx.size
            elapsed = time.perf_counter() - t0
        return n, elapsed


def _group(spec: dict[str, Any], src: DataSource, cap: float) -> dict[str, list[float]]:
    """Two (or more) loaders or limit loops in this one process, timed in rounds: samples/s per side and round.

    Within a round the sides take turns of a few milliseconds (A B B A A B ...) until each has run
    ``round_s`` seconds, so both sides of a round share everything a process and a moment can
    differ in (memory layout, CPU, allocator, neighbours on the machine): the ratio of two sides
    within a round is free of the process-to-process and second-to-second swings that dominate
    separate measurements on a shared machine. A 0-worker loader and a limit loop carry on where
    their last turn stopped; where a side has workers, both sides run whole passes (capped at
    ``max_pass_s``) in one turn per round, so no work a loader queued runs on into the other's turn.
    """
    threads = int(spec.get("threads", 1))
    streams: dict[str, _Stream] = {}
    for side in spec["sides"]:
        if "limit" in side:
            batches = make_batch_sampler(src.n, spec["order"], spec["batch_size"], spec["seed"])
            loops, epoch_indices = limit_loops(src, batches, spec["batch_size"])
            streams[side_key(side)] = _LimitStream(loops[side["limit"]], epoch_indices)
        else:
            workers = int(side["workers"])
            loader = build_loader(
                side["contender"],
                src,
                spec["order"],
                spec["batch_size"],
                workers,
                seed=spec["seed"],
                cache=Path(spec["cache"]),
            )
            streams[side_key(side)] = _LoaderStream(loader, workers, threads, cap)
    round_s = float(spec["round_s"])
    # with workers, every loader runs whole passes, one turn per side and round (A B, then B A)
    whole = any(isinstance(st, _LoaderStream) and st.workers for st in streams.values())
    for st in streams.values():
        if isinstance(st, _LoaderStream):
            st.whole = whole
    turns = 1 if whole else max(1, round(round_s / _CHUNK_S))
    keys = list(streams)

    def on(key: str) -> _Stream:
        stream = streams[key]
        if torch.get_num_threads() != stream.threads:
            torch.set_num_threads(stream.threads)
        return stream

    for key in keys:
        on(key).warm_up()
    rates: dict[str, list[float]] = {key: [] for key in keys}
    flip = False
    for _ in range(int(spec["rounds"])):
        done = dict.fromkeys(keys, (0, 0.0))
        for _ in range(turns):
            for key in reversed(keys) if flip else keys:
                n, seconds = on(key).turn(round_s / turns)
                done[key] = (done[key][0] + n, done[key][1] + seconds)
            flip = not flip
        for key, (n, seconds) in done.items():
            rates[key].append(n / seconds)
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
