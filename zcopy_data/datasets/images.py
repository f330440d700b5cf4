"""``ImageFolderDataset``: JPEG/PNG files decoded by Pillow straight into the batch buffer.

Compressed pixels must be decoded, so an image can never be zero-copy; what is left is making the
decode the only work: a batch is one output buffer (shared memory inside a ``DataLoader`` worker)
and each image is decoded, resized and copied once into its slot, with no per-sample tensors, no
``torch.stack`` and no second copy when the batch leaves a worker.
"""

from __future__ import annotations

import enum
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets._image_decode import check_max_pixels, decode_into
from zcopy_data.datasets._image_files import IMG_EXTENSIONS, not_regular, scan_folder
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import CorruptFileError, SampleIndexError, SchemaError, SkippedFileWarning
from zcopy_data.ledger import COLLATE, DECODE, record
from zcopy_data.memory.gather import take_rows
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Field, Schema

__all__ = ["ImageFolderDataset"]

_ON_ERROR = ("raise", "skip")


class _Default(enum.Enum):
    PILLOW = "PIL.Image.MAX_IMAGE_PIXELS"

    def __repr__(self) -> str:
        return self.value


_PILLOW_LIMIT: Literal[_Default.PILLOW] = _Default.PILLOW
"""``max_pixels``'s default: ``PIL.Image.MAX_IMAGE_PIXELS`` as it is when the dataset is built."""


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in hw):
        raise SchemaError(f"size={size!r} should be (height, width), two integers > 0")
    return int(hw[0]), int(hw[1])


