"""Encoded-image columns of an ``ArrowDataset`` (Hugging Face ``Image``), decoded into the batch.

A Hugging Face ``datasets.Image`` column is ``struct<bytes: binary, path: string>`` in Arrow, named
``{"_type": "Image"}`` in the schema's ``huggingface`` metadata. Compressed pixels are never a
view, so such a column is served only when declared (``images={"image": {"size": (H, W)}}``),
with the decode declared as ``ImageFolderDataset`` declares it (mode, alpha, resample, exactness,
decoder): each image's encoded bytes are read in place from the file mapping and decoded straight
into its slot of one output buffer per batch, a counted ``decode`` step in the ledger. A row that
stores only a path reads that file (a relative path from the folder of the Arrow file); a null
image is refused when the file is opened, naming its index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from zcopy_data._requests import Indices
from zcopy_data._storage import nbytes
from zcopy_data.datasets._arrow_columns import _outside_mapping
from zcopy_data.datasets._image_decode import (
    ROW_FIXES,
    Decoded,
    DecodeSpec,
    decode_bytes_into,
    decode_into,
    record_decode,
)
from zcopy_data.datasets.images import decode_spec
from zcopy_data.errors import CorruptFileError, UnsupportedColumnError, ZeroCopyError
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Field

if TYPE_CHECKING:
    from zcopy_data.datasets._arrow_shards import ArrowShards

__all__ = ["IMAGE_KEYS", "ImageColumn", "image_settings", "refuse_undeclared", "take_images"]

IMAGE_KEYS = ("size", "mode", "alpha", "decode", "resample", "decoder", "channels_last", "max_pixels")
"""What ``images={name: {...}}`` may declare: ``ImageFolderDataset``'s decode arguments (``size`` required)."""


def image_settings(images: Mapping[str, Any] | None) -> dict[str, DecodeSpec]:
    """Each declared column's decode, from a size (``224``, ``(H, W)``) or a mapping of :data:`IMAGE_KEYS`."""
    out: dict[str, DecodeSpec] = {}
    for name, given in (images or {}).items():
        if isinstance(given, DecodeSpec):  # already resolved (a shard opened by its dataset)
            out[name] = given
            continue
        settings = dict(given) if isinstance(given, Mapping) else {"size": given}
        unknown = sorted(set(settings) - set(IMAGE_KEYS))
        if unknown or "size" not in settings:
            what = f"unknown keys {unknown}" if unknown else "no size"
            raise ValueError(
                f"images={{{name!r}: {given!r}}}: {what}; give a size ((H, W) or an int) or a mapping of "
                f"{list(IMAGE_KEYS)} with 'size', e.g. images={{{name!r}: {{'size': (224, 224), 'mode': 'RGB'}}}}"
            )
        out[name] = decode_spec(**settings)
    return out


