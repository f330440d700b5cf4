"""Data sources side by side with their baselines, in one run, on the same data.

* ``ArrowDataset`` against ``NumpyDataset`` holding the same images and labels (one IPC file with
  a single record batch, and one with record batches of 4096 rows), shuffled and sequential;
* ``ImageFolderDataset`` (0 and 2 workers) against a bare Pillow decode-and-resize loop over the same files (the
  library's own overhead), against a torchvision-style per-sample ``Dataset`` under the default
  ``DataLoader``, and against a per-sample ``Dataset`` running our exact decode (the batching
  alone); plus ``threads=2`` (decode threads in the main process, no worker processes).

Without workers, contenders alternate batch by batch and the rate comes from the median batch
time, so load bursts on a shared machine hit all of them alike; with workers (which prefetch),
whole epochs alternate and the median epoch rate is reported.
Writes ``benchmarks/results/sources.json``::

    PYTHONPATH=. python benchmarks/bench_sources.py            # full run
    PYTHONPATH=. python benchmarks/bench_sources.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from zcopy_bench.data import default_cache_dir, make_synthetic

from zcopy_data import NumpyDataset, zero_copy_collate
from zcopy_data.datasets import ArrowDataset, ImageFolderDataset


def open_rgb(path: str, size: tuple[int, int], resample: Any) -> Image.Image:
    """The decode ImageFolderDataset does (JPEG draft mode, RGB, resize to (H, W)), one file."""
    h, w = size
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (w, h))
        rgb = im.convert("RGB") if im.mode != "RGB" else im
        rgb.load()
        return rgb.resize((w, h), resample) if rgb.size != (w, h) else rgb

RESULTS = Path(__file__).resolve().parent / "results" / "sources.json"


# -- data ----------------------------------------------------------------------------------------
def arrow_files(n: int, shape: tuple[int, ...]) -> tuple[dict[str, Path], dict[str, Path]]:
    """The ``.npy`` benchmark data, and IPC files holding exactly the same bytes."""
    npy = make_synthetic(n, shape)
    folder = npy["image"].parent
    out = {"single": folder / "single.arrow", "chunked": folder / "chunked.arrow"}
    if not all(p.exists() for p in out.values()):
        images = np.load(npy["image"], mmap_mode="r")
        labels = np.load(npy["label"])
        flat = pa.array(np.ascontiguousarray(images).reshape(-1))
        col: pa.Array = flat
        for k in reversed(shape):
            col = pa.FixedSizeListArray.from_arrays(col, k)
        table = pa.table({"image": col, "label": pa.array(labels)})
        for name, chunk in (("single", None), ("chunked", 4096)):
            tmp = out[name].with_suffix(".tmp")
            with pa.ipc.new_file(tmp, table.schema) as w:
                for b in table.to_batches(max_chunksize=chunk or n):
                    w.write_batch(b)
            os.replace(tmp, out[name])
    return npy, out


def image_folder(n: int, src_size: tuple[int, int], classes: int = 10) -> Path:
    """``n`` JPEGs (with every 10th a PNG) of ``src_size`` (W, H) in ``classes`` class folders."""
    root = default_cache_dir() / f"images_n{n}_{src_size[0]}x{src_size[1]}"
    done = root / ".done"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    w, h = src_size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth gradients plus noise: compresses like a photo, not like white noise.
        base = (xx * rng.uniform(0.2, 1.0) + yy * rng.uniform(0.2, 1.0))[..., None] * rng.uniform(0.3, 1.0, 3)
        pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        if i % 10 == 9:
            img.save(folder / f"{i:06d}.png")
        else:
            img.save(folder / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


# -- timing -------------------------------------------------------------------------------------
def _sampler(n: int, order: str) -> Any:
    if order == "seq":
        return SequentialSampler(range(n))
    return RandomSampler(range(n), generator=torch.Generator().manual_seed(0))


def _size_of(batch: Any) -> int:
    return len(batch["label"]) if isinstance(batch, dict) else int(batch)


def interleave(contenders: dict[str, Callable[[], Iterable[Any]]], epochs: int) -> dict[str, dict[str, float]]:
    """Pull one batch from each contender in turn and time every pull, for ``epochs`` epochs each.

    On a shared machine, load comes and goes in bursts; alternating batch by batch makes every
    contender see the same bursts. Reported: samples/s from the median batch time (robust to
    bursts) and from the total time. One warm-up epoch each first (page cache, mappings).
    """
    for make in contenders.values():
        for _ in make():
            pass
    times: dict[str, list[float]] = {k: [] for k in contenders}
    sizes: dict[str, list[int]] = {k: [] for k in contenders}
    left = dict.fromkeys(contenders, epochs)
    iters = {k: iter(make()) for k, make in contenders.items()}
    while iters:
        for name in list(iters):
            t0 = time.perf_counter()
            batch = next(iters[name], None)
            dt = time.perf_counter() - t0
            if batch is None:
                left[name] -= 1
                if left[name]:
                    iters[name] = iter(contenders[name]())
                else:
                    del iters[name]
                continue
            times[name].append(dt)
            sizes[name].append(_size_of(batch))
    return {
        k: {
            "samples_per_s": statistics.median(sizes[k]) / statistics.median(times[k]),
            "samples_per_s_total": sum(sizes[k]) / sum(times[k]),
            "batches": len(times[k]),
        }
        for k in contenders
    }


def alternate(contenders: dict[str, Callable[[], Iterable[Any]]], rounds: int) -> dict[str, dict[str, float]]:
    """Whole epochs, contenders alternating round by round (for worker processes, which prefetch)."""
    for make in contenders.values():
        for _ in make():
            pass
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            n = sum(_size_of(b) for b in contenders[name]())
            rates[name].append(n / (time.perf_counter() - t0))
    return {k: {"samples_per_s": statistics.median(v), "epochs": len(v)} for k, v in rates.items()}


def measure(contenders: dict[str, Callable[[], Iterable[Any]]], workers: int, args: argparse.Namespace) -> Any:
    return interleave(contenders, args.epochs) if workers == 0 else alternate(contenders, args.rounds)


# -- Arrow vs NumPy -----------------------------------------------------------------------------
def bench_arrow(args: argparse.Namespace) -> list[dict[str, Any]]:
    npy, arrow = arrow_files(args.samples, (3, 64, 64))
    datasets = {
        "numpy": NumpyDataset({k: str(v) for k, v in npy.items()}),
        "arrow, 1 record batch": ArrowDataset(arrow["single"]),
        "arrow, record batches of 4096": ArrowDataset(arrow["chunked"]),
    }
    rows = []
    for workers in args.workers:
        for order in ("shuffle", "seq"):

            def make(ds: Any, order: str = order, workers: int = workers) -> Callable[[], Iterable[Any]]:
                loader = DataLoader(
                    ds,
                    batch_size=256,
                    sampler=_sampler(len(ds), order),
                    num_workers=workers,
                    collate_fn=zero_copy_collate,
                    persistent_workers=workers > 0,
                )
                return lambda: loader

            res = measure({k: make(ds) for k, ds in datasets.items()}, workers, args)
            base = res["numpy"]["samples_per_s"]
            for name, r in res.items():
                med = r["samples_per_s"]
                rows.append(
                    {"bench": "arrow", "contender": name, "order": order, "workers": workers, **r,
                     "ratio_to_numpy": med / base}
                )  # fmt: skip
                print(f"  {name:<32} {order:<8} workers={workers}  {med:>12,.0f} samples/s  {med / base:6.1%} of numpy")
    return rows


# -- images -----------------------------------------------------------------------------------
class TorchvisionStyle(Dataset[dict[str, Any]]):
    """What torchvision's ``ImageFolder`` + ``Resize`` + ``PILToTensor`` do per sample."""

    def __init__(self, files: list[str], labels: list[int], size: tuple[int, int]) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")  # torchvision's pil_loader
        img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)  # Resize
        t = torch.as_tensor(np.array(img, copy=True)).view(img.size[1], img.size[0], 3).permute(2, 0, 1)
        return {"image": t, "label": self.labels[i]}


