"""Fault injection on ``.npy`` files written by ``np.save`` and then damaged.

Each case ends in an error of a documented type whose message names the field and the file, or
in documented graceful handling; never a crash, a hang or a silently wrong batch.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tests.support import run_isolated
from zcopy_data import CopyRequiredError, NumpyDataset, SchemaError, zero_copy_collate

pytestmark = pytest.mark.reliability


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.npy"
    np.save(path, np.arange(400, dtype=np.float32).reshape(100, 4))
    return path


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-10], r"is truncated: its header declares shape \(100, 4\) of <f4 = 1600 bytes"),
        (lambda raw: raw[:20], r"unreadable \.npy header \(EOF"),
        (lambda raw: raw[:6], r"not a readable \.npy file \(unknown format version \(\)\)"),
        (lambda _: b"", r"not a readable \.npy file \(it is empty\)"),
        (lambda raw: b"XXXXXX" + raw[6:], r"not a readable \.npy file \(it starts with b'XXXXXX'\)"),
        (lambda raw: b"\x93NUMPX" + raw[6:], r"not a readable \.npy file"),
        (lambda raw: raw[:8] + b"\xff\xff" + raw[10:], r"unreadable \.npy header"),
        (lambda _: bytes(range(256)) * 3, r"not a readable \.npy file"),
    ],
    ids=[
        "truncated-data",
        "truncated-header",
        "magic-only",
        "empty",
        "wrong-magic",
        "near-magic",
        "bad-header-len",
        "garbage",
    ],
)
def test_damaged_npy_is_a_schema_error_naming_field_and_file(
    good: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    bad = _write(tmp_path, "bad.npy", damage(good.read_bytes()))
    with pytest.raises(SchemaError, match=message) as err:
        NumpyDataset({"image": str(good), "label": str(bad)})
    assert err.value.field == "label"
    assert f"field 'label': {str(bad)!r}" in str(err.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            _header("<f4", (10**12,)),
            r"truncated: its header declares shape \(1000000000000,\) of <f4 = 4000000000000 bytes",
        ),
        (_header("<f4", (2**40, 2**40)), r"truncated: .* = 4835703278458516698824704 bytes after a 128-byte header"),
        (_header("<x9", (4,)), "unreadable .npy header"),
        (b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'shape': (4,)}   \n", "unreadable .npy header"),
        (b"\x93NUMPY\x09\x00\x20\x00" + b" " * 32, r"format version \(9, 0\)"),
    ],
    ids=["huge-shape", "overflowing-shape", "unknown-descr", "missing-key", "unknown-version"],
)
def test_a_lying_header_is_refused_before_any_allocation(tmp_path: Path, header: bytes, message: str) -> None:
    bad = _write(tmp_path, "lying.npy", header + b"\0" * 64)
    with pytest.raises(SchemaError, match=message):
        NumpyDataset({"x": str(bad)})


def test_an_npz_archive_is_refused_with_a_hint(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    with pytest.raises(SchemaError, match=r"a \.npz \(zip\) archive; pass each of its arrays"):
        NumpyDataset({"x": str(tmp_path / "a.npz")})


def test_missing_file_and_directory_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"field 'x': no such file .*nope\.npy"):
        NumpyDataset({"x": str(tmp_path / "nope.npy")})
    with pytest.raises(IsADirectoryError, match=r"field 'x': .* is a directory"):
        NumpyDataset({"x": str(tmp_path)})


def test_object_dtype_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(
        SchemaError, match=r"field 'x': .*obj\.npy' stores Python objects \(pickled data\), which are never"
    ):
        NumpyDataset({"x": str(tmp_path / "obj.npy")})


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">u2", ">c8"])
def test_big_endian_npy_is_refused_with_the_one_time_conversion(tmp_path: Path, dtype: str) -> None:
    np.save(tmp_path / "be.npy", np.arange(10).astype(dtype))
    for copy in (False, True):  # copy=True cannot byte-swap a column, so it is refused too
        with pytest.raises(CopyRequiredError, match=r"big-endian.*astype\('<") as err:
            NumpyDataset({"x": str(tmp_path / "be.npy")}, copy=copy)
        assert "be.npy" in str(err.value)
        assert err.value.field == "x"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array(["ab", "cd"]), "expected a numeric array, found dtype str"),
        (np.zeros(3, dtype=[("a", "i4"), ("b", "f4")]), "expected a numeric array, found dtype void"),
        (np.zeros(3, dtype="M8[s]"), "expected a numeric array, found dtype datetime64"),
        (np.zeros(3, dtype=np.longdouble), "expected a dtype torch supports, found dtype float128"),
    ],
    ids=["str", "structured", "datetime", "longdouble"],
)
def test_non_tensor_dtypes_in_a_file_are_refused(tmp_path: Path, values: np.ndarray[Any, Any], message: str) -> None:
    np.save(tmp_path / "v.npy", values)
    with pytest.raises(CopyRequiredError, match=message) as err:
        NumpyDataset({"v": str(tmp_path / "v.npy")})
    assert err.value.field == "v"


def test_a_0d_npy_has_no_sample_axis(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.float32(3))
    with pytest.raises(SchemaError, match="field 'x': a column needs a sample axis"):
        NumpyDataset({"x": str(tmp_path / "s.npy")})


def test_files_of_different_lengths_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((5, 2)))
    np.save(tmp_path / "b.npy", np.zeros(6))
    with pytest.raises(SchemaError, match="field 'b': has 6 samples but field 'a' has 5"):
        NumpyDataset({"a": str(tmp_path / "a.npy"), "b": str(tmp_path / "b.npy")})


@pytest.mark.parametrize("workers", [0, 2])
def test_fortran_order_npy_batches_are_correct(tmp_path: Path, workers: int) -> None:
    src = np.arange(120, dtype=np.int16).reshape(30, 4)
    np.save(tmp_path / "f.npy", np.asfortranarray(src))
    ds = NumpyDataset({"x": str(tmp_path / "f.npy")})
    seen = [b["x"].numpy() for b in DataLoader(ds, batch_size=7, num_workers=workers, collate_fn=zero_copy_collate)]
    assert np.array_equal(np.concatenate(seen), src)
    assert np.array_equal(zero_copy_collate(ds.__getitems__([29, 0, 3]))["x"].numpy(), src[[29, 0, 3]])


def test_zero_row_npy_is_an_empty_dataset(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((0, 3), np.float32))
    ds = NumpyDataset({"x": str(tmp_path / "e.npy")})
    assert len(ds) == 0
    assert list(DataLoader(ds, batch_size=4, collate_fn=zero_copy_collate)) == []


TRUNCATE_WHILE_MAPPED = """
import os, sys
import numpy as np
from zcopy_data import NumpyDataset, ZeroCopyError, zero_copy_collate
path = sys.argv[1]
np.save(path, np.ones((1000, 1024), np.float32))
ds = NumpyDataset({"x": path})
os.truncate(path, 4096)  # another process shrinks the file under a running loader
try:
    float(zero_copy_collate(ds.__getitems__(list(range(900, 910))))["x"].sum())
except (ZeroCopyError, OSError) as err:
    print("refused:", type(err).__name__, err)
    sys.exit(0)
print("read stale data without error")
sys.exit(3)
"""


def test_a_file_truncated_while_mapped_is_an_error_not_a_bus_error(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    proc = run_isolated(TRUNCATE_WHILE_MAPPED, str(path))
    assert proc.returncode == 0, f"rc={proc.returncode} stdout={proc.stdout!r} stderr={proc.stderr[-500:]!r}"
    assert "refused: FileChangedError" in proc.stdout and str(path) in proc.stdout, proc.stdout
