"""The one batch-tree walker: names, order and container types for every structure a batch takes."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import torch

from zcopy_data._tree import ROOT, join, leaves, map_tensors, rebuild

Pair = namedtuple("Pair", ["a", "b"])


def test_names_follow_keys_and_positions() -> None:
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    batch = {"img": a, "meta": {"len": b}, "pair": (c, "tag"), "items": [d]}
    assert [(n, float(t)) for n, t in leaves(batch)] == [
        ("img", 0.0),
        ("meta.len", 1.0),
        ("pair[0]", 2.0),
        ("items[0]", 3.0),
    ]
    assert list(leaves(a)) == [(ROOT, a)]
    assert join("", "x") == "x" and join("x", 3) == "x[3]" and join("x", "y") == "x.y"


def test_namedtuples_are_named_by_position_and_rebuilt_as_themselves() -> None:
    p = Pair(torch.ones(2), torch.zeros(2))
    assert [n for n, _ in leaves({"c": p})] == ["c[0]", "c[1]"]
    doubled = map_tensors(p, lambda _, t: t * 2)
    assert type(doubled) is Pair and torch.equal(doubled.a, torch.full((2,), 2.0))


def test_map_keeps_container_types_and_non_tensors() -> None:
    od = OrderedDict(x=torch.ones(1), s="keep")
    out = map_tensors({"od": od, "t": (torch.ones(1), 3), "l": [torch.ones(1)]}, lambda n, _t: n)
    assert type(out["od"]) is OrderedDict and out["od"] == OrderedDict(x="od.x", s="keep")
    assert out["t"] == ("t[0]", 3) and type(out["t"]) is tuple
    assert out["l"] == ["l[0]"]


def test_rebuild_falls_back_to_plain_containers() -> None:
    class Frozen(tuple):  # a tuple subclass whose constructor takes no values
        def __new__(cls) -> "Frozen":
            return super().__new__(cls, ())

    assert rebuild(Frozen(), [1, 2]) == [1, 2]
    assert rebuild({"a": 1}, {"a": 2}) == {"a": 2}
    assert rebuild(Pair(1, 2), [3, 4]) == Pair(3, 4)
