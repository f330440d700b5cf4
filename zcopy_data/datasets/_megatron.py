"""Megatron-LM indexed datasets (``.bin`` + ``.idx``), read from their documented layout.

The ``.idx`` file (``MMIDIDX`` version 1) holds, after a 34-byte header (magic, version, dtype
code, sequence count, document count): ``int32`` sequence lengths, ``int64`` byte pointers of the
sequences into the ``.bin``, ``int64`` document indices (the first sequence of each document, with
a final sentinel equal to the sequence count) and, for multimodal sets, one ``int8`` mode per
sequence. The ``.bin`` is the sequences' tokens back to back. Everything is checked against the
``.bin`` once, here, so a mismatched pair is refused before any batch is read. Only the index
arrays are read (one entry per sequence), never the tokens.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

import numpy as np

from zcopy_data._mapping import FileIdentity, file_array
from zcopy_data.errors import CorruptFileError

__all__ = ["MEGATRON_MAGIC", "MegatronIndex", "megatron_paths", "read_megatron_index"]

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = 34
# Megatron-LM's DType codes
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


class MegatronIndex(NamedTuple):
    """A checked ``.idx``: the token dtype and where each document starts, in tokens."""

    dtype: np.dtype[Any]
    sequences: int
    doc_starts: np.ndarray[Any, np.dtype[np.int64]]  # token offset of each document, then the token count
    tokens: int


def megatron_paths(path: str) -> tuple[str, str] | None:
    """``(bin, idx)`` when ``path`` names a Megatron pair: its prefix, its ``.bin`` or its ``.idx``."""
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    idx = prefix + ".idx"
    if not os.path.isfile(idx):
        return None
    with open(idx, "rb") as f:
        if f.read(len(MEGATRON_MAGIC)) != MEGATRON_MAGIC:
            return None
    return prefix + ".bin", idx


def read_megatron_index(idx_path: str, bin_path: str, bin_identity: FileIdentity) -> MegatronIndex:
    """Read and check ``idx_path`` against its ``.bin`` (of ``bin_identity.size`` bytes)."""

    def bad(why: str, fix: str = "rebuild the pair with Megatron-LM's preprocess_data.py") -> CorruptFileError:
        return CorruptFileError(f"{idx_path!r} does not match {bin_path!r}: {why}; {fix}")

    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER)
    if len(head) < _HEADER or head[:9] != MEGATRON_MAGIC:
        raise CorruptFileError(f"{idx_path!r} is not a Megatron-LM .idx file (no MMIDIDX header)")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != 1:
        raise bad(f"index version {version}, only version 1 is read")
    code = head[17]
    if code not in _DTYPES:
        raise bad(f"unknown token dtype code {code} (known: {sorted(_DTYPES)})")
    dtype = np.dtype(_DTYPES[code])
    sequences, documents = struct.unpack("<QQ", head[18:34])
    plain = _HEADER + sequences * (4 + 8) + documents * 8
    if size not in (plain, plain + sequences):  # with or without the multimodal modes
        raise bad(
            f"its header declares {sequences} sequences and {documents} document indices "
            f"({plain} bytes), the file has {size} bytes (truncated?)"
        )
    lengths = np.fromfile(idx_path, dtype="<i4", count=sequences, offset=_HEADER).astype(np.int64)
    pointers = np.fromfile(idx_path, dtype="<i8", count=sequences, offset=_HEADER + 4 * sequences)
    docs = np.fromfile(idx_path, dtype="<i8", count=documents, offset=_HEADER + 12 * sequences)
    if sequences and int(lengths.min()) < 0:
        raise bad(f"sequence {int(np.argmin(lengths))} has a negative length {int(lengths.min())}")
    if sequences:
        expected = np.concatenate([[0], np.cumsum(lengths[:-1]) * dtype.itemsize])
        wrong = np.flatnonzero(pointers != expected)
        if wrong.size:
            i = int(wrong[0])
            raise bad(
                f"sequence {i} starts at byte {int(pointers[i])}, expected {int(expected[i])} "
                "(the sequences back to back): negative, decreasing or gapped pointers"
            )
    tokens = int(lengths.sum())
    if tokens * dtype.itemsize != bin_identity.size:
        raise bad(
            f"its sequences hold {tokens} tokens of {dtype.name} = {tokens * dtype.itemsize} bytes, "
            f"the .bin has {bin_identity.size} bytes"
        )
    if documents == 0 or int(docs[0]) != 0 or int(docs[-1]) != sequences:
        raise bad(f"document indices must run from 0 to the sequence count {sequences}, found {docs[:1]}..{docs[-1:]}")
    if documents > 1 and bool((np.diff(docs) < 0).any()):
        at = int(np.flatnonzero(np.diff(docs) < 0)[0]) + 1
        raise bad(f"document index {at} ({int(docs[at])}) is smaller than the one before it (decreasing)")
    seq_starts = np.concatenate([[0], np.cumsum(lengths)])
    doc_starts = np.ascontiguousarray(seq_starts[docs], dtype=np.int64)
    return MegatronIndex(dtype, int(sequences), doc_starts, tokens)


def map_megatron_bin(bin_path: str, index: MegatronIndex, identity: FileIdentity) -> np.ndarray[Any, Any]:
    """The ``.bin`` tokens as one flat copy-on-write array (registered for crossing)."""
    return file_array(bin_path, 0, (index.tokens,), index.dtype.newbyteorder("<"), identity=identity, shared=False)
