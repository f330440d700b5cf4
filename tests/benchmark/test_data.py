"""Benchmark data sources: the user's .npy files and the generated set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from zcopy_bench.data import open_source, synthetic_source

from zcopy_data.errors import SchemaError


def test_folder_fields_are_named_by_file_stem(npy_folder: Path) -> None:
    src = open_source(npy_folder)
    assert src.n == 600
    assert src.fields == {"image": ("uint8", (3, 8, 8)), "label": ("int64", ())}
    assert src.sample_bytes == 3 * 8 * 8 + 8
    assert src.paths == {"image": npy_folder / "image.npy", "label": npy_folder / "label.npy"}


def test_single_file_needs_no_label(npy_folder: Path) -> None:
    src = open_source(npy_folder / "image.npy")
    assert list(src.fields) == ["image"]
    assert src.n == 600


def test_spec_round_trip(npy_folder: Path) -> None:
    src = open_source(npy_folder)
    assert type(src).from_spec(src.to_spec()) == src


def test_key_changes_when_a_file_changes(npy_folder: Path) -> None:
    before = open_source(npy_folder).key
    np.save(npy_folder / "label.npy", np.arange(600, dtype=np.int64)[::-1].copy())
    assert open_source(npy_folder).key != before


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such file or folder .*nowhere"):
        open_source(tmp_path / "nowhere")


def test_folder_without_npy(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"holds no \.npy file; write one per field"):
        open_source(tmp_path)


def test_files_of_different_lengths(npy_folder: Path) -> None:
    np.save(npy_folder / "label.npy", np.arange(599, dtype=np.int64))
    with pytest.raises(SchemaError, match=r"field 'label'.*599 samples but field 'image' has 600") as err:
        open_source(npy_folder)
    assert err.value.field == "label"


def test_not_a_numeric_array(tmp_path: Path) -> None:
    np.save(tmp_path / "names.npy", np.array(["a", "b"]))
    with pytest.raises(SchemaError, match=r"field 'names'.*expected a numeric array"):
        open_source(tmp_path)


def test_not_an_npy_file(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(SchemaError, match=r"is not a \.npy file"):
        open_source(tmp_path / "x.csv")


def test_synthetic_is_written_once(tmp_path: Path) -> None:
    a = synthetic_source(300, (3, 4, 4), folder=tmp_path)
    mtime = a.paths["image"].stat().st_mtime_ns
    b = synthetic_source(300, (3, 4, 4), folder=tmp_path)
    assert a == b
    assert b.paths["image"].stat().st_mtime_ns == mtime
    assert a.fields == {"image": ("uint8", (3, 4, 4)), "label": ("int64", ())}
    assert a.origin == "synthetic"
