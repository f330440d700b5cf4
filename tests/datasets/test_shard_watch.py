"""Open shards are watched: a batch checks only the shards whose file saw a change, and still refuses
every changed shard at the very next batch (rewritten in place, replaced, deleted), in this
process and in forked or spawned workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from torch.utils.data import DataLoader

from zcopy_data import zero_copy_collate
from zcopy_data._file_watch import FileWatch
from zcopy_data.datasets import ArrowDataset, NumpyDataset
from zcopy_data.errors import FileChangedError

SHARDS, PER = 40, 50
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@pytest.fixture
def arrow_shards(tmp_path: Path) -> list[Path]:
    paths = []
    for s in range(SHARDS):
        x = np.arange(s * PER, (s + 1) * PER, dtype=np.int64)
        table = pa.table({"x": x, "v": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(x, 4)), 4)})
        path = tmp_path / f"s-{s:02d}.arrow"
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)
        paths.append(path)
    return paths


def _every_shard() -> np.ndarray:
    return np.arange(0, SHARDS * PER, PER // 2)[::-1].copy()  # two rows of every shard, out of order


def _rewrite_in_place(path: Path) -> None:
    """Same size, other bytes: what a writer reopening the file with ``r+`` does."""
    data = bytearray(path.read_bytes())
    data[-64] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)


def _replace(path: Path) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


CHANGES = {"rewritten": _rewrite_in_place, "replaced": _replace, "deleted": os.unlink}


@pytest.mark.reliability
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_shard_changed_among_40_open_is_refused_at_the_next_batch_and_every_one_after(
    arrow_shards: list[Path], change: str
) -> None:
    ds = ArrowDataset(arrow_shards)
    zero_copy_collate(ds.__getitems__(_every_shard()))  # opens all 40
    zero_copy_collate(ds.__getitems__(_every_shard()))
    CHANGES[change](arrow_shards[17])
    for _ in range(3):  # the watch's event is read once; the refusal stays
        with pytest.raises(FileChangedError, match=rf"s-17\.arrow.*{change}"):
            zero_copy_collate(ds.__getitems__(_every_shard()))


@linux_only
def test_a_batch_over_unchanged_watched_shards_makes_no_stat_call(
    arrow_shards: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = ArrowDataset(arrow_shards)
    zero_copy_collate(ds.__getitems__(_every_shard()))
    zero_copy_collate(ds.__getitems__(_every_shard()))  # the checks due once after opening are done
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    zero_copy_collate(ds.__getitems__(_every_shard()))
    assert calls == []  # 40 open shards, none changed: no stat (was: 40 per batch)
    os.utime(arrow_shards[3], ns=(5, 5))
    with pytest.raises(FileChangedError, match=r"s-03\.arrow"):
        zero_copy_collate(ds.__getitems__(_every_shard()))
    assert calls == [str(arrow_shards[3])]  # only the changed one


@pytest.mark.reliability
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_shard_rewritten_mid_epoch_under_workers_is_refused_before_the_epoch_ends(
    arrow_shards: list[Path], context: str
) -> None:
    ds = ArrowDataset(arrow_shards)
    zero_copy_collate(ds.__getitems__(_every_shard()))  # the parent has its own watches before the fork
    batches = [_every_shard()] * 40
    loader = DataLoader(
        ds, batch_sampler=batches, collate_fn=zero_copy_collate, num_workers=2, multiprocessing_context=context,
        prefetch_factor=1, timeout=120,
    )
    seen = 0
    with pytest.raises(FileChangedError, match=r"s-09\.arrow"):
        for _ in loader:
            seen += 1
            if seen == 3:
                _rewrite_in_place(arrow_shards[9])
    assert 3 <= seen < len(batches)
    with pytest.raises(FileChangedError, match=r"s-09\.arrow"):  # the workers' watches consumed no parent event
        zero_copy_collate(ds.__getitems__(_every_shard()))


@pytest.mark.reliability
def test_numpy_shards_are_watched_too(tmp_path: Path) -> None:
    a = np.arange(SHARDS * PER * 3, dtype=np.int32).reshape(-1, 3)
    for s in range(SHARDS):
        np.save(tmp_path / f"a-{s:02d}.npy", a[s * PER : (s + 1) * PER])
    ds = NumpyDataset({"a": str(tmp_path / "a-*.npy")})
    zero_copy_collate(ds.__getitems__(_every_shard()))
    zero_copy_collate(ds.__getitems__(_every_shard()))
    np.save(tmp_path / "a-31.npy", a[31 * PER : 32 * PER] + 1)  # rewritten in place, same size
    for _ in range(2):
        with pytest.raises(FileChangedError, match=r"a-31\.npy"):
            zero_copy_collate(ds.__getitems__(_every_shard()))


@linux_only
def test_a_forked_child_watches_on_its_own_and_first_checks_everything(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 64)
    watch = FileWatch()
    watch.add(0, str(path))
    assert watch.active and watch.changed() == set()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first answer is "everything", then its own events
        try:
            first = watch.changed()
            path.write_bytes(b"y" * 64)
            second = watch.changed()
            os.write(write, f"{first}|{second}|{watch.active}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = os.read(read, 200).decode()
    os.close(read)
    assert status == 0 and report == "None|{0}|True"
    assert watch.changed() == {0}  # the parent sees the child's write through its own watch
    assert watch.changed() == set()