def hf_feature_types(schema: pa.Schema) -> dict[str, str]:
    """Each column's Hugging Face feature type (``"Image"``, ``"Value"``, ...), from the schema's metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        features = json.loads(raw)["info"]["features"]
        return {n: str(f["_type"]) for n, f in features.items() if isinstance(f, dict) and "_type" in f}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _is_binary(typ: pa.DataType) -> bool:
    return bool(pa.types.is_binary(typ) or pa.types.is_large_binary(typ))


def _is_text(typ: pa.DataType) -> bool:
    return bool(pa.types.is_string(typ) or pa.types.is_large_string(typ))


def _image_struct(typ: pa.DataType) -> bool:
    """``struct<bytes: binary, path: string>`` (either field may be large): the layout of an HF ``Image``."""
    if not pa.types.is_struct(typ) or typ.get_field_index("bytes") < 0:
        return False
    paths = typ.get_field_index("path")
    return _is_binary(typ.field("bytes").type) and (paths < 0 or _is_text(typ.field(paths).type))


def refuse_undeclared(schema: pa.Schema, names: list[str]) -> None:
    """An image column served as a tensor is refused with the fix: declare it in ``images=``."""
    hf = hf_feature_types(schema)
    for name in names:
        typ = schema.field(name).type
        if hf.get(name) == "Image" or (name not in hf and _image_struct(typ)):
            raise UnsupportedColumnError(
                f"field {name!r}: encoded images ({typ}, a Hugging Face Image column) cannot be a zero-copy "
                f"tensor: the pixels are compressed; fix: pass images={{{name!r}: {{'size': (H, W)}}}} to decode "
                "each one into its slot of the batch (with mode=, resample=, decode= ... as ImageFolderDataset "
                "takes them), or leave the column out with columns=[...]",
                field=name,
            )


def _check_type(name: str, schema: pa.Schema, where: str) -> None:
    typ = schema.field(name).type
    kind = hf_feature_types(schema).get(name)
    if kind not in (None, "Image") or not (_image_struct(typ) or _is_binary(typ)):
        feature = f" (a Hugging Face {kind} feature)" if kind else ""
        raise UnsupportedColumnError(
            f"field {name!r}: images= names encoded images (a Hugging Face Image column, struct<bytes, path>, or "
            f"binary), {where} holds {typ}{feature}; fix: leave it out of images=",
            field=name,
        )


class ImageColumn:
    """One encoded-image column of an IPC file: per record batch, its bytes' offsets and data (in place).

    Args:
        name: the column.
        numbered: the non-empty record batches, with their numbers in the file.
        schema: the file's schema (its Hugging Face metadata says what the column is).
        spec: the declared decode.
        where: the file, for messages.
        folder: where a row's relative path is read from.
        mapped: the whole file, mapped (the encoded bytes must lie in it: no copy of them is made).
        row0: the dataset index of the file's first row (a shard's place in its dataset).
    """

    def __init__(
        self,
        name: str,
        numbered: list[tuple[int, pa.RecordBatch]],
        schema: pa.Schema,
        spec: DecodeSpec,
        *,
        where: str,
        folder: str,
        mapped: np.ndarray[Any, Any],
        row0: int = 0,
    ) -> None:
        _check_type(name, schema, where)
        self.name, self.spec, self.where, self.folder, self.row0 = name, spec, where, folder, row0
        self.field = Field(spec.pixels.dtype, spec.shape)
        self._offsets: list[np.ndarray[Any, Any]] = []
        self._data: list[memoryview] = []
        self._paths: list[pa.Array | None] = []
        self._from_path: list[np.ndarray[Any, Any] | None] = []  # rows that store a path, no bytes
        rows = [0]
        for i, b in numbered:
            self._add(b.column(name), i, rows[-1], mapped)
            rows.append(rows[-1] + b.num_rows)
        self._starts = np.asarray(rows, dtype=np.int64)

    def _add(self, col: pa.Array, batch: int, first: int, mapped: np.ndarray[Any, Any]) -> None:
        """Record batch ``batch``'s offsets and bytes, checked once; its null images refused."""
        name, n = self.name, len(col)
        stored = col.field("bytes") if pa.types.is_struct(col.type) else col
        paths = col.field("path") if pa.types.is_struct(col.type) and col.type.get_field_index("path") >= 0 else None
        missing = col.is_null()
        no_bytes = stored.is_null()
        no_path = pc.or_kleene(paths.is_null(), pc.equal(pc.binary_length(paths), 0)) if paths is not None else None
        if stored.null_count:
            missing = pc.or_(missing, no_bytes if no_path is None else pc.and_(no_bytes, no_path))
        lost = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
        if lost.size:
            index = self.row0 + first + int(lost[0])
            raise UnsupportedColumnError(
                f"field {name!r} at index {index}: {self.where} record batch {batch} holds {lost.size} null images "
                f"(no bytes, no path; this is the first); a batch of images has nothing to decode there; fix: drop "
                f"those rows (datasets: ds.filter(lambda r: r[{name!r}] is not None)) or store an image in each",
                field=name,
                index=index,
            )
        wide = pa.types.is_large_binary(stored.type)
        _, off_buf, data = stored.buffers()
        offsets = np.frombuffer(off_buf, dtype=np.int64 if wide else np.int32)[stored.offset : stored.offset + n + 1]
        size = 0 if data is None else data.size
        if offsets.size != n + 1 or (n and (offsets[0] < 0 or offsets[-1] > size or (np.diff(offsets) < 0).any())):
            raise CorruptFileError(
                f"field {name!r}: {self.where} record batch {batch}: the image bytes' offsets are not increasing "
                f"within the {size}-byte buffer; the file is truncated or corrupt, write it again",
                field=name,
            )
        base = mapped.ctypes.data
        if data is not None and data.size and not (base <= data.address <= base + mapped.size - data.size):
            raise _outside_mapping(name, batch)
        self._offsets.append(offsets)
        self._data.append(memoryview(data) if data is not None else memoryview(b""))
        self._paths.append(paths)
        from_path = no_bytes.to_numpy(zero_copy_only=False) if stored.null_count else None
        self._from_path.append(from_path)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def item(self, k: int) -> torch.Tensor:
        """Row ``k`` of the file, decoded into a new tensor of the declared shape."""
        out = torch.empty(self.spec.shape, dtype=self.spec.pixels.dtype)
        self.decode_rows(np.asarray([k], dtype=np.int64), out.numpy()[None], np.zeros(1, dtype=np.int64))
        return out

    def decode_rows(self, rows: Indices, slots: np.ndarray[Any, Any], at: Indices) -> list[Decoded]:
        """Decode rows ``rows`` of the file into ``slots[at[j]]``, each straight into its slot."""
        chunk = np.searchsorted(self._starts, rows, side="right") - 1
        local = rows - self._starts[chunk]
        done = []
        for pos, c, k in zip(at.tolist(), chunk.tolist(), local.tolist(), strict=True):
            index = self.row0 + int(self._starts[c]) + k
            try:
                done.append(self._decode(c, k, slots[pos], index))
            except ZeroCopyError as err:
                err.field, err.index = self.name, index
                raise
        return done

    def _decode(self, c: int, k: int, slot: np.ndarray[Any, Any], index: int) -> Decoded:
        where = f"field {self.name!r} at index {index} ({self.where})"
        from_path = self._from_path[c]
        if from_path is None or not from_path[k]:
            off = self._offsets[c]
            return decode_bytes_into(self._data[c][int(off[k]) : int(off[k + 1])], slot, self.spec, where)
        paths = self._paths[c]
        assert paths is not None  # a row without bytes or a path was refused at construction
        stored = str(paths[k].as_py())
        path = stored if os.path.isabs(stored) else os.path.join(self.folder, stored)
        if not os.path.lexists(path):
            raise CorruptFileError(
                f"{where}: the row stores no bytes, only the path {stored!r}, and there is no file at {path!r} "
                "(a relative path is read from the folder of the Arrow file); fix: put the image file there, or "
                "write the dataset again with the images' bytes in it (datasets' save_to_disk embeds the files "
                "it can read)",
                field=self.name,
                index=index,
            )
        return decode_into(path, slot, self.spec, where=f"{where} (file {path!r})", fixes=ROW_FIXES)

    def take(self, indices: Indices, allocation: Allocation, origin: str) -> torch.Tensor:
        """Rows ``indices`` of the file decoded into one buffer of ``allocation`` (the decode counted)."""
        out = allocation((indices.size, *self.spec.shape), self.spec.pixels.dtype)
        done = self.decode_rows(indices, out.numpy(), np.arange(indices.size))
        record_decode(self.name, done, self.spec, nbytes(out) // max(1, indices.size), origin)
        return out


def take_images(
    shards: ArrowShards, name: str, spec: DecodeSpec, indices: Indices, allocation: Allocation, origin: str
) -> torch.Tensor:
    """An image column of a batch across shards: each image decoded into its slot of one buffer (counted once)."""
    out = allocation((indices.size, *spec.shape), spec.pixels.dtype)
    slots = out.numpy()
    chunk = shards.table.chunks_of(indices)
    shard_of = shards.table.shard_of[chunk]
    done: list[Decoded] = []
    for s in np.unique(shard_of).tolist():
        pos = np.flatnonzero(shard_of == s)
        base = int(shards.table.starts[shards.table.first_chunk[s]])
        done += shards.shard(s)._images[name].decode_rows(indices[pos] - base, slots, pos)
    record_decode(name, done, spec, nbytes(out) // max(1, indices.size), f"{origin}; {shards.rows_from(chunk)}")
    return out
