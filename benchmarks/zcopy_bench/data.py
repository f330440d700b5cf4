"""The benchmark's data: generated uint8 images + int64 labels, or the user's own ``.npy`` files."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zcopy_data import SchemaError

__all__ = ["DataSource", "default_cache_dir", "make_synthetic", "open_source", "synthetic_source"]


def default_cache_dir() -> Path:
    """Where generated data and peers' converted copies live (``$ZCOPY_DATA_CACHE`` overrides)."""
    return Path(os.environ.get("ZCOPY_DATA_CACHE", Path(tempfile.gettempdir()) / "zcopy-data-bench"))


def make_synthetic(
    n: int = 60_000, shape: tuple[int, ...] = (3, 64, 64), *, folder: Path | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write (once) ``images.npy`` (n, *shape) uint8 and ``labels.npy`` (n,) int64; return their paths."""
    folder = Path(folder or default_cache_dir()) / f"n{n}_{'x'.join(map(str, shape))}_s{seed}"
    paths = {"image": folder / "images.npy", "label": folder / "labels.npy"}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(folder / "images.tmp.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
    chunk = 4096
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        images[start:stop] = rng.integers(0, 256, size=(stop - start, *shape), dtype=np.uint8)
    images.flush()
    del images
    np.save(folder / "labels.tmp.npy", rng.integers(0, 1000, size=n, dtype=np.int64))
    os.replace(folder / "images.tmp.npy", paths["image"])
    os.replace(folder / "labels.tmp.npy", paths["label"])
    return paths


@dataclass(frozen=True)
class DataSource:
    """Named ``.npy`` files of equal length: what every contender reads.

    Attributes:
        paths: field name -> ``.npy`` file.
        n: samples.
        fields: field name -> (dtype name, per-sample shape).
        key: a short id of the files (path, size, mtime), naming peers' converted copies.
        origin: ``"synthetic"`` or the path the user gave.
    """

    paths: dict[str, Path]
    n: int
    fields: dict[str, tuple[str, tuple[int, ...]]]
    key: str
    origin: str

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample, all fields, as stored."""
        return sum(np.dtype(d).itemsize * math.prod(s) for d, s in self.fields.values())

    def describe(self) -> str:
        parts = [f"{name} {dtype}{list(shape)}" for name, (dtype, shape) in self.fields.items()]
        return f"{self.n:,} samples of {' + '.join(parts)} ({self.sample_bytes:,} B each) from {self.origin}"

    def to_spec(self) -> dict[str, Any]:
        """JSON-ready form, sent to the measuring processes."""
        return {
            "paths": {k: str(v) for k, v in self.paths.items()},
            "n": self.n,
            "fields": {k: [d, list(s)] for k, (d, s) in self.fields.items()},
            "key": self.key,
            "origin": self.origin,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DataSource:
        return cls(
            paths={k: Path(v) for k, v in spec["paths"].items()},
            n=int(spec["n"]),
            fields={k: (d, tuple(s)) for k, (d, s) in spec["fields"].items()},
            key=spec["key"],
            origin=spec["origin"],
        )


def _open_files(paths: dict[str, Path], origin: str) -> DataSource:
    fields: dict[str, tuple[str, tuple[int, ...]]] = {}
    n: int | None = None
    first = ""
    digest = hashlib.sha1()
    for name, path in paths.items():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise SchemaError(
                f"field {name!r}: {str(path)!r} is not a readable .npy file of a numeric array ({err}); "
                "write it with np.save(path, array)",
                field=name,
            ) from None
        if arr.ndim == 0 or arr.dtype.kind not in "biuf":
            raise SchemaError(
                f"field {name!r}: {str(path)!r} holds a {arr.ndim}-d {arr.dtype} array; expected a numeric array "
                "whose first axis is the sample; save one array per field with np.save",
                field=name,
            )
        if n is None:
            n, first = int(arr.shape[0]), name
        elif arr.shape[0] != n:
            raise SchemaError(
                f"field {name!r}: {str(path)!r} has {arr.shape[0]} samples but field {first!r} has {n}; "
                "every .npy file in the folder needs one row per sample (move the others out)",
                field=name,
            )
        fields[name] = (arr.dtype.name, tuple(int(x) for x in arr.shape[1:]))
        st = path.stat()
        digest.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
        del arr
    if not n:
        raise SchemaError(f"{origin!r} holds no samples; the benchmark needs at least one batch of data")
    return DataSource(paths=dict(paths), n=n, fields=fields, key=digest.hexdigest()[:12], origin=origin)


def open_source(path: str | os.PathLike[str]) -> DataSource:
    """Benchmark data from a folder of ``.npy`` files (fields named by file stem) or a single ``.npy``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the folder has no ``.npy`` file.
        SchemaError: a file is not a numeric ``.npy`` array, or the files differ in length.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder {str(p)!r}; pass a folder of .npy files or one .npy file")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npy" and f.is_file())
        if not files:
            raise FileNotFoundError(
                f"folder {str(p)!r} holds no .npy file; write one per field with np.save(folder / 'image.npy', array)"
            )
    elif p.suffix != ".npy":
        raise SchemaError(f"{str(p)!r} is not a .npy file; pass a folder of .npy files or one .npy file")
    else:
        files = [p]
    return _open_files({f.stem: f for f in files}, origin=str(p))


def synthetic_source(
    n: int = 60_000, shape: tuple[int, ...] = (3, 64, 64), *, folder: Path | None = None, seed: int = 0
) -> DataSource:
    """The generated data set (written once, then reused): ``image`` uint8 ``shape`` + ``label`` int64."""
    src = _open_files(make_synthetic(n, shape, folder=folder, seed=seed), origin="synthetic")
    return DataSource(src.paths, src.n, src.fields, src.key, "synthetic")
