"""JPEG decoders side by side on the same files, and ``ImageFolderDataset`` against a bare loop.

Generated photograph-like JPEGs (500 x 375 and 1600 x 1200, quality 90, 4:2:0), decoded and resized
to 224 x 224 (bilinear), as RGB uint8, in one run on the same cores:

* bare loops, one thread and then a thread per core: Pillow (``Image.open().convert().resize()``,
  what ``decode="exact"`` means), Pillow with draft mode (``decode="fast"``), ``simplejpeg`` full
  decode + the same Pillow resize (equal to Pillow's pixels), ``simplejpeg`` with DCT scaling,
  PyTurboJPEG (when its system ``libturbojpeg`` loads);
* ``ImageFolderDataset`` batches of 64 through ``zero_copy_collate``, 0 workers, default decode
  threads (the cores available), with ``decoder="pillow"`` (before: the only decoder) and
  ``decoder="auto"`` (``simplejpeg``), ``decode="exact"`` and ``"fast"``. Ratios are to
  ``decoder="pillow", decode="fast"``: the path before, Pillow with draft mode always on.

Pillow-SIMD is not measured: it replaces the ``PIL`` package itself (built from source, no wheels
for this Python), so it cannot be installed beside the Pillow the project runs on.

Run: ``python benchmarks/image_bench.py [--files 400] [--repeats 5]``; writes
``benchmarks/results/image_bench.json``. Medians of the repeats, images per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zcopy_data import zero_copy_collate
from zcopy_data.datasets import ImageFolderDataset
from zcopy_data.datasets.images import simplejpeg_matches_pillow as matches_pillow

HAS_SIMPLEJPEG = importlib.util.find_spec("simplejpeg") is not None


def draft_scale(height: int, width: int, size: tuple[int, int]) -> int:
    """The reduction Pillow's ``draft`` picks for (height, width) at target (H, W): 8, 4, 2 or 1."""
    scale = min(width // size[1], height // size[0])
    return next(s for s in (8, 4, 2, 1) if scale >= s)

SIZE = (224, 224)
SHAPES = [(375, 500), (1200, 1600)]  # (H, W): ImageNet-like, and a camera photo scaled down
CORES = len(os.sched_getaffinity(0))


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = []
    for _ in range(3):
        waves = [rng.uniform(20, 50) * np.sin(2 * np.pi * (rng.uniform(0.5, 6) * x + rng.uniform(0.5, 6) * y)
                                              + rng.uniform(0, 6)) for _ in range(4)]  # fmt: skip
        chans.append(128 + sum(waves))
    a = np.stack(chans, -1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _write(root: Path, n: int, shape: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "c").mkdir(parents=True)
    base = [_photo(rng, *shape) for _ in range(16)]
    files = []
    for i in range(n):
        path = root / "c" / f"{i:05d}.jpg"
        Image.fromarray(np.roll(base[i % 16], i, axis=1)).save(path, quality=90)
        files.append(str(path))
    return files


# -- one image, each decoder ---------------------------------------------------------------------------
def pillow_exact(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(SIZE[::-1], Image.Resampling.BILINEAR))


def pillow_fast(path: str) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("RGB", SIZE[::-1])
        return np.asarray(im.convert("RGB").resize(SIZE[::-1], Image.Resampling.BILINEAR))


def _simplejpeg(scaled: bool) -> Callable[[str], np.ndarray]:
    import simplejpeg

    def decode(path: str) -> np.ndarray:
        with open(path, "rb") as f:
            data = f.read()
        kw = {}
        if scaled:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            s = draft_scale(h, w, SIZE)
            kw = {"min_height": -(-h // s), "min_width": -(-w // s)}
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)
        img = Image.frombuffer("RGB", (arr.shape[1], arr.shape[0]), arr, "raw", "RGB", 0, 1)
        return np.asarray(img.resize(SIZE[::-1], Image.Resampling.BILINEAR))

    return decode


def _turbojpeg() -> tuple[Callable[[str], np.ndarray] | None, str]:
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        jpeg = TurboJPEG()
    except (ImportError, RuntimeError, OSError) as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"

    def decode(path: str) -> np.ndarray:
        with open(path, "rb") as f:
            arr = jpeg.decode(f.read(), pixel_format=TJPF_RGB)
        return np.asarray(Image.fromarray(arr).resize(SIZE[::-1], Image.Resampling.BILINEAR))

    return decode, "loaded"


def _rate(run: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def bare(fn: Callable[[str], np.ndarray], files: list[str], threads: int, repeats: int) -> float:
    if threads == 1:
        return _rate(lambda: sum(1 for f in files if fn(f) is not None), repeats)
    with ThreadPoolExecutor(threads) as pool:
        return _rate(lambda: sum(1 for _ in pool.map(fn, files)), repeats)


def dataset(root: Path, repeats: int, batch: int = 64, **kw: Any) -> float:
    ds = ImageFolderDataset(root, SIZE, **kw)
    batches = [list(range(i, min(i + batch, len(ds)))) for i in range(0, len(ds), batch)]

    def epoch() -> int:
        return sum(zero_copy_collate(ds.__getitems__(b))["image"].shape[0] for b in batches)

    epoch()  # the decode threads started
    return _rate(epoch, repeats)


def _run(root: Path, shape: tuple[int, int], n: int, repeats: int) -> dict[str, Any]:
    files = _write(root, n, shape)
    decoders: dict[str, Callable[[str], np.ndarray]] = {"pillow exact": pillow_exact, "pillow fast": pillow_fast}
    if HAS_SIMPLEJPEG:
        decoders["simplejpeg exact"] = _simplejpeg(False)
        decoders["simplejpeg fast"] = _simplejpeg(True)
    turbo, _ = _turbojpeg()
    if turbo is not None:
        decoders["pyturbojpeg exact"] = turbo
    out: dict[str, Any] = {}
    if HAS_SIMPLEJPEG:
        out["simplejpeg exact == pillow exact (32 files)"] = all(
            np.array_equal(pillow_exact(f), decoders["simplejpeg exact"](f)) for f in files[:32]
        )
    rates = {}
    for threads in sorted({1, CORES}):
        for name, fn in decoders.items():
            rates[f"bare {name}, {threads} thread(s)"] = bare(fn, files, threads, repeats)
    for decoder in ("pillow", "auto"):
        for decode in ("exact", "fast"):
            key = f"dataset decoder={decoder!r} decode={decode!r}"
            rates[key] = dataset(root, repeats, decoder=decoder, decode=decode)
    base = rates["dataset decoder='pillow' decode='fast'"]  # the only path before: Pillow, draft mode always
    out["img_per_s"] = rates
    out["ratio_to_dataset_pillow_fast (the path before)"] = {k: v / base for k, v in rates.items()}
    if HAS_SIMPLEJPEG:
        for decode in ("exact", "fast"):
            loop = rates[f"bare simplejpeg {decode}, {CORES} thread(s)"]
            out[f"dataset/bare loop, simplejpeg {decode}"] = rates[f"dataset decoder='auto' decode={decode!r}"] / loop
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "image_bench.json"))
    args = p.parse_args()
    results: dict[str, Any] = {"files": args.files, "size": SIZE, "cores": CORES, "pillow": Image.__version__,
                               "simplejpeg_matches_pillow": matches_pillow(), "pyturbojpeg": _turbojpeg()[1],
                               "pillow-simd": "not measured: it replaces PIL itself (a source build)"}  # fmt: skip
    for shape in SHAPES:
        with tempfile.TemporaryDirectory() as tmp:
            res = _run(Path(tmp), shape, args.files, args.repeats)
        results[f"{shape[1]}x{shape[0]} -> {SIZE[1]}x{SIZE[0]}"] = res
        ratios = res["ratio_to_dataset_pillow_fast (the path before)"]
        print(f"-- {shape[1]}x{shape[0]} JPEGs -> {SIZE[1]}x{SIZE[0]}, {CORES} cores; ratio to the path before")
        width = max(map(len, res["img_per_s"]))
        for k, v in res["img_per_s"].items():
            print(f"{k:<{width}}  {v:8.0f} img/s  {ratios[k]:5.2f}x")
        for k, v in res.items():
            if not isinstance(v, dict):
                print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    for k in ("simplejpeg_matches_pillow", "pyturbojpeg", "pillow-simd"):
        print(f"{k}: {results[k]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