class PerSampleSameDecode(TorchvisionStyle):
    """Our decode (draft mode included), but one sample at a time through ``default_collate``."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = open_rgb(self.files[i], self.size, Image.Resampling.BILINEAR)
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # np.array: writable, as torch wants
        return {"image": t, "label": self.labels[i]}


def bench_images(args: argparse.Namespace) -> list[dict[str, Any]]:
    root = image_folder(args.images, (args.src_width, args.src_height))
    size = (args.size, args.size)
    ds = ImageFolderDataset(root, size=size)
    files, labels = ds.files, [int(x) for x in ds.labels]
    order = np.random.default_rng(0).permutation(len(files))

    def bare() -> Iterable[int]:
        """The floor: the same decode (draft, RGB, resize) and the pixels as an array, 64 files at a time."""
        for start in range(0, len(order), 64):
            for i in order[start : start + 64]:
                img = open_rgb(files[i], size, Image.Resampling.BILINEAR)
                np.asarray(img)
            yield len(order[start : start + 64])

    rows = []
    for workers in args.workers:

        def loader(dataset: Any, collate: Any, workers: int = workers) -> Callable[[], Iterable[Any]]:
            kw: dict[str, Any] = {} if collate is None else {"collate_fn": collate}
            dl = DataLoader(
                dataset,
                batch_size=64,
                sampler=_sampler(len(dataset), "shuffle"),
                num_workers=workers,
                persistent_workers=workers > 0,
                **kw,
            )
            return lambda: dl

        contenders: dict[str, Callable[[], Iterable[Any]]] = {
            "zcopy ImageFolderDataset": loader(ds, zero_copy_collate),
            "torchvision-style per-sample": loader(TorchvisionStyle(files, labels, size), None),
            "per-sample, same decode": loader(PerSampleSameDecode(files, labels, size), None),
        }
        if workers == 0:
            threaded = ImageFolderDataset(root, size=size, threads=2)  # decode threads instead of processes
            contenders = {
                "bare Pillow loop": bare,
                **contenders,
                "zcopy, threads=2": loader(threaded, zero_copy_collate),
            }
        res = measure(contenders, workers, args)
        meds = {k: r["samples_per_s"] for k, r in res.items()}
        for name, med in meds.items():
            row = {
                "bench": "images",
                "contender": name,
                "workers": workers,
                **res[name],
                "ratio_to_torchvision_style": med / meds["torchvision-style per-sample"],
            }
            if "bare Pillow loop" in meds:
                row["ratio_to_bare_pillow"] = med / meds["bare Pillow loop"]
            rows.append(row)
            extra = f"  {row['ratio_to_bare_pillow']:6.1%} of bare" if "ratio_to_bare_pillow" in row else ""
            print(
                f"  {name:<30} workers={workers}  {med:>9,.0f} images/s  "
                f"{row['ratio_to_torchvision_style']:5.2f}x torchvision-style{extra}"
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=60_000, help="Arrow/NumPy samples of uint8[3,64,64]")
    p.add_argument("--images", type=int, default=2_000, help="image files")
    p.add_argument("--src-width", type=int, default=320)
    p.add_argument("--src-height", type=int, default=240)
    p.add_argument("--size", type=int, default=64, help="decoded images are size x size")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2])
    p.add_argument("--rounds", type=int, default=4, help="alternating epochs per contender (with workers)")
    p.add_argument("--epochs", type=int, default=3, help="interleaved epochs per contender (0 workers)")
    p.add_argument("--quick", action="store_true", help="20k samples, 500 images, 2 rounds")
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.quick:
        args.samples, args.images, args.rounds, args.epochs = 20_000, 500, 2, 2
    torch.set_num_threads(1)
    print(f"Arrow vs NumPy: {args.samples:,} samples of uint8[3, 64, 64] + int64 label, batch 256")
    arrow_rows = bench_arrow(args)
    print(f"Images: {args.images:,} files of {args.src_width}x{args.src_height} -> {args.size}x{args.size}, batch 64")
    image_rows = bench_images(args)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyarrow": pa.__version__,
            "pillow": Image.__version__,
        },
        "rows": arrow_rows + image_rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
