"""The write's progress bar: tqdm with samples/s when it is installed, nothing when it is not."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["progress_bar"]


def _ignore(rows: int) -> None:
    del rows


@contextlib.contextmanager
def progress_bar(total: int | None, *, enabled: bool, desc: str) -> Iterator[Callable[[int], None]]:
    """Yield ``update(n)``, called with each record batch's row count."""
    bar = None
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the bar is a courtesy (extra `zcopy-data[bench]`): write without it
            bar = None
        else:
            bar = tqdm(total=total, desc=desc, unit="sample", unit_scale=True, smoothing=0.1)
    try:
        yield _ignore if bar is None else bar.update
    finally:
        if bar is not None:
            bar.close()
