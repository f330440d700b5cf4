"""The host -> device hop against PyTorch's own, in one run, written as JSON.

Three measurements, each next to its baseline in the same process:

* ``h2d``: GB/s of :func:`zcopy_data.transfer.to_device` from pinned memory against a plain
  ``dst.copy_(pinned_src, non_blocking=True)`` into a preallocated tensor (target: >= 0.9x);
* ``end_to_end``: samples/s from memory-mapped ``.npy`` files to the device, shuffled, through
  ``DataLoader(pin_memory=True)`` + ``.to(device, non_blocking=True)`` (the default path, at each
  worker count given) against ``zero_copy_collate`` + :class:`DevicePrefetcher` (target: >= 2x the
  default path with DataLoader's default of no workers; the ratio to its best worker count is
  reported next to it);
* ``step``: time per training step with a synthetic compute kernel against
  ``max(compute, copy)`` (target: <= 1.1x), for compute = 1x and 2x the copy time;
* ``graph`` (CUDA only): step time of a CUDA-graph-captured step over ``DevicePrefetcher(static=True)``
  batches (one graph per slot, no copy) against ``static_input.copy_(batch)`` + replay and eager
  steps, and whether the replayed results equal eager ones.

It runs on any device, ``cpu`` included (where nothing is copied, so the ratios say little; the
CPU run exists so the script is tested everywhere)::

    python benchmarks/transfer_bench.py --device cuda --out results.json
    python benchmarks/transfer_bench.py --device cpu --samples 2048 --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zcopy_bench.contenders import PerSampleNpy  # noqa: E402

from zcopy_data.collate import zero_copy_collate  # noqa: E402
from zcopy_data.datasets import NumpyDataset  # noqa: E402
from zcopy_data.transfer import Cast, DeviceCast, DevicePrefetcher, PinnedBufferPool, to_device  # noqa: E402

CAST = {"image": Cast(torch.float16, scale=1 / 255)}


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _pinned(nbytes: int, device: torch.device) -> torch.Tensor:
    pool = PinnedBufferPool({"x": ((nbytes,), torch.uint8)}, slots=1, pin=device.type != "cpu")
    slot = pool.acquire()
    x = slot["x"]
    slot.release()
    return x.fill_(1)


# -- 1. bandwidth --------------------------------------------------------------------------------
def bench_h2d(device: torch.device, nbytes: int, reps: int) -> dict[str, Any]:
    """GB/s of ``to_device`` against a plain pinned ``copy_``, medians of 5 rounds."""
    src = _pinned(nbytes, device)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    batch = {"x": src}

    def plain() -> None:
        for _ in range(reps):
            dst.copy_(src, non_blocking=True)

    def ours() -> None:
        for _ in range(reps):
            to_device(batch, device)

    plain(), ours()  # warm up
    rounds = [(_timed(device, plain), _timed(device, ours)) for _ in range(5)]
    gb = nbytes * reps / 1e9
    plain_gbps = statistics.median(gb / p for p, _ in rounds)
    ours_gbps = statistics.median(gb / o for _, o in rounds)
    return {
        "bytes": nbytes,
        "plain_copy_gbps": plain_gbps,
        "to_device_gbps": ours_gbps,
        "ratio": ours_gbps / plain_gbps,
        "note": "cpu: to_device copies nothing, the plain copy_ is a memcpy" if device.type == "cpu" else "",
    }


# -- 2. end to end --------------------------------------------------------------------------------
def write_data(folder: Path, n: int, shape: tuple[int, ...]) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"image": folder / "images.npy", "label": folder / "labels.npy"}
    np.save(paths["image"], rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
    np.save(paths["label"], rng.integers(0, 1000, size=n, dtype=np.int64))
    return paths


def _epochs(device: torch.device, epochs: int, run_epoch: Callable[[], int]) -> list[float]:
    """Samples/s of each timed epoch, after one warm-up epoch."""
    rates = []
    for e in range(1 + epochs):
        _sync(device)
        t0 = time.perf_counter()
        n = run_epoch()
        _sync(device)
        if e:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def bench_default(device: torch.device, paths: dict[str, Path], bs: int, workers: int, epochs: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(
        PerSampleNpy(paths),
        batch_size=bs,
        shuffle=True,
        generator=g,
        num_workers=workers,
        pin_memory=device.type != "cpu",  # a CPU-only build would warn and do nothing
    )
    cast = DeviceCast(CAST)

    def run() -> int:
        n = 0
        for b in loader:
            out = cast({k: v.to(device, non_blocking=True) for k, v in b.items()})
            n += len(out["label"])
        return n

    return _epochs(device, epochs, run)


def bench_zcopy(device: torch.device, paths: dict[str, Path], bs: int, workers: int, epochs: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    ds = NumpyDataset({k: str(p) for k, p in paths.items()})
    loader = DataLoader(ds, batch_size=bs, shuffle=True, generator=g, num_workers=workers, collate_fn=zero_copy_collate)
    prefetcher = DevicePrefetcher(loader, device, depth=2, cast=CAST)

    def run() -> int:
        n = 0
        for b in prefetcher:
            n += len(b["label"])
        return n

    return _epochs(device, epochs, run)


# -- 3. overlap --------------------------------------------------------------------------------
def _compute_kernel(device: torch.device, ms: float) -> Callable[[], None]:
    """A kernel that keeps the device busy for about ``ms`` milliseconds and moves no data."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1_000_000)
        start.record()
        torch.cuda._sleep(1_000_000)
        end.record()
        end.synchronize()
        cycles = max(1, int(1_000_000 * ms / start.elapsed_time(end)))
        return lambda: torch.cuda._sleep(cycles)
    a = torch.randn(128, 128, device=device)
    one = _timed(device, lambda: [a @ a for _ in range(10)]) / 10 * 1000
    k = max(1, round(ms / max(one, 1e-6)))
    return lambda: [a @ a for _ in range(k)]  # type: ignore[func-returns-value]


