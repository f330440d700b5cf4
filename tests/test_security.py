"""Security: nothing is ever unpickled or evaluated from a data file.

Payloads here are real: unpickling them creates a marker file (the control case proves it), so a
marker that stays absent proves the loader never unpickled them.
"""

from __future__ import annotations

import ast
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from zcopy_data import NumpyDataset, SchemaError, zero_copy_collate

pytestmark = pytest.mark.reliability

PACKAGE = Path(__file__).resolve().parents[1] / "zcopy_data"


class Payload:
    """Unpickling this touches ``marker``: any code path that unpickles it leaves evidence."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_control_unpickling_the_payload_does_leave_the_marker(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pickle_disguised_as_npy_is_never_unpickled(tmp_path: Path, workers: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(SchemaError, match=r"field 'x': .*evil\.npy' is not a readable \.npy file"):
        ds = NumpyDataset({"x": str(path)})
        list(DataLoader(ds, num_workers=workers, collate_fn=zero_copy_collate))
    assert not marker.exists()


def test_an_object_npy_holding_a_payload_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "objects.npy"
    np.save(path, np.array([Payload(marker), Payload(marker)], dtype=object), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(SchemaError, match=r"stores Python objects \(pickled data\), which are never loaded"):
        NumpyDataset({"x": str(path)})
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # control: a loader that trusts the file runs the payload
    assert marker.exists()


def test_an_npy_header_with_code_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch() or '<f4'"
    text = f"{{'descr': {code}, 'fortran_order': False, 'shape': (4,), }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    path = tmp_path / "header.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\0" * 16)
    with pytest.raises(SchemaError, match=r"unreadable \.npy header"):
        NumpyDataset({"x": str(path)})
    assert not marker.exists()


def test_in_memory_object_arrays_are_refused_before_anything_touches_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(SchemaError, match="object arrays cannot be zero-copy"):
        NumpyDataset({"x": np.array([Payload(marker)], dtype=object)})
    assert not marker.exists()


# -- a static guard over the whole package (covers every source module, present and future) -----------
UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "loads"),
    ("marshal", "loads"),
    ("marshal", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "loads"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("pa", "PythonFile"),
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<computed>"
    return "<missing>"


def _problems(text: str) -> list[str]:
    problems = []
    for call in _calls(ast.parse(text)):
        func = call.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            problems.append(f"line {call.lineno}: {func.id}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner, attr = func.value.id, func.attr
            if (owner, attr) in UNSAFE_CALLS:
                problems.append(f"line {call.lineno}: {owner}.{attr}()")
            # NumPy's default is allow_pickle=False; anything but that default or an explicit False fails
            if (
                owner in ("np", "numpy")
                and attr == "load"
                and _keyword(call, "allow_pickle") not in (False, "<missing>")
            ):
                problems.append(f"line {call.lineno}: np.load with allow_pickle not False")
            if owner == "torch" and attr == "load" and _keyword(call, "weights_only") is not True:
                problems.append(f"line {call.lineno}: torch.load without weights_only=True")
    return problems


@pytest.mark.parametrize("source", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_unpickles_or_evaluates_data(source: Path) -> None:
    assert _problems(source.read_text()) == [], source.name


@pytest.mark.parametrize(
    "snippet",
    [
        "np.load(p, allow_pickle=True)",
        "np.load(p, allow_pickle=flag)",
        "pickle.loads(b)",
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "eval(s)",
        "marshal.loads(b)",
    ],
)
def test_the_guard_flags_unsafe_calls(snippet: str) -> None:
    assert len(_problems(snippet)) == 1


@pytest.mark.parametrize(
    "snippet", ["np.load(p, mmap_mode='c')", "np.load(p, allow_pickle=False)", "torch.load(f, weights_only=True)"]
)
def test_the_guard_accepts_safe_calls(snippet: str) -> None:
    assert _problems(snippet) == []


# -- Arrow and Parquet metadata ---------------------------------------------------------------------
def _pickled_metadata_table(marker: Path) -> tuple[object, object]:
    import pyarrow as pa

    payload = pickle.dumps(Payload(marker))
    field = pa.field(
        "x",
        pa.float32(),
        metadata={b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": payload},
    )
    schema = pa.schema([field], metadata={b"pickled": payload, b"pandas": payload})
    return schema, pa.record_batch([pa.array(np.arange(5, dtype=np.float32))], schema=schema)


def test_pickles_in_arrow_metadata_are_never_unpickled(tmp_path: Path) -> None:
    import pyarrow as pa

    from zcopy_data.datasets import ArrowDataset

    marker = tmp_path / "pwned"
    schema, batch = _pickled_metadata_table(marker)
    path = tmp_path / "meta.arrow"
    with pa.ipc.new_file(str(path), schema) as writer:
        writer.write_batch(batch)
    ds = ArrowDataset(path)
    assert zero_copy_collate(ds.__getitems__([4, 0]))["x"].tolist() == [4.0, 0.0]
    assert not marker.exists()


def test_pickles_in_parquet_metadata_are_never_unpickled(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zcopy_data.datasets import ArrowDataset

    marker = tmp_path / "pwned"
    _, batch = _pickled_metadata_table(marker)
    path = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    ds = ArrowDataset.from_parquet(path, cache_dir=tmp_path / "cache")
    assert len(ds) == 5
    assert not marker.exists()
