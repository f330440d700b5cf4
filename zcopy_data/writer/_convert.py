"""``zcopy-data convert SRC DST``: open a source by what it is on disk, then :func:`write` it.

SRC is an image folder (``root/<class>/<file>``), a ``.npy`` file, an Arrow IPC / Feather file,
a Parquet file, or a Hugging Face ``save_to_disk`` folder (``state.json`` beside its Arrow files).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zcopy_data.errors import ZeroCopyError

__all__ = ["add_convert_parser"]

_ARROW = (".arrow", ".arrows", ".feather", ".ipc")


def _size(text: str) -> tuple[int, int]:
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W or one integer, found {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers >= 1) or one integer, found {text!r}")
    return dims[0], dims[1]


@contextlib.contextmanager
def open_source(src: Path, size: tuple[int, int] | None) -> Iterator[Any]:
    """The dataset at ``src`` (a Parquet file is decoded into a cache that lasts as long as the block)."""
    if src.is_dir():
        if (src / "state.json").is_file():
            try:
                import datasets
            except ImportError:
                raise SystemExit(
                    f"zcopy-data convert: {str(src)!r} is a Hugging Face dataset folder; "
                    "install it with pip install datasets"
                ) from None
            yield datasets.load_from_disk(str(src))
            return
        from zcopy_data.datasets import ImageFolderDataset

        if size is None:
            raise SystemExit(
                f"zcopy-data convert: {str(src)!r} is an image folder; give the size every image is resized to "
                "with --size H,W (e.g. --size 224,224)"
            )
        yield ImageFolderDataset(src, size=size)
        return
    if not src.exists():
        raise FileNotFoundError(f"no such file or folder: {str(src)!r}")
    suffix = src.suffix.lower()
    if suffix == ".npy":
        from zcopy_data.datasets import NumpyDataset

        yield NumpyDataset({src.stem: str(src)})
        return
    from zcopy_data.datasets import ArrowDataset

    if suffix == ".parquet":
        with tempfile.TemporaryDirectory(prefix="zcopy-convert-") as cache:
            yield ArrowDataset.from_parquet(src, cache_dir=cache, strings="list", progress=False)
        return
    if suffix in _ARROW:
        yield ArrowDataset(src, strings="list")
        return
    raise SystemExit(
        f"zcopy-data convert: cannot tell what {str(src)!r} is; give an image folder, a Hugging Face "
        f"save_to_disk folder, or a .npy, .parquet or Arrow ({', '.join(_ARROW)}) file"
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from zcopy_data.writer import write

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        with open_source(args.src, args.size) as source:
            report = write(
                source, args.dst, shard_size=args.shard_mib << 20, workers=args.workers, progress=progress
            )
    except (FileNotFoundError, FileExistsError, ZeroCopyError, ValueError) as err:
        print(f"zcopy-data convert: error: {err}", file=sys.stderr)
        return 2
    kept = f" ({report.kept} kept from an earlier run)" if report.kept else ""
    print(f"wrote {report.rows:,} samples in {report.shards} shards{kept}; index {report.index}")
    return 0


def add_convert_parser(sub: Any) -> None:
    """Add ``convert`` to the ``zcopy-data`` subcommands."""
    p = sub.add_parser(
        "convert",
        help="write a dataset on disk into zero-copy Arrow shards",
        description="Convert an image folder, a .npy / Arrow / Parquet file or a Hugging Face save_to_disk "
        "folder into a folder of uncompressed Arrow shards with fixed-shape tensor columns (zcopy_data.write). "
        "Run it again after an interruption: complete shards are kept.",
    )
    p.add_argument("src", type=Path, metavar="SRC")
    p.add_argument("dst", type=Path, metavar="DST", help="the output folder")
    p.add_argument("--size", type=_size, default=None, metavar="H,W", help="resize images to this (image folders)")
    p.add_argument("--shard-mib", type=int, default=256, metavar="MIB", help="target shard size (default 256)")
    p.add_argument("--workers", type=int, default=0, help="worker processes writing shards (default 0)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_cmd_convert)