def bench_step(device: torch.device, nbytes: int, steps: int) -> dict[str, Any]:
    """Per-step time of copy + compute through the prefetcher, against max(compute, copy)."""
    sources = [_pinned(nbytes, device) for _ in range(3)]

    def feed() -> Iterator[dict[str, torch.Tensor]]:
        for k in range(steps):
            yield {"x": sources[k % 3]}

    for _ in DevicePrefetcher(feed(), device):  # warm up streams, allocator, events
        pass
    copy = min(_timed(device, lambda: [to_device(b, device) for b in feed()]) for _ in range(3)) / steps
    out: dict[str, Any] = {"bytes": nbytes, "steps": steps, "copy_ms": copy * 1000, "cases": []}
    for factor in (1.0, 2.0):
        kernel = _compute_kernel(device, copy * 1000 * factor)
        compute = min(_timed(device, lambda k=kernel: [k() for _ in range(steps)]) for _ in range(3)) / steps

        def pipeline(k: Callable[[], None] = kernel) -> None:
            for _ in DevicePrefetcher(feed(), device, depth=2):
                k()

        step = min(_timed(device, pipeline) for _ in range(3)) / steps
        bound = max(compute, copy)
        out["cases"].append(
            {
                "compute_over_copy": factor,
                "compute_ms": compute * 1000,
                "step_ms": step * 1000,
                "serial_ms": (compute + copy) * 1000,
                "ratio_to_max": step / bound,
            }
        )
    out["ratio_to_max"] = max(c["ratio_to_max"] for c in out["cases"])
    return out


# -- 4. graph replay over static batches ------------------------------------------------------------
class _Feed:
    """``steps`` pinned batches, one epoch per ``iter()``: a loader the prefetchers can run twice."""

    def __init__(self, sources: list[torch.Tensor], steps: int) -> None:
        self.sources, self.steps = sources, steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return ({"image": self.sources[k % len(self.sources)]} for k in range(self.steps))


def _capture(fn: Callable[[], torch.Tensor]) -> tuple[Any, torch.Tensor]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def bench_graph(device: torch.device, batch_size: int, shape: tuple[int, ...], steps: int) -> dict[str, Any]:
    """Step time of a captured step over delivered batches: the static ring (graph per slot, no
    copy) against the usual recipe (``static_input.copy_(batch)`` then replay) and eager steps."""
    if device.type != "cuda":
        return {"skipped": f"CUDA graphs need a CUDA device, not {device.type}"}
    features = int(np.prod(shape))
    sources = [_pinned(batch_size * features, device).view(batch_size, *shape) for _ in range(3)]
    for k, src in enumerate(sources):
        src.copy_(torch.randint(0, 256, src.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(k)))
    weight = torch.randn(features, 256, device=device, dtype=torch.float16) / features**0.5

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.reshape(x.shape[0], -1).to(torch.float16) @ weight).sum(1)

    feed = _Feed(sources, steps)
    static_in = torch.empty((batch_size, *shape), dtype=torch.uint8, device=device)
    copy_graph, copy_out = _capture(lambda: model(static_in))
    ring_pf = DevicePrefetcher(feed, device, static=True)
    ring = ring_pf.ring
    assert ring is not None
    graphs: dict[int, tuple[Any, torch.Tensor]] = {}
    matches = True
    for b in ring_pf:  # first epoch: the ring is allocated, one graph captured per slot, checked
        slot = ring.slot_of(b)
        if slot not in graphs:
            buf = ring.buffers[slot]["image"]
            graphs[slot] = _capture(lambda buf=buf: model(buf))  # type: ignore[misc]
        graph, out = graphs[slot]
        graph.replay()
        matches = matches and bool(torch.equal(out, model(b["image"])))

    def eager() -> None:
        for b in DevicePrefetcher(feed, device):
            model(b["image"])

    def copy_then_replay() -> None:
        for b in DevicePrefetcher(feed, device):
            static_in.copy_(b["image"])
            copy_graph.replay()

    def ring_replay() -> None:
        for b in ring_pf:
            graphs[ring.slot_of(b)][0].replay()

    times = {name: min(_timed(device, fn) for _ in range(3)) / steps * 1000 for name, fn in
             (("eager_ms", eager), ("copy_then_replay_ms", copy_then_replay), ("ring_replay_ms", ring_replay))}
    del copy_out
    return {
        "batch_bytes": batch_size * features,
        "steps": steps,
        **times,
        "ring_over_copy_then_replay": times["ring_replay_ms"] / times["copy_then_replay_ms"],
        "graphs": len(graphs),
        "matches_eager": matches,
    }


