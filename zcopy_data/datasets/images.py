"""``ImageFolderDataset``: image files decoded straight into the batch buffer, in a declared pixel format.

Compressed pixels must be decoded, so an image can never be zero-copy; what is left is making the
decode the only work: a batch is one output buffer (shared memory inside a ``DataLoader`` worker)
and each image is decoded, converted, resized and copied once into its slot, with no per-sample
tensors, no ``torch.stack`` and no second copy when the batch leaves a worker. Nothing about the
pixels is left to chance: the mode, the resize filter and the exactness of the decode are declared,
a file that would lose information (alpha, 16 bits) is refused unless that too is declared, and
every file left out under ``on_error="skip"`` is reported in the process that iterates the loader.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import get_worker_info

from zcopy_data._requests import Indices, Run
from zcopy_data._storage import nbytes
from zcopy_data.datasets import _jpeg_simple
from zcopy_data.datasets._image_decode import (
    Decoded,
    DecodeSpec,
    check_max_pixels,
    decode_into,
    record_decode,
    resample_filter,
)
from zcopy_data.datasets._image_files import IMG_EXTENSIONS, not_regular, scan_folder
from zcopy_data.datasets._image_modes import PixelFormat
from zcopy_data.datasets._image_skips import ReportedBatch, Skip, in_worker_process, register, warn
from zcopy_data.datasets.base import ZeroCopyDataset, as_index
from zcopy_data.errors import CorruptFileError, SampleIndexError, SchemaError
from zcopy_data.ledger import COLLATE, DECODE, record
from zcopy_data.memory.gather import take_rows
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Field, Schema

__all__ = ["ImageFolderDataset", "decode_spec", "simplejpeg_matches_pillow"]


def simplejpeg_matches_pillow() -> bool:
    """Whether ``simplejpeg`` is installed and decodes exactly Pillow's pixels on this machine (the
    condition for ``decoder="auto"`` to use it)."""
    return _jpeg_simple.matches_pillow()


_ON_ERROR = ("raise", "skip")
_DECODERS = ("auto", "pillow", "simplejpeg")


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


def _decoder(decoder: str, decode: str) -> str:
    """The JPEG decoder ``decoder=`` resolves to on this machine: ``"pillow"`` or ``"simplejpeg"``."""
    if decoder not in _DECODERS:
        raise ValueError(f"{decoder=} should be one of {_DECODERS}")
    if decoder == "pillow":
        return "pillow"
    if decoder == "auto":
        return "simplejpeg" if _jpeg_simple.matches_pillow() else "pillow"
    if not _jpeg_simple.HAS_SIMPLEJPEG:
        raise ImportError(f"decoder='simplejpeg' needs the simplejpeg package: {_jpeg_simple.INSTALL_HINT}")
    if decode == "exact" and not _jpeg_simple.matches_pillow():
        raise SchemaError(
            "decoder='simplejpeg': its decode differs from Pillow's on this machine (another libjpeg-turbo "
            "build), so decode='exact' cannot hold; use decoder='auto' or 'pillow', or decode='fast'"
        )
    return "simplejpeg"


def decode_spec(
    size: int | Sequence[int],
    *,
    mode: str = "RGB",
    alpha: str = "refuse",
    decode: str = "exact",
    resample: Any = "bilinear",
    decoder: str = "auto",
    channels_last: bool = False,
    max_pixels: int | Literal[_Default.PILLOW] | None = _PILLOW_LIMIT,
) -> DecodeSpec:
    """The declared decode of every image, from ``ImageFolderDataset``'s arguments (validated, resolved)."""
    if max_pixels is _PILLOW_LIMIT:
        from PIL import Image

        pillow = Image.MAX_IMAGE_PIXELS
        max_pixels = None if pillow is None else int(pillow)
    return DecodeSpec(
        _size(size),
        PixelFormat(mode, alpha),
        resample_filter(resample),
        decode,
        _decoder(decoder, decode),
        channels_last,
        check_max_pixels(max_pixels),
    )


