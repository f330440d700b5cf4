"""The device cast map: the one stage allowed to change a dtype, checked before the first batch.

A cast map names fields of a batch and what each becomes on the device::

    {"image": torch.float16}                                           # dtype only
    {"image": Cast(torch.float16, scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])}

Normalisation is ``(x * scale - mean) / std``, computed in float32 (float64 for a float64 target)
and rounded once to the target dtype, so every device gives the same bits. ``mean`` and ``std``
are a number or one value per channel (per-sample dimension 0, e.g. ``C`` of ``C, H, W``).

:class:`DeviceCast` validates the map when it is built: against a :class:`~zcopy_data.Schema`
when one is known (unknown field, impossible conversion, wrong channel count), otherwise against
the first batch it sees. Errors are :class:`~zcopy_data.SchemaError` naming the field.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from zcopy_data._dtypes import dtype_name, to_torch_dtype
from zcopy_data._storage import nbytes
from zcopy_data._tree import leaves, map_tensors
from zcopy_data.errors import DtypeDriftError, SchemaError
from zcopy_data.ledger import CAST, Record, record
from zcopy_data.memory.policy import Allocation
from zcopy_data.schema import Field, Schema

__all__ = ["Cast", "CastMap", "DeviceCast", "validate_cast"]

Number = float | int
CastMap = Mapping[str, "torch.dtype | str | Cast | Mapping[str, Any]"]


def _numbers(name: str, what: str, value: Number | Sequence[Number] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    vals: Sequence[Any] = value if isinstance(value, Sequence) else (value,)
    if isinstance(value, torch.Tensor):
        vals = value.flatten().tolist()
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SchemaError(f"cast {what}: expected finite numbers, found {value!r}", field=name)
        out.append(float(v))
    if not out:
        raise SchemaError(f"cast {what}: expected a number or one per channel, found an empty sequence", field=name)
    return tuple(out)


@dataclass(frozen=True)
class Cast:
    """What one field becomes on the device: a dtype, optionally scaled and normalised.

    Args:
        dtype: the target dtype.
        scale: multiply by this first (``1 / 255`` turns uint8 pixels into ``[0, 1]``).
        mean: subtract after scaling; a number or one per channel.
        std: divide last; a number or one per channel, never 0.

    >>> Cast(torch.float16, scale=1 / 255).dtype
    torch.float16
    """

    dtype: torch.dtype
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __init__(
        self,
        dtype: Any,
        *,
        scale: Number | None = None,
        mean: Number | Sequence[Number] | None = None,
        std: Number | Sequence[Number] | None = None,
    ) -> None:
        try:
            norm = to_torch_dtype(dtype)
        except TypeError as err:
            raise SchemaError(f"cast dtype: {err}") from None
        object.__setattr__(self, "dtype", norm)
        scales = _numbers("", "scale", scale)
        if scales is not None and len(scales) != 1:
            raise SchemaError(f"cast scale: expected one number, found {scale!r}")
        object.__setattr__(self, "scale", None if scales is None else scales[0])
        object.__setattr__(self, "mean", _numbers("", "mean", mean))
        stds = _numbers("", "std", std)
        if stds is not None and any(s == 0 for s in stds):
            raise SchemaError(f"cast std: expected non-zero values, found {std!r}")
        object.__setattr__(self, "std", stds)
        if self.normalises and not (norm.is_floating_point or norm.is_complex):
            raise SchemaError(
                f"cast to {dtype_name(norm)} with scale/mean/std: normalisation needs a floating target; "
                "use torch.float16, torch.bfloat16 or torch.float32"
            )

    @property
    def normalises(self) -> bool:
        """True when a scale, mean or std is set."""
        return self.scale is not None or self.mean is not None or self.std is not None

    @property
    def channels(self) -> int | None:
        """The channel count that ``mean``/``std`` imply (``None`` when they are scalars)."""
        counts = {len(v) for v in (self.mean, self.std) if v is not None and len(v) > 1}
        return counts.pop() if len(counts) == 1 else None

    def __str__(self) -> str:
        parts = [dtype_name(self.dtype)]
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        if self.mean is not None:
            parts.append(f"mean={list(self.mean)}")
        if self.std is not None:
            parts.append(f"std={list(self.std)}")
        return " ".join(parts)


def _as_cast(name: str, value: Any) -> Cast:
    try:
        if isinstance(value, Cast):
            return value
        if isinstance(value, Mapping):
            spec = dict(value)
            if "dtype" not in spec:
                raise SchemaError(f"field {name!r}: a cast entry needs a 'dtype', found keys {sorted(spec)}")
            unknown = set(spec) - {"dtype", "scale", "mean", "std"}
            if unknown:
                raise SchemaError(
                    f"field {name!r}: unknown cast option(s) {sorted(unknown)}; use dtype, scale, mean, std"
                )
            return Cast(spec.pop("dtype"), **spec)
        return Cast(value)
    except SchemaError as err:
        msg = str(err)
        if not msg.startswith(f"field {name!r}"):
            msg = f"field {name!r}: {msg}"
        raise SchemaError(msg, field=name) from None


def _check_conversion(name: str, src: torch.dtype, cast: Cast, shape: tuple[int | None, ...] | None) -> None:
    """Raise when ``src`` cannot become ``cast.dtype`` without losing what the values mean."""
    dst = cast.dtype
    fix = f"cast it to a floating dtype, or drop {name!r} from the cast map"
    if src.is_complex and not dst.is_complex:
        raise DtypeDriftError(
            f"field {name!r}: cannot cast {dtype_name(src)} to {dtype_name(dst)} (the imaginary part would be "
            f"dropped); {fix}",
            field=name,
        )
    if (src.is_floating_point or src.is_complex) and not (dst.is_floating_point or dst.is_complex):
        raise DtypeDriftError(
            f"field {name!r}: cannot cast {dtype_name(src)} to {dtype_name(dst)} (values would be truncated); "
            f"store it as {dtype_name(dst)} or {fix}",
            field=name,
        )
    if dst == torch.bool and src != torch.bool:
        raise DtypeDriftError(
            f"field {name!r}: cannot cast {dtype_name(src)} to bool (only zero / non-zero would survive); "
            f"compare on the device instead (batch[{name!r}] != 0), or drop {name!r} from the cast map",
            field=name,
        )
    channels = cast.channels
    if channels is not None and shape is not None:
        have = shape[0] if shape else 1
        if have is not None and have != channels:
            raise SchemaError(
                f"field {name!r}: mean/std give {channels} channels, the field has shape {tuple(shape)} "
                f"({have} along per-sample dimension 0); give one value per channel or a single number",
                field=name,
            )


class DeviceCast(Mapping[str, Cast]):
    """A validated cast map; calling it casts a batch's fields (on the batch's device).

    Args:
        cast: field name -> dtype, :class:`Cast`, or ``{"dtype": ..., "scale": ..., "mean": ..., "std": ...}``.
        schema: when given, every field is checked against it now, before any batch.

    >>> from zcopy_data import Field, Schema
    >>> schema = Schema({"image": Field(torch.uint8, (3, 2, 2)), "label": Field(torch.int64)})
    >>> cast = DeviceCast({"image": Cast(torch.float16, scale=1 / 255)}, schema)
    >>> cast({"image": torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "label": torch.zeros(1)})["image"].unique()
    tensor([1.], dtype=torch.float16)
    """

    def __init__(self, cast: CastMap | DeviceCast | None = None, schema: Schema | None = None) -> None:
        if isinstance(cast, DeviceCast):
            casts = dict(cast._casts)
        elif cast is None:
            casts = {}
        elif isinstance(cast, Mapping):
            casts = {}
            for name, value in cast.items():
                if not isinstance(name, str):
                    raise SchemaError(f"cast map keys must be field names (str), found {name!r}")
                casts[name] = _as_cast(name, value)
        else:
            raise SchemaError(
                f"cast must be a mapping of field name -> dtype or Cast, found {type(cast).__name__}; "
                'e.g. cast={"image": torch.float16}'
            )
        self._casts: dict[str, Cast] = casts
        self._checked: Schema | None = None
        # the ledger's reason per (field, source dtype, device type, nothing to do): built once
        self._reasons: dict[tuple[str, torch.dtype, str, bool], str] = {}
        if schema is not None:
            self.check(schema)

    # -- validation ----------------------------------------------------------------------
    def check(self, schema: Schema) -> None:
        """Raise :class:`SchemaError` unless every cast names a field of ``schema`` it can convert."""
        if self._checked == schema:
            return
        for name, cast in self._casts.items():
            field = schema.get(name)
            if field is None:
                raise SchemaError(
                    f"field {name!r}: the cast map names it, the data has no such field (it has {list(schema)}); "
                    "fix the name or remove it from the cast map",
                    field=name,
                )
            _check_conversion(name, field.dtype, cast, field.shape)
        self._checked = schema

    def output_schema(self, schema: Schema) -> Schema:
        """The schema of a batch after the casts: what the model receives."""
        self.check(schema)
        return Schema({n: Field(self._casts[n].dtype, f.shape) if n in self._casts else f for n, f in schema.items()})

    def check_batch(self, batch: Any) -> None:
        """Validate against a batch's top-level fields (used when no schema was known up front)."""
        if not self._casts:
            return
        fields = {}
        tensors = [("0", batch)] if isinstance(batch, torch.Tensor) else list(leaves(batch))
        for name, value in tensors:
            fields[name] = Field(value.dtype, tuple(value.shape[1:]))
        for name in self._casts:
            if name not in fields:
                found = list(fields)
                raise SchemaError(
                    f"field {name!r}: the cast map names it, the batch has no such tensor field (it has {found}); "
                    "fix the name or remove it from the cast map",
                    field=name,
                )
        self.check(Schema(fields))

    # -- application ---------------------------------------------------------------------
    def __call__(self, batch: Any) -> Any:
        """A batch with each named field cast; other fields are passed through untouched."""
        if not self._casts:
            return batch
        if self._checked is None:
            self.check_batch(batch)
        if isinstance(batch, torch.Tensor):
            return self.apply("0", batch)  # a lone tensor is field "0", as a schema names it
        casts = self._casts
        return map_tensors(batch, lambda name, t: self.apply(name, t) if name in casts else t)

    def cast_fields(
        self,
        batch: dict[str, torch.Tensor],
        device_type: str,
        records: list[Record],
        allocation: Allocation | None = None,
    ) -> None:
        """``self(batch)`` for a flat dict of tensors on ``device_type`` that the caller owns:
        the same casts, written into ``batch``, their ledger records appended to ``records``
        (for the caller to record, with its own, in one call). ``allocation``: where plain casts
        of contiguous host tensors write (reused buffers), instead of a fresh tensor each."""
        casts = self._casts
        if not casts:
            return
        if self._checked is None:
            self.check_batch(batch)
        reasons = self._reasons
        for name, t in batch.items():  # replacing values while iterating: the keys stay the same
            cast = casts.get(name)
            if cast is None:
                continue
            out = cast_tensor(t, cast, allocation)
            same = out is t
            key = (name, t.dtype, device_type, same)
            reason = reasons.get(key) or self._reason(key, cast)
            records.append((CAST, name, reason, out.nbytes, 0) if same else (CAST, name, reason, 0, out.nbytes))
            batch[name] = out

    def _reason(self, key: tuple[str, torch.dtype, str, bool], cast: Cast) -> str:
        _, dtype, device_type, same = key
        reason = f"already {cast}: nothing to do" if same else f"{dtype_name(dtype)} -> {cast} on {device_type}"
        self._reasons[key] = reason
        return reason

    def apply(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Cast one field's tensor (on its own device), counted in the ledger."""
        return self.apply_on(name, t, t.device.type)

    def apply_on(self, name: str, t: torch.Tensor, device_type: str) -> torch.Tensor:
        """:meth:`apply` for a tensor the caller knows to be on a ``device_type`` device."""
        cast = self._casts[name]
        out = cast_tensor(t, cast)
        same = out is t
        key = (name, t.dtype, device_type, same)
        reason = self._reasons.get(key) or self._reason(key, cast)
        if same:
            record(CAST, name, reason, viewed=nbytes(t))
        else:
            record(CAST, name, reason, copied=nbytes(out))
        return out

    @property
    def is_checked(self) -> bool:
        """True once the map was checked against a schema or a first batch."""
        return self._checked is not None

    # -- mapping protocol ----------------------------------------------------------------
    def __getitem__(self, name: str) -> Cast:
        return self._casts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._casts)

    def __len__(self) -> int:
        return len(self._casts)

    def __repr__(self) -> str:
        return "DeviceCast({" + ", ".join(f"{k!r}: {v}" for k, v in self._casts.items()) + "})"