class ImageFolderDataset(ZeroCopyDataset):
    """Images in ``root/<class>/<file>`` (torchvision's layout), as ``{"image": uint8, "label": int64}``.

    Args:
        root: the folder; each sub-folder is a class, classes are sorted (``.classes``).
        size: (height, width) every image is resized to (an int means square).
        channels_last: samples are (H, W, 3) instead of (3, H, W).
        on_error: ``"raise"`` (default) stops at the first unreadable file with an error naming it;
            ``"skip"`` leaves it out of its batch (the batch is shorter) and reports it with a
            :class:`SkippedFileWarning`, a ledger row and in ``.skipped``.
        follow_symlinks: follow links that lead outside ``root`` or into another class's folder (whose
            images would then be served again under this class's label); default: left out, listed
            in ``.excluded``. A link to ``root`` or above it is always left out.
        extensions: file suffixes to load (case-insensitive).
        resample: the Pillow resampling filter (default bilinear, as torchvision's ``Resize``).
        threads: decode a batch on this many threads (Pillow releases the GIL while decoding).
        allow_empty: accept class folders without images.
        max_pixels: refuse an image whose header declares more pixels than this, before decoding it
            (a :class:`CorruptFileError` naming it, so ``on_error="skip"`` skips it); default
            ``PIL.Image.MAX_IMAGE_PIXELS`` at construction (89,478,485 unless changed), ``None``
            for no limit. Pillow's own warning is silenced, but Pillow still refuses an image
            above 2 x ``Image.MAX_IMAGE_PIXELS`` whatever this says.

    Only regular files are read: a FIFO, socket or device under ``root`` is left out and listed in
    ``.excluded`` (reading one can block forever), and one found at decode time is refused.

    >>> import tempfile, os
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(f"{root}/cat"); Image.new("RGB", (40, 30)).save(f"{root}/cat/a.png")
    >>> ds = ImageFolderDataset(root, size=(16, 16))
    >>> ds.classes, ds[0]["image"].shape
    (['cat'], torch.Size([3, 16, 16]))

    .. note:: ``ds[i]`` always raises on an unreadable file; skipping applies to batches.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int | Sequence[int],
        *,
        channels_last: bool = False,
        on_error: str = "raise",
        follow_symlinks: bool = False,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        resample: Any = Image.Resampling.BILINEAR,
        threads: int = 1,
        allow_empty: bool = False,
        max_pixels: int | Literal[_Default.PILLOW] | None = _PILLOW_LIMIT,
    ) -> None:
        self.root: str | None = os.fspath(root)
        scan = scan_folder(
            self.root, extensions=tuple(extensions), follow_symlinks=follow_symlinks, allow_empty=allow_empty
        )
        self.excluded = scan.excluded
        self._setup(scan.files, scan.labels, scan.classes, size, channels_last, on_error, resample, threads, max_pixels)

    @classmethod
    def from_files(
        cls,
        files: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray[Any, Any],
        size: int | Sequence[int],
        *,
        classes: Sequence[str] | None = None,
        channels_last: bool = False,
        on_error: str = "raise",
        resample: Any = Image.Resampling.BILINEAR,
        threads: int = 1,
        max_pixels: int | Literal[_Default.PILLOW] | None = _PILLOW_LIMIT,
    ) -> ImageFolderDataset:
        """A dataset over explicit files and integer labels (``classes`` optional, indexed by label).

        Every file must exist and be a regular file (a FIFO or device is refused: reading it can block forever).
        """
        paths = [os.fspath(f) for f in files]
        if len(paths) != len(labels):
            raise SchemaError(f"{len(paths)} files but {len(labels)} labels; give one label per file")
        missing, irregular = [], []
        for p in paths:
            try:
                kind = not_regular(os.stat(p).st_mode)
            except OSError:
                missing.append(p)
                continue
            if kind is not None:
                irregular.append((p, kind))
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the files do not exist, first {missing[0]!r}")
        if irregular:
            (first, kind), n = irregular[0], len(irregular)
            raise CorruptFileError(
                f"{first!r} is not a regular file ({kind}); only regular files are read"
                + (f" ({n} of the files are not, this is the first)" if n > 1 else "")
            )
        self = cls.__new__(cls)
        self.root, self.excluded = None, []
        self._setup(paths, labels, None if classes is None else list(classes), size, channels_last, on_error,
                    resample, threads, max_pixels)  # fmt: skip
        return self

    def _setup(
        self,
        files: list[str],
        labels: Any,
        classes: list[str] | None,
        size: int | Sequence[int],
        channels_last: bool,
        on_error: str,
        resample: Any,
        threads: int,
        max_pixels: int | Literal[_Default.PILLOW] | None,
    ) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"{on_error=} should be one of {_ON_ERROR}")
        if max_pixels is _PILLOW_LIMIT:
            pillow = Image.MAX_IMAGE_PIXELS
            max_pixels = None if pillow is None else int(pillow)
        self.max_pixels = check_max_pixels(max_pixels)
        if threads < 1:
            raise ValueError(f"{threads=} should be >= 1")
        try:
            lab = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise SchemaError("field 'label': labels must be integers; map class names to ids first") from None
        if lab.ndim != 1 or (lab.size and lab.min() < 0):
            raise SchemaError("field 'label': labels must be a 1-D sequence of integers >= 0", field="label")
        self.files = files
        self.classes = classes
        self.class_to_idx = None if classes is None else {c: i for i, c in enumerate(classes)}
        self.size = _size(size)
        self.channels_last = channels_last
        self.on_error = on_error
        self.resample = resample
        self.threads = threads
        self.skipped: list[tuple[str, str]] = []
        self._labels = lab
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        h, w = self.size
        self._shape = (h, w, 3) if channels_last else (3, h, w)
        self.schema = Schema({"image": Field(torch.uint8, self._shape), "label": Field(torch.int64)})

    @property
    def labels(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Each file's integer label, in ``files`` order (a read-only view)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    # -- Dataset ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.files)
        i = as_index(index)
        if not -n <= i < n:
            raise SampleIndexError(f"index {i} is out of range for a dataset of {n} samples", index=i)
        image = torch.empty(self._shape, dtype=torch.uint8)
        self._decode(self.files[i], image.numpy())
        return {"image": image, "label": torch.tensor(self._labels[i])}

    def _decode(self, path: str, slot: np.ndarray[Any, Any]) -> int:
        return decode_into(
            path, slot, self.size, channels_last=self.channels_last, resample=self.resample, max_pixels=self.max_pixels
        )

    def _decode_at(self, args: tuple[int, str, np.ndarray[Any, Any]]) -> tuple[int, int | CorruptFileError]:
        pos, path, slot = args
        try:
            return pos, self._decode(path, slot)
        except CorruptFileError as err:
            if self.on_error == "raise":
                raise
            return pos, err

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, torch.Tensor]:
        """Decode each image of the batch straight into its slot of one output buffer."""
        images = allocation((indices.size, *self._shape), torch.uint8)
        slots = images.numpy()
        jobs = [(pos, self.files[i], slots[pos]) for pos, i in enumerate(indices.tolist())]
        if self.threads > 1 and len(jobs) > 1:
            if self._pool is None or self._pool_pid != os.getpid():  # a forked worker has no threads
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="zcopy-decode")
                self._pool_pid = os.getpid()
            results = list(self._pool.map(self._decode_at, jobs))
        else:
            results = [self._decode_at(job) for job in jobs]
        failed = [(pos, err) for pos, err in results if isinstance(err, CorruptFileError)]
        copies = max((c for _, c in results if isinstance(c, int)), default=1)
        for pos, err in failed:
            self._report_skip(int(indices[pos]), err)
        keep = indices
        if failed:
            ok = np.ones(indices.size, dtype=bool)
            ok[[pos for pos, _ in failed]] = False
            keep = indices[ok]
            compact = take_rows(images, torch.from_numpy(np.flatnonzero(ok)), allocation)
            record(COLLATE, "image", "gather: compact the batch around skipped files", copied=nbytes(compact))
            images, run = compact, None
        how = "one copy into the batch slot" if copies == 1 else "Pillow packs RGB, then one copy into the slot"
        record(DECODE, "image", f"decode: Pillow decode + resize, {how}", copied=copies * nbytes(images))
        if run is not None:
            labels = torch.from_numpy(self._labels[run[0] : run[1]])
            record(COLLATE, "label", "view: indices contiguous", viewed=nbytes(labels))
        else:
            labels = take_rows(torch.from_numpy(self._labels), torch.from_numpy(keep), allocation)
            record(COLLATE, "label", "gather: indices not contiguous", copied=nbytes(labels))
        return {"image": images, "label": labels}

    def _report_skip(self, index: int, err: CorruptFileError) -> None:
        path = self.files[index]
        self.skipped.append((path, str(err)))
        record(DECODE, "image", f"skipped unreadable file {path}")
        warnings.warn(SkippedFileWarning(f"sample {index} left out of its batch: {err}"), stacklevel=3)

    # -- pickling: each process has its own decode threads ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pool"] = None
        return state

    def __repr__(self) -> str:
        where = repr(self.root) if self.root is not None else "files"
        n_cls = f", {len(self.classes)} classes" if self.classes is not None else ""
        return f"ImageFolderDataset({where}, {len(self)} images{n_cls}, {self.schema})"
