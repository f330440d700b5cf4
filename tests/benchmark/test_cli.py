"""``zcopy-data bench`` from the command line: argument errors, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from zcopy_bench import validate_result

from zcopy_data.cli import main


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--order", "seq,random"], "unknown order 'random'; choose from seq, shuffle, block"),
        (["bench", "--workers", "0,x"], "expected comma-separated integers, found '0,x'"),
        (["bench", "--workers", "0,-2"], "expected integers >= 0, found '0,-2'"),
        (["bench", "--batch-size", "0"], "expected an integer >= 1, found 0"),
        (["bench", "--contenders", "default,ffcv"], "unknown contender 'ffcv'; choose from default, zcopy"),
        (["bench", "--max-pass-s", "-1"], "expected seconds > 0, found '-1'"),
        (["bench", "--plot", "chart.jpg"], "--plot writes a PNG; expected a path ending in .png, found 'chart.jpg'"),
        (["bench", "some/folder", "--synthetic"], "give either PATH (some/folder) or --synthetic, not both"),
        (["bench", "some/folder", "--samples", "10"], "--samples sizes the generated data"),
        (["bench", "a", "b"], "unrecognized arguments: b"),
    ],
)
def test_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    _fails(capsys, argv, message)


def test_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_folder_of_mismatched_files(capsys: pytest.CaptureFixture[str], npy_folder: Path) -> None:
    np.save(npy_folder / "label.npy", np.arange(10, dtype=np.int64))
    assert main(["bench", str(npy_folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "field 'label'" in err and "10 samples but field 'image' has 600" in err


def test_batch_larger_than_the_data(capsys: pytest.CaptureFixture[str], npy_folder: Path, tmp_path: Path) -> None:
    argv = ["bench", str(npy_folder), "--batch-size", "1000", "--contenders", "zcopy", "--cache", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 2
    assert "batch_size=1000 is larger than the 600 samples" in capsys.readouterr().err


def test_end_to_end(capsys: pytest.CaptureFixture[str], npy_folder: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    argv = [
        "bench",
        str(npy_folder / "image.npy"),  # one file: no label field
        *("--contenders", "default,zcopy", "--order", "seq,block", "--workers", "0"),
        *("--batch-size", "64", "--repeats", "2", "--epochs", "1", "--max-pass-s", "0.05", "--threads", "2"),
        *("--cache", str(tmp_path / "cache"), "--json", str(out), "--plot", str(png), "--no-progress"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    validate_result(result)
    assert result["data"]["fields"] == {"image": {"dtype": "uint8", "shape": [3, 8, 8]}}
    assert {(r["contender"], r["order"]) for r in result["rows"]} == {
        (c, o) for c in ("default", "zcopy") for o in ("seq", "block")
    }
    # two repeats of at least one timed pass each (short passes are repeated up to half a second)
    assert all(r["runs"] >= 2 for r in result["rows"])
    assert result["config"]["threads"] == 2
    assert "fraction of the all-threads index_select limit" in printed  # the ceiling for 2 torch threads
    assert result["command"].startswith("zcopy-data bench ")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "contender" in printed and f"wrote {out}" in printed and f"wrote {png}" in printed
