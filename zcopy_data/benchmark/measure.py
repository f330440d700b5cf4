"""One measurement, in its own process: ``python -m zcopy_data.benchmark.measure '<json>'``.

A fresh process per measurement gives every contender the same allocator and page-cache state.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zcopy_data.benchmark.contenders import build_loader

__all__ = ["measure"]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up one epoch, then time ``epochs`` epochs; samples/s of each epoch."""
    torch.set_num_threads(int(spec.get("threads", 1)))
    paths = {k: Path(v) for k, v in spec["paths"].items()}
    loader = build_loader(spec["contender"], paths, spec["order"], spec["batch_size"], spec["workers"], spec["seed"])
    rates, nbytes = [], 0
    for epoch in range(1 + spec["epochs"]):
        n = 0
        t0 = time.perf_counter()
        for batch in loader:
            n += len(batch["label"])
            if epoch == 1:
                nbytes += sum(t.numel() * t.element_size() for t in batch.values())
        dt = time.perf_counter() - t0
        if epoch:  # epoch 0 warms the page cache and the workers up
            rates.append(n / dt)
    return {
        "rates": rates,
        "bytes_per_epoch": nbytes,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