def cast_tensor(t: torch.Tensor, cast: Cast, allocation: Allocation | None = None) -> torch.Tensor:
    """``t`` as ``cast.dtype``, normalised as ``(t * scale - mean) / std`` in one affine pass.

    Never writes to ``t``; returns ``t`` itself only for a plain cast to the dtype it already has.
    A plain cast of a contiguous tensor that needs no gradient is written into a buffer of
    ``allocation`` when one is given: the values, dtype and contiguity of ``t.to(dtype)``.
    """
    if not cast.normalises:
        if allocation is None or t.dtype == cast.dtype or t.requires_grad or not t.is_contiguous():
            return t.to(cast.dtype)
        out = allocation(tuple(t.shape), cast.dtype)
        return out.copy_(t)
    a, b = _affine(cast, t.device, t.dim())
    out = t.to(a.dtype) * a  # a new tensor even when t already has the working dtype
    out.add_(b)
    return out if out.dtype == cast.dtype else out.to(cast.dtype)


def cast_into(t: torch.Tensor, cast: Cast, out: torch.Tensor) -> torch.Tensor:
    """:func:`cast_tensor` written into ``out`` (``cast.dtype``, ``t``'s shape); returns ``out``.

    The same values: a plain cast is ``out.copy_(t)``; a normalising one computes the affine pass
    in its working dtype, into ``out`` itself when that is the working dtype.
    """
    if not cast.normalises:
        return out.copy_(t)
    a, b = _affine(cast, t.device, t.dim())
    if out.dtype == a.dtype:
        torch.mul(t.to(a.dtype) if t.dtype.is_floating_point else t, a, out=out)  # integers: no temporary
        return out.add_(b)
    return out.copy_(cast_tensor(t, cast))


