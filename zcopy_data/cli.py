"""``zcopy-data``: ``demo``, ``bench``, ``explain`` and ``inspect`` from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from zcopy_data.inspect import add_inspect_parser

__all__ = ["main"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, found {text!r}")
    return vals


def _orders(text: str) -> tuple[str, ...]:
    vals = tuple(text.split(","))
    bad = [v for v in vals if v not in ("seq", "shuffle")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown order {bad[0]!r}; choose from seq, shuffle")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {v}")
    return v


def _cmd_bench(args: argparse.Namespace) -> int:
    from zcopy_data.benchmark.runner import BenchConfig, format_table, run_bench

    kw = {"batch_size": args.batch_size, "workers": args.workers, "orders": args.order}
    if args.samples:
        kw["n"] = args.samples
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    print(f"benchmark: {cfg.n:,} samples of uint8{list(cfg.shape)} + int64 label, batch {cfg.batch_size}")
    result = run_bench(cfg)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:  # noqa: ARG001
    import torch
    from torch.utils.data import DataLoader

    from zcopy_data import NumpyDataset, explain, zero_copy_collate
    from zcopy_data.benchmark.data import make_synthetic
    from zcopy_data.benchmark.runner import BenchConfig, format_table, run_bench

    cfg = BenchConfig.quick(workers=(0,))
    paths = make_synthetic(cfg.n, cfg.shape)
    ds = NumpyDataset({k: str(p) for k, p in paths.items()})
    print(f"dataset: {ds}\n")
    for title, shuffle in (("sequential", False), ("shuffled", True)):
        loader = DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            collate_fn=zero_copy_collate,
            generator=torch.Generator().manual_seed(0),
        )
        print(f"copy report, {title} (zcopy_data.explain(loader, batches=8)):")
        print(explain(loader, batches=8), end="\n\n")
    print("speed against the default PyTorch path (per-sample __getitem__ + default_collate):")
    print(format_table(run_bench(cfg, log=lambda *_: None)))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from zcopy_data import NumpyDataset, explain, zero_copy_collate

    cols = {}
    for item in args.fields:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"zcopy-data explain: expected NAME=PATH.npy, found {item!r}")
        cols[name] = path
    ds = NumpyDataset(cols)
    loader = DataLoader(
        ds, batch_size=args.batch_size, shuffle=args.shuffle, collate_fn=zero_copy_collate, num_workers=args.workers
    )
    print(explain(loader, batches=args.batches))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zcopy-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="copy reports and a quick speed comparison on generated data")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="zcopy_data against the default PyTorch DataLoader path")
    bench.add_argument("--batch-size", type=_positive, default=256)
    bench.add_argument("--workers", type=_ints, default=(0, 2), help="comma-separated, e.g. 0,2")
    bench.add_argument("--order", type=_orders, default=("seq", "shuffle"), help="seq,shuffle")
    bench.add_argument("--samples", type=_positive, default=None, help="synthetic samples (default 60000)")
    bench.add_argument("--quick", action="store_true", help="a smaller, faster run")
    bench.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    bench.set_defaults(func=_cmd_bench)

    exp = sub.add_parser("explain", help="the copy report of a DataLoader over .npy files")
    exp.add_argument("fields", nargs="+", metavar="NAME=PATH.npy")
    exp.add_argument("--batch-size", type=_positive, default=256)
    exp.add_argument("--batches", type=_positive, default=8)
    exp.add_argument("--workers", type=int, default=0)
    exp.add_argument("--shuffle", action="store_true")
    exp.set_defaults(func=_cmd_explain)

    add_inspect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
