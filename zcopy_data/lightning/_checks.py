"""Configuration checks run before the first batch: dataset schemas, the cast map, the model.

Three parties describe the same fields and must agree:

* each dataset's :class:`~zcopy_data.Schema` (what the host hands over, never cast);
* the device cast map (``field -> dtype`` or :class:`~zcopy_data.transfer.Cast`), the one stage
  allowed to change a dtype;
* the model's declared input schema (what ``training_step`` receives, after the casts): the
  ``input_schema`` attribute of the ``LightningModule``, or the ``input_schema`` argument.

:func:`check_configuration` rejects any disagreement with a :class:`~zcopy_data.SchemaError`
(or its :class:`~zcopy_data.DtypeDriftError` / :class:`~zcopy_data.ShapeMismatchError`
subclasses) whose message shows both sides. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from zcopy_data._dtypes import dtype_name
from zcopy_data.errors import SchemaError
from zcopy_data.schema import Schema, schema_of
from zcopy_data.transfer.cast import CastMap, DeviceCast

__all__ = [
    "INPUT_SCHEMA_ATTR",
    "check_configuration",
    "dataset_schema",
    "device_cast",
    "resolve_input_schema",
]

INPUT_SCHEMA_ATTR = "input_schema"
"""The ``LightningModule`` attribute that declares what the model expects (after device casts)."""

SPLITS = ("train", "val", "test", "predict")


def as_schema(value: Schema | Mapping[str, Any] | None, what: str) -> Schema | None:
    """``value`` as a :class:`Schema` (a mapping of ``name -> Field or dtype`` is accepted)."""
    if value is None or isinstance(value, Schema):
        return value
    if isinstance(value, Mapping):
        return Schema(value)
    raise SchemaError(
        f"{what}: expected a zcopy_data.Schema or a mapping of field name -> Field, found {type(value).__name__}"
    )


def device_cast(cast: CastMap | DeviceCast | None) -> DeviceCast:
    """The cast map as a :class:`~zcopy_data.transfer.DeviceCast` (its form is checked here)."""
    return cast if isinstance(cast, DeviceCast) else DeviceCast(cast)


def dataset_schema(dataset: Dataset[Any] | None) -> Schema | None:
    """The schema of a dataset: declared or frozen, or read from sample 0; ``None`` if unknowable
    (:func:`zcopy_data.schema.schema_of`)."""
    return schema_of(dataset)


def resolve_input_schema(declared: Schema | Mapping[str, Any] | None, model: object | None) -> Schema | None:
    """The model's input schema: its ``input_schema`` attribute and/or the data module's argument.

    Declared in both places, they must be equal; the error shows both.
    """
    ours = as_schema(declared, "input_schema argument")
    theirs = None
    if model is not None:
        theirs = as_schema(getattr(model, INPUT_SCHEMA_ATTR, None), f"{type(model).__name__}.{INPUT_SCHEMA_ATTR}")
    if ours is not None and theirs is not None and ours != theirs:
        raise SchemaError(
            f"input_schema: the data module declares {ours}, {type(model).__name__}.{INPUT_SCHEMA_ATTR} "
            f"declares {theirs}; declare it in one place, or make both equal"
        )
    return theirs if theirs is not None else ours


def _describe_cast(cast: DeviceCast, schema: Schema) -> str:
    parts = [f"{n}: {dtype_name(schema[n].dtype)}->{c}" for n, c in cast.items() if n in schema]
    return f" after the device cast ({', '.join(parts)})" if parts else ""


def check_configuration(
    datasets: Mapping[str, Dataset[Any] | None],
    *,
    input_schema: Schema | None = None,
    cast: CastMap | DeviceCast | None = None,
) -> dict[str, Schema]:
    """Raise unless every dataset, the cast map and the model's input schema agree.

    Args:
        datasets: split name (``"train"``, ``"val"``, ``"test"``, ``"predict"``) -> dataset.
        input_schema: what the model expects after the device casts, if declared.
        cast: the device cast map, ``field -> dtype`` or :class:`~zcopy_data.transfer.Cast`.

    Returns:
        The device-side schema of each dataset whose schema is known.

    The rules: every field of the cast map exists in every dataset and can be converted as asked
    (:meth:`DeviceCast.check <zcopy_data.transfer.DeviceCast.check>`); each dataset's schema after
    the casts gives every field the model declares, with its dtype and shape (a ``predict``
    dataset may lack fields, such as labels, but the fields it has must match); without a
    declared model schema, ``val`` and ``test`` must give what ``train`` gives.

    >>> import numpy as np, torch
    >>> from zcopy_data import Field, NumpyDataset
    >>> ds = NumpyDataset({"x": np.zeros((4, 2), np.uint8)})
    >>> check_configuration({"train": ds}, input_schema=Schema({"x": Field(torch.float32, (2,))}))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    zcopy_data.errors.DtypeDriftError: field 'x': the train dataset gives uint8[2], the model's input_schema ...
    """
    caster = device_cast(cast)
    device_side: dict[str, Schema] = {}
    for split, ds in datasets.items():
        host = dataset_schema(ds)
        if host is None:
            continue
        try:
            schema = caster.output_schema(host)
        except SchemaError as err:
            raise type(err)(f"{split} dataset: {err}", field=err.field, index=err.index) from None
        label = f"{split} dataset{_describe_cast(caster, host)}"
        if input_schema is not None:
            need = input_schema
            if split == "predict":
                need = Schema({n: f for n, f in input_schema.items() if n in schema})
            schema.check_compatible(need, ours=label, theirs="model's input_schema")
        device_side[split] = schema
    reference = device_side.get("train")
    if input_schema is None and reference is not None:
        for split in ("val", "test"):
            other = device_side.get(split)
            if other is not None:
                other.check_compatible(reference, ours=f"{split} dataset", theirs="train dataset")
    return device_side