@functools.lru_cache(maxsize=64)
def _affine(cast: Cast, device: torch.device, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = scale / std`` and ``b = -mean / std`` in the working dtype, shaped to broadcast, on ``device``."""
    work = torch.float64 if cast.dtype == torch.float64 else torch.float32
    scale = 1.0 if cast.scale is None else cast.scale
    channels = cast.channels or 1
    mean = torch.tensor(cast.mean or (0.0,), dtype=torch.float64).expand(channels)
    std = torch.tensor(cast.std or (1.0,), dtype=torch.float64).expand(channels)
    shape = (channels,) + (1,) * max(0, ndim - 2) if channels > 1 else ()
    a = (scale / std).to(work).reshape(shape)
    b = (-mean / std).to(work).reshape(shape)
    return a.to(device), b.to(device)


def validate_cast(schema: Schema | None, cast: CastMap | DeviceCast | None) -> DeviceCast:
    """Build a :class:`DeviceCast` and check it against ``schema`` now (``None``: at the first batch).

    >>> from zcopy_data import Field, Schema
    >>> validate_cast(Schema({"x": Field(torch.uint8)}), {"y": torch.float16})
    Traceback (most recent call last):
    ...
    zcopy_data.errors.SchemaError: field 'y': the cast map names it, the data has no such field (it has ['x']); \
fix the name or remove it from the cast map
    """
    return DeviceCast(cast, schema)
