"""The one walker of batch trees: every tensor of a nested batch, by name, and the tree rebuilt.

A batch is what a collate returns: tensors inside any ``Mapping``, namedtuple, list or tuple,
nested. Names are dotted paths (``"image"``, ``"meta.size"``, ``"0"``, ``"pair[1]"``; positions
for tuples and namedtuples alike, as a :class:`~zcopy_data.Schema` names them), the same names
the ledger, the casts and the error messages use. Other leaves (strings, numbers, None) pass
through untouched. :func:`rebuild` is the one rule for giving a container back its type, which
the collate uses too.
"""

from __future__ import annotations

import collections.abc
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["ROOT", "join", "leaves", "map_tensors", "rebuild"]

ROOT = "<batch>"
"""The name of a batch that is a single tensor."""


def join(path: str, key: object) -> str:
    """The name of ``key`` inside ``path``: ``a.b`` for mapping keys, ``a[1]`` for positions."""
    if not path:
        return str(key)
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def _is_namedtuple(obj: object) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def leaves(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of the batch, in order."""
    if isinstance(obj, torch.Tensor):
        yield path or ROOT, obj
    elif isinstance(obj, collections.abc.Mapping):
        for k, v in obj.items():
            yield from leaves(v, join(path, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from leaves(v, join(path, i))


def map_tensors(obj: Any, fn: Callable[[str, torch.Tensor], Any], path: str = "") -> Any:
    """The same structure (same container types where they can be rebuilt) with every tensor
    replaced by ``fn(name, tensor)``; names as :func:`leaves` gives them."""
    if isinstance(obj, torch.Tensor):
        return fn(path or ROOT, obj)
    if isinstance(obj, collections.abc.Mapping):
        return rebuild(obj, {k: map_tensors(v, fn, join(path, k)) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return rebuild(obj, [map_tensors(v, fn, join(path, i)) for i, v in enumerate(obj)])
    return obj


def rebuild(like: Any, values: Mapping[Any, Any] | Sequence[Any]) -> Any:
    """A container of ``like``'s type holding ``values`` (a dict for mappings, a list otherwise).

    Mutable mappings and sequences are shallow-copied and filled (so their other attributes
    survive), namedtuples and other types are called with the values; a type that cannot be
    rebuilt that way gives a plain ``dict`` / ``list``.
    """
    if isinstance(like, collections.abc.Mapping):
        assert isinstance(values, Mapping)
        if type(like) is dict:
            return dict(values)
        if isinstance(like, collections.abc.MutableMapping):
            clone = copy.copy(like)
            clone.update(values)
            return clone
        try:
            return type(like)(values)  # type: ignore[call-arg]
        except TypeError:
            return dict(values)
    seq = list(values)
    if type(like) is list:
        return seq
    if _is_namedtuple(like):
        return type(like)(*seq)
    try:
        if isinstance(like, collections.abc.MutableSequence):
            clone_seq = copy.copy(like)
            for i, v in enumerate(seq):
                clone_seq[i] = v
            return clone_seq
        return type(like)(seq)
    except TypeError:
        return seq