def _default_threads() -> int:
    """The cores this process may use, shared among the ``DataLoader`` worker processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = get_worker_info()
    return max(1, cores // (info.num_workers if info is not None else 1))


class ImageFolderDataset(ZeroCopyDataset):
    """Images in ``root/<class>/<file>`` (torchvision's layout), as ``{"image": uint8, "label": int64}``.

    Args:
        root: the folder; each sub-folder is a class, classes are sorted (``.classes``).
        size: (height, width) every image is resized to (an int means square).
        mode: the pixel format of every sample, in Pillow's names: ``"RGB"`` (default, 3 channels),
            ``"L"`` (1), ``"RGBA"`` (4, alpha kept) or ``"I;16"`` (1 channel of ``uint16``). Files of
            other modes are converted by Pillow's ``convert`` (palette, CMYK, gray: named by
            ``inspect``), or refused, naming the file and the fix, where the conversion would lose
            information: 16-bit files in an 8-bit mode (Pillow saturates them), 8-bit files in an
            ``I;16`` dataset, transparency in a mode without alpha (see ``alpha``).
        alpha: ``"refuse"`` (default) or ``"drop"``: what happens to a file with transparency when
            ``mode`` has no alpha channel. Refusing is the default because dropping alpha changes
            what the image shows (a transparent background becomes whatever colour was stored).
        decode: ``"exact"`` (default) gives Pillow's own ``Image.open(p).convert(mode).resize((W, H),
            resample)`` bit for bit, so training sees the pixels an evaluation or export pipeline
            written with PIL/torchvision sees. ``"fast"`` lets JPEGs larger than the target decode at
            1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's draft mode, what the decoder skips the
            resize would mostly throw away): several times less decode work, and pixels that differ
            from ``"exact"`` by a mean absolute difference of at most 2 (of 255) on photographs, single
            pixels at sharp edges by more (tens of levels). Other formats decode the same either way.
        resample: the resize filter, by Pillow's name (``"bilinear"``, default, as torchvision's
            ``Resize``; ``"nearest"``, ``"bicubic"``, ``"lanczos"``, ``"box"``, ``"hamming"``) or
            ``Image.Resampling`` member.
        decoder: the JPEG decoder: ``"auto"`` (default) uses ``simplejpeg`` when it is installed
            (``pip install 'zcopy-data[jpeg]'``) and decodes exactly Pillow's pixels on this machine
            (checked once per process), else Pillow; ``"pillow"``; ``"simplejpeg"`` (an error if it is
            missing, or, with ``decode="exact"``, if it does not match Pillow). Other formats, and
            JPEGs ``simplejpeg`` does not serve (CMYK), always go through Pillow. ``.decoder`` says
            which one was chosen.
        channels_last: samples are (H, W, C) instead of (C, H, W).
        on_error: ``"raise"`` (default) stops at the first unreadable file with an error naming it;
            ``"skip"`` leaves it out of its batch (the batch is shorter) and reports it in the process
            that iterates the loader, worker processes included: one :class:`SkippedFileWarning`
            per file, a ledger row, and an entry in ``.skipped``. A file the declared ``mode``
            refuses is a configuration error and always raises.
        follow_symlinks: follow links that lead outside ``root`` or into another class's folder (whose
            images would then be served again under this class's label); default: left out, listed
            in ``.excluded``. A link to ``root`` or above it is always left out.
        extensions: file suffixes to load (case-insensitive).
        threads: decode a batch on this many threads (the decoders release the GIL); default: the
            cores this process may use (``os.sched_getaffinity``), divided among the ``DataLoader``
            worker processes.
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
        mode: str = "RGB",
        alpha: str = "refuse",
        decode: str = "exact",
        resample: Any = "bilinear",
        decoder: str = "auto",
        channels_last: bool = False,
        on_error: str = "raise",
        follow_symlinks: bool = False,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        threads: int | None = None,
        allow_empty: bool = False,
        max_pixels: int | Literal[_Default.PILLOW] | None = _PILLOW_LIMIT,
    ) -> None:
        self.root: str | None = os.fspath(root)
        scan = scan_folder(
            self.root, extensions=tuple(extensions), follow_symlinks=follow_symlinks, allow_empty=allow_empty
        )
        self.excluded = scan.excluded
        self._setup(scan.files, scan.labels, scan.classes, size, mode=mode, alpha=alpha, decode=decode,
                    resample=resample, decoder=decoder, channels_last=channels_last, on_error=on_error,
                    threads=threads, max_pixels=max_pixels)  # fmt: skip

    @classmethod
    def from_files(
        cls,
        files: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray[Any, Any],
        size: int | Sequence[int],
        *,
        classes: Sequence[str] | None = None,
        mode: str = "RGB",
        alpha: str = "refuse",
        decode: str = "exact",
        resample: Any = "bilinear",
        decoder: str = "auto",
        channels_last: bool = False,
        on_error: str = "raise",
        threads: int | None = None,
        max_pixels: int | Literal[_Default.PILLOW] | None = _PILLOW_LIMIT,
    ) -> ImageFolderDataset:
        """A dataset over explicit files and integer labels (``classes`` optional, indexed by label).

        Every file must exist and be a regular file (a FIFO or device is refused: reading it can block
        forever). The other arguments are the constructor's.
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
        self._setup(paths, labels, None if classes is None else list(classes), size, mode=mode, alpha=alpha,
                    decode=decode, resample=resample, decoder=decoder, channels_last=channels_last,
                    on_error=on_error, threads=threads, max_pixels=max_pixels)  # fmt: skip
        return self

    def _setup(
        self,
        files: list[str],
        labels: Any,
        classes: list[str] | None,
        size: int | Sequence[int],
        *,
        mode: str,
        alpha: str,
        decode: str,
        resample: Any,
        decoder: str,
        channels_last: bool,
        on_error: str,
        threads: int | None,
        max_pixels: int | Literal[_Default.PILLOW] | None,
    ) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"{on_error=} should be one of {_ON_ERROR}")
        if threads is not None and threads < 1:
            raise ValueError(f"{threads=} should be >= 1, or None for the cores available")
        try:
            lab = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise SchemaError("field 'label': labels must be integers; map class names to ids first") from None
        if lab.ndim != 1 or (lab.size and lab.min() < 0):
            raise SchemaError("field 'label': labels must be a 1-D sequence of integers >= 0", field="label")
        self.spec = decode_spec(size, mode=mode, alpha=alpha, decode=decode, resample=resample, decoder=decoder,
                                channels_last=channels_last, max_pixels=max_pixels)  # fmt: skip
        self.files = files
        self.classes = classes
        self.class_to_idx = None if classes is None else {c: i for i, c in enumerate(classes)}
        self.on_error = on_error
        self.threads = threads
        self.skipped: list[tuple[str, str]] = []
        self._labels = lab
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._home_pid = os.getpid()
        self._token = register(self)
        self._shape = self.spec.shape
        self.schema = Schema({"image": Field(self.spec.pixels.dtype, self._shape), "label": Field(torch.int64)})

    # -- the declared decode, readable -----------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        return self.spec.size

    @property
    def mode(self) -> str:
        return self.spec.pixels.mode

    @property
    def alpha(self) -> str:
        return self.spec.pixels.alpha

    @property
    def decode(self) -> str:
        return self.spec.decode

    @property
    def decoder(self) -> str:
        """The JPEG decoder in use: ``"pillow"`` or ``"simplejpeg"``."""
        return self.spec.decoder

    @property
    def resample(self) -> str:
        """The resize filter's Pillow name."""
        return self.spec.resample.name.lower()

    @property
    def channels_last(self) -> bool:
        return self.spec.channels_last

    @property
    def max_pixels(self) -> int | None:
        return self.spec.max_pixels

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
        image = torch.empty(self._shape, dtype=self.spec.pixels.dtype)
        decode_into(self.files[i], image.numpy(), self.spec)
        return {"image": image, "label": torch.tensor(self._labels[i])}

    def _decode_at(self, args: tuple[int, str, np.ndarray[Any, Any]]) -> tuple[int, Decoded | CorruptFileError]:
        pos, path, slot = args
        try:
            return pos, decode_into(path, slot, self.spec)
        except CorruptFileError as err:
            if self.on_error == "raise":
                raise
            return pos, err

    def _decode_threads(self) -> int:
        return self.threads if self.threads is not None else _default_threads()

    def build_batch(self, indices: Indices, run: Run | None, allocation: Allocation) -> dict[str, torch.Tensor]:
        """Decode each image of the batch straight into its slot of one output buffer."""
        images = allocation((indices.size, *self._shape), self.spec.pixels.dtype)
        slots = images.numpy()
        jobs = [(pos, self.files[i], slots[pos]) for pos, i in enumerate(indices.tolist())]
        threads = self._decode_threads()
        if threads > 1 and len(jobs) > 1:
            if self._pool is None or self._pool_pid != os.getpid():  # a forked worker has no threads
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="zcopy-decode")
                self._pool_pid = os.getpid()
            results = list(self._pool.map(self._decode_at, jobs))
        else:
            results = [self._decode_at(job) for job in jobs]
        done = [d for _, d in results if isinstance(d, Decoded)]
        failed = [(pos, err) for pos, err in results if isinstance(err, CorruptFileError)]
        skips = [self._skip(int(indices[pos]), err) for pos, err in failed]
        keep = indices
        if failed:
            ok = np.ones(indices.size, dtype=bool)
            ok[[pos for pos, _ in failed]] = False
            keep = indices[ok]
            compact = take_rows(images, torch.from_numpy(np.flatnonzero(ok)), allocation)
            record(COLLATE, "image", "gather: compact the batch around skipped files", copied=nbytes(compact))
            images, run = compact, None
        self._record_decode(done, nbytes(images) // max(1, int(keep.size)))
        if run is not None:
            labels = torch.from_numpy(self._labels[run[0] : run[1]])
            record(COLLATE, "label", "view: indices contiguous", viewed=nbytes(labels))
        else:
            labels = take_rows(torch.from_numpy(self._labels), torch.from_numpy(keep), allocation)
            record(COLLATE, "label", "gather: indices not contiguous", copied=nbytes(labels))
        batch = {"image": images, "label": labels}
        if skips and in_worker_process(self._home_pid):
            return ReportedBatch(batch, self._token, skips)  # reported where the batch is received
        return batch

    def _record_decode(self, done: list[Decoded], sample_bytes: int) -> None:
        """The batch's decode ledger row, naming the decoders and each conversion of a file's mode."""
        record_decode("image", done, self.spec, sample_bytes)

    def _skip(self, index: int, err: CorruptFileError) -> Skip:
        """Keep and count a skipped file; warn here unless a worker process sends it to the main process."""
        skip = Skip(index, self.files[index], str(err))
        self.skipped.append((skip.path, skip.why))
        record(DECODE, "image", f"skipped unreadable file {skip.path}")
        if not in_worker_process(self._home_pid):
            warn(skip, stacklevel=4)
        return skip

    # -- pickling: each process has its own decode threads ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pool"] = None
        return state

    def __repr__(self) -> str:
        where = repr(self.root) if self.root is not None else "files"
        n_cls = f", {len(self.classes)} classes" if self.classes is not None else ""
        return (
            f"ImageFolderDataset({where}, {len(self)} images{n_cls}, {self.spec.pixels}, decode={self.decode!r}, "
            f"resample={self.resample!r}, decoder={self.decoder!r}, {self.schema})"
        )
