"""``zcopy-data``: ``demo``, ``bench``, ``explain``, ``inspect`` and ``convert`` from the command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from zcopy_data.inspect import add_inspect_parser
from zcopy_data.writer._convert import add_convert_parser

__all__ = ["main"]


_BENCH_MISSING = (
    "the benchmark (package zcopy_bench, in the benchmarks/ folder of the source repository) is not "
    "shipped in the wheel and was not found here; run this from a clone of the repository "
    "(git clone ..., cd into it, then `make bench`), or put its benchmarks/ folder on PYTHONPATH"
)


def _bench(module: str) -> ModuleType:
    """``zcopy_bench.<module>``, from ``PYTHONPATH`` or the ``benchmarks/`` folder of a source checkout.

    The benchmark (contenders, peers, fork server) lives outside the package, so the wheel carries
    none of it; ``zcopy-data bench`` finds it in the checkout it runs from, or next to an editable
    install.
    """
    try:
        return importlib.import_module(f"zcopy_bench.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("zcopy_bench", f"zcopy_bench.{module}"):
            raise
    here = Path.cwd().resolve()
    checkouts = (here, *here.parents, Path(__file__).resolve().parents[1])
    for folder in (p / "benchmarks" for p in checkouts):
        if (folder / "zcopy_bench" / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            return importlib.import_module(f"zcopy_bench.{module}")
    raise SystemExit(f"zcopy-data: {_BENCH_MISSING}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, found {text!r}")
    return vals


def _orders(text: str) -> tuple[str, ...]:
    ORDERS = _bench("contenders").ORDERS

    vals = tuple(text.split(","))
    bad = [v for v in vals if v not in ORDERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown order {bad[0]!r}; choose from {', '.join(ORDERS)}")
    return vals


def _contenders(text: str) -> tuple[str, ...]:
    CONTENDERS = _bench("contenders").CONTENDERS

    vals = tuple(text.split(","))
    bad = [v for v in vals if v not in CONTENDERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown contender {bad[0]!r}; choose from {', '.join(CONTENDERS)}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, found {text!r}")
    return v


def _bench_config(args: argparse.Namespace) -> Any:
    BenchConfig = _bench("runner").BenchConfig

    parser: argparse.ArgumentParser = args.parser
    if args.path is not None and args.synthetic:
        parser.error(f"give either PATH ({args.path}) or --synthetic, not both")
    if args.path is not None and args.samples is not None:
        parser.error("--samples sizes the generated data; it cannot be used with PATH")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        parser.error(f"--plot writes a PNG; expected a path ending in .png, found {str(args.plot)!r}")
    kw: dict[str, Any] = {"batch_size": args.batch_size, "source": args.path}
    for name in ("workers", "order", "contenders", "samples", "repeats", "epochs", "max_pass_s", "threads", "cache"):
        value = getattr(args, name)
        if value is not None:
            kw[{"order": "orders", "samples": "n", "cache": "cache_dir"}.get(name, name)] = value
    try:
        return BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    except ValueError as err:
        parser.error(str(err))


def _cmd_bench(args: argparse.Namespace) -> int:
    from zcopy_data.errors import ZeroCopyError

    report, run_bench = _bench("report"), _bench("runner").run_bench
    format_table, plot = report.format_table, report.plot
    cfg = _bench_config(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        result = run_bench(cfg, progress=progress)
    except (FileNotFoundError, ZeroCopyError, ValueError) as err:
        print(f"zcopy-data bench: error: {err}", file=sys.stderr)
        return 2
    result["command"] = "zcopy-data bench " + " ".join(args.argv)
    print(
        f"\ndata: {result['data']['origin']}, {result['data']['n']:,} samples of {result['data']['sample_bytes']:,} B, "
        f"batch {cfg.batch_size}, {result['wall_s']:.0f} s"
    )
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:  # noqa: ARG001
    import torch

    from zcopy_data import NumpyDataset, ZeroCopyDataLoader, explain
    make_synthetic, format_table = _bench("data").make_synthetic, _bench("report").format_table
    runner = _bench("runner")
    BenchConfig, run_bench = runner.BenchConfig, runner.run_bench

    # rows are plain measurements (a quarter second of passes each); the targets' verdicts come from
    # the paired rounds (3 processes of 3 rounds, both sides taking turns in each), see zcopy_bench.verdict
    cfg = BenchConfig.quick(contenders=("default", "zcopy"), max_pass_s=0.5, min_timed_s=0.25)
    paths = make_synthetic(cfg.n, cfg.shape)
    ds = NumpyDataset({k: str(p) for k, p in paths.items()})
    print(f"dataset: {ds}\n")
    for title, shuffle in (("sequential", False), ("shuffled", True)):
        loader = ZeroCopyDataLoader(
            ds, batch_size=cfg.batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0)
        )
        print(f"copy report, {title} (zcopy_data.explain(loader, batches=8)):")
        print(explain(loader, batches=8), end="\n\n")
    print("speed against the default PyTorch path (per-sample __getitem__ + default_collate), 0 workers:")
    print(format_table(run_bench(cfg, log=lambda *_: None)))
    print("\nthe full comparison, with workers and peers: zcopy-data bench --plot bench.png")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from zcopy_data import NumpyDataset, ZeroCopyDataLoader, explain

    cols = {}
    for item in args.fields:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"zcopy-data explain: expected NAME=PATH.npy, found {item!r}")
        cols[name] = path
    ds = NumpyDataset(cols)
    loader = ZeroCopyDataLoader(
        ds, batch_size=args.batch_size, shuffle=args.shuffle, num_workers=args.workers, worker_mode=args.worker_mode
    )
    print(explain(loader, batches=args.batches))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zcopy-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="copy reports and a quick speed comparison on generated data")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="zcopy_data against the default PyTorch DataLoader path and peers",
        description="Time zcopy_data, the default DataLoader path and installed peers on the same data, "
        "in fresh processes, alternating; print a table, optionally write JSON and a PNG chart.",
    )
    bench.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        metavar="PATH",
        help="a folder of .npy files (fields named by file stem) or one .npy file",
    )
    bench.add_argument("--synthetic", action="store_true", help="generated uint8 (3,64,64) images + labels (default)")
    bench.add_argument("--samples", type=_positive, default=None, help="generated samples (default 60000)")
    bench.add_argument("--batch-size", type=_positive, default=256)
    bench.add_argument("--workers", type=_ints, default=None, help="comma-separated, e.g. 0,2 (default 0,2)")
    bench.add_argument("--order", type=_orders, default=None, help="seq,shuffle,block (default all)")
    bench.add_argument(
        "--contenders",
        type=_contenders,
        default=None,
        help="default,zcopy,tensordict,hf (default: every one installed)",
    )
    bench.add_argument("--repeats", type=_positive, default=None, help="processes per contender and cell")
    bench.add_argument("--epochs", type=_positive, default=None, help="timed passes per process")
    bench.add_argument("--max-pass-s", type=_seconds, default=None, help="a timed pass stops after this long")
    bench.add_argument("--threads", type=_positive, default=None, help="torch threads per contender (default 1)")
    bench.add_argument("--cache", type=Path, default=None, help="where generated and converted data live")
    bench.add_argument("--quick", action="store_true", help="a smaller, faster run (< 2 minutes)")
    bench.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the record as JSON here")
    bench.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="write a bar chart here")
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    bench.set_defaults(func=_cmd_bench, parser=bench)

    exp = sub.add_parser("explain", help="the copy report of a ZeroCopyDataLoader over .npy files")
    exp.add_argument("fields", nargs="+", metavar="NAME=PATH.npy")
    exp.add_argument("--batch-size", type=_positive, default=256)
    exp.add_argument("--batches", type=_positive, default=8)
    exp.add_argument("--workers", type=int, default=0)
    exp.add_argument(
        "--worker-mode",
        choices=("auto", "threads", "processes"),
        default="auto",
        help="workers as gather threads (auto, for .npy files) or worker processes",
    )
    exp.add_argument("--shuffle", action="store_true")
    exp.set_defaults(func=_cmd_explain)

    add_inspect_parser(sub)
    add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
