from __future__ import annotations

import pytest

from zcopy_data.cli import main


def test_explain_command_prints_the_report(npy_files, capsys):
    args = [f"{k}={v}" for k, v in npy_files.items()]
    assert main(["explain", *args, "--batch-size", "10", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "view: indices contiguous" in out and "copied 0 B" in out
    assert main(["explain", *args, "--batch-size", "10", "--batches", "2", "--shuffle"]) == 0
    assert "gather: indices not contiguous" in capsys.readouterr().out
    assert main(["explain", *args, "--batch-size", "10", "--batches", "2", "--workers", "2"]) == 0
    assert "none: assembled by a worker thread in this process" in capsys.readouterr().out
    argv = ["explain", *args, "--batch-size", "10", "--batches", "2", "--workers", "2", "--worker-mode", "processes"]
    assert main(argv) == 0
    assert "descriptor: view of a memory-mapped file" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["explain", "nofield"], ["explain", "x=a.npy", "--batch-size", "0"], ["frobnicate"]],
)
def test_bad_arguments_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code != 0
    captured = capsys.readouterr()
    assert captured.err or "expected NAME=PATH.npy" in str(err.value)
