from __future__ import annotations

import importlib
from pathlib import Path

import zcopy_data


def test_all_is_sorted_and_importable():
    names = zcopy_data.__all__

    def isort_style(name: str) -> tuple[int, str]:  # CONSTANTS, then Classes, then functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=isort_style)
    for name in names:
        assert getattr(zcopy_data, name) is not None


def test_subpackage_exports_resolve():
    for mod in (
        "zcopy_data.datasets",
        "zcopy_data.collate",
        "zcopy_data.errors",
        "zcopy_data.schema",
        "zcopy_data.transfer",
    ):
        m = importlib.import_module(mod)
        for name in m.__all__:
            assert hasattr(m, name), f"{mod}.{name}"


def test_package_is_typed():
    assert (Path(zcopy_data.__file__).parent / "py.typed").exists()
