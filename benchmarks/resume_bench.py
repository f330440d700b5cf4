"""Resume cost at sample 9,999,000 of a 10M-sample epoch: index work and samples read.

For each sampler kind, a loader is stopped after 9,999 batches of 1,000 (simulated: a state
saying so), and a fresh loader loads it. Measured, best of 5:

* ``first``: the resumed loader's first batch, from ``iter()``: the index work by arithmetic,
  the read and the collate together (so a bound on the index work);
* ``fresh``: a fresh loader's first batch, the same way (the cost every epoch start has);
* ``replay``: fast-forwarding the sampler's own iterator past the 9,999 batches (the peers'
  way: drawing every skipped index), for comparison;
* ``reads``: samples the resumed epoch asked the dataset for; ``rest``: samples it yielded (the
  rest of the epoch: 1,000; for ``BlockShuffleSampler`` the last 2 of its 10,001 batches).

Run: ``python benchmarks/resume_bench.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from zcopy_data import NumpyDataset, ZeroCopyDataLoader
from zcopy_data.samplers import BlockShuffleSampler

N, B = 10_000_000, 1_000
DONE = 9_999  # batches consumed: the resume is at sample 9,999,000


class Counted(NumpyDataset):
    """Counts the samples batches ask for."""

    def __init__(self, n: int) -> None:
        super().__init__({"x": np.arange(n, dtype=np.int32)})
        self.asked = 0

    def __getitems__(self, indices: Sequence[int]) -> Any:
        self.asked += len(indices)
        return super().__getitems__(indices)


def _loader(ds: NumpyDataset, kind: str) -> ZeroCopyDataLoader:
    if kind == "sequential":
        return ZeroCopyDataLoader(ds, batch_size=B)
    if kind == "shuffle":
        g = torch.Generator()
        g.manual_seed(0)
        return ZeroCopyDataLoader(ds, batch_size=B, shuffle=True, generator=g)
    if kind == "block":
        return ZeroCopyDataLoader(ds, batch_sampler=BlockShuffleSampler(N, B, seed=0, num_replicas=1, rank=0))
    return ZeroCopyDataLoader(ds, batch_size=B, sampler=DistributedSampler(ds, num_replicas=1, rank=0, seed=0))


def _state(ds: NumpyDataset, kind: str) -> dict[str, Any]:
    loader = _loader(ds, kind)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    state["batches_done"] = DONE
    if state["sampler_state"] is not None:
        state["sampler_state"]["progress"] = [[1, DONE]]
    return state


def _best(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(kind: str) -> dict[str, Any]:
    ds = Counted(N)
    state = _state(ds, kind)

    def resumed_loader() -> ZeroCopyDataLoader:
        loader = _loader(ds, kind)
        loader.load_state_dict(state)
        return loader

    def first(make: Callable[[], ZeroCopyDataLoader]) -> Callable[[], None]:
        return lambda: next(iter(make()))

    def replay() -> None:
        next(itertools.islice(iter(_loader(ds, kind).batch_sampler), DONE, DONE + 1))  # type: ignore[arg-type]

    out: dict[str, Any] = {"kind": kind}
    out["first_ms"] = _best(first(resumed_loader)) * 1e3
    out["fresh_ms"] = _best(first(lambda: _loader(ds, kind))) * 1e3
    out["replay_ms"] = _best(replay, repeat=2) * 1e3
    ds.asked = 0
    got = sum(len(b["x"]) for b in resumed_loader())
    out["reads"] = ds.asked
    out["batch_rows"] = got
    out["last_batch_starts"] = int(next(iter(resumed_loader()))["x"][0])
    return out


def main() -> None:
    rows = [measure(kind) for kind in ("sequential", "block", "shuffle", "distributed")]
    print(f"resume at sample {DONE * B:,} of {N:,} (batch {B}); best of 5; torch {torch.__version__}")
    print(f"{'sampler':<12} {'first batch':>12} {'fresh first':>12} {'replay':>10} {'reads':>7} {'rest':>7}")
    for r in rows:
        print(
            f"{r['kind']:<12} {r['first_ms']:>10.2f}ms {r['fresh_ms']:>10.2f}ms "
            f"{r['replay_ms']:>8.1f}ms {r['reads']:>7,} {r['batch_rows']:>7,}"
        )
    if "--json" in sys.argv:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