def _torch_pinned_bytes(nbytes: int) -> int | None:
    """What PyTorch's pinned allocator reserves for one ``nbytes`` request (CUDA only)."""
    before = torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    t = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    after = torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    del t
    return int(after - before) or None


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, torch.accelerator.current_device_index())
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    workers = [int(w) for w in args.workers.split(",")]
    report: dict[str, Any] = {"environment": _environment(device), "config": vars(args).copy()}
    batch_bytes = args.batch_size * (int(np.prod(shape)) + 8)
    image_bytes = args.batch_size * int(np.prod(shape))
    # First, before anything else has filled PyTorch's pinned cache with reusable blocks.
    report["pinned_bytes"] = {
        "image_batch_request": image_bytes,
        "zcopy_pool": PinnedBufferPool(
            {"image": ((args.batch_size, *shape), torch.uint8)}, slots=1, pin=device.type != "cpu"
        ).pinned_bytes,
        "torch_pinned_allocator": _torch_pinned_bytes(image_bytes) if device.type == "cuda" else None,
    }

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            report[name] = fn()
        except Exception as err:  # keep the other figures: one failing section must not hide them
            report[name] = {"error": f"{type(err).__name__}: {err}"}

    def h2d() -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch": bench_h2d(device, image_bytes, args.reps),
            "large": bench_h2d(device, args.copy_mib << 20, max(4, args.reps // 8)),
        }
        out["ratio"] = out["large"]["ratio"]
        out["target"] = 0.9
        return out

    def end_to_end() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
            paths = write_data(Path(tmp), args.samples, shape)
            default = {
                f"workers={w}": statistics.median(bench_default(device, paths, args.batch_size, w, args.epochs))
                for w in workers
            }
            ours = {
                f"workers={w}": statistics.median(bench_zcopy(device, paths, args.batch_size, w, args.epochs))
                for w in args.zcopy_workers
            }
        return {
            "samples": args.samples,
            "sample_shape": list(shape),
            "batch_bytes": batch_bytes,
            "default_samples_per_s": default,
            "zcopy_samples_per_s": ours,
            # the default path as DataLoader's defaults run it (no workers), and its best worker count
            "ratio": max(ours.values()) / default.get("workers=0", max(default.values())),
            "ratio_vs_best_default": max(ours.values()) / max(default.values()),
            "target": 2.0,
        }

    def step() -> dict[str, Any]:
        out = bench_step(device, args.copy_mib << 20, args.steps)
        out["target"] = 1.1
        return out

    section("h2d", h2d)
    section("end_to_end", end_to_end)
    section("step", step)
    section("graph", lambda: bench_graph(device, args.batch_size, shape, args.steps))
    report["pass"] = {
        "h2d": report["h2d"].get("ratio", 0.0) >= 0.9,
        "end_to_end": report["end_to_end"].get("ratio", 0.0) >= 2.0,
        "step": report["step"].get("ratio_to_max", float("inf")) <= 1.1,
    }
    if "matches_eager" in report["graph"]:
        report["pass"]["graph_matches_eager"] = bool(report["graph"]["matches_eager"])
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    default_device = "cpu"
    if torch.accelerator.is_available():
        acc = torch.accelerator.current_accelerator()
        default_device = acc.type if acc is not None else "cpu"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device)
    p.add_argument("--samples", type=int, default=60_000, help="images in the end-to-end data set")
    p.add_argument("--shape", default="3,64,64", help="uint8 image shape")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    p.add_argument("--workers", default="0,4", help="worker counts of the default path")
    p.add_argument("--zcopy-workers", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--copy-mib", type=int, default=64, help="buffer size for the large copy and the step test")
    p.add_argument("--reps", type=int, default=64, help="copies per bandwidth round")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--data-dir", default=None, help="where to write the temporary .npy files")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    if args.quick:
        args.samples = min(args.samples, 2048)
        args.epochs, args.copy_mib, args.reps, args.steps = 1, 1, 4, 4
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    report = run(args)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
