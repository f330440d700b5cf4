"""DDP across real processes (gloo on CPU): every sample exactly once per epoch across the ranks.

Both runs use ``examples/lightning_ddp.py``: each rank writes the sample indices it trained on,
per epoch, and the test checks their union. One run lets Lightning start the second process
(``strategy="ddp", devices=2``: its ``DistributedSampler`` is injected into our loader, a
``DataLoader`` subclass it re-creates); the other
starts two single-process "nodes" itself with ``NODE_RANK`` / ``MASTER_ADDR``, as on a cluster,
with the rank-aware block sampler that Lightning must leave alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lightning_ddp.py"
SAMPLES, BATCH, EPOCHS = 64, 8, 2

pytestmark = pytest.mark.timeout(240)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLE),
        "--samples",
        str(SAMPLES),
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(EPOCHS),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        *args,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def records(out: Path, world: int) -> dict[tuple[int, int], dict[str, Any]]:
    found = {}
    for rank in range(world):
        for epoch in range(EPOCHS):
            path = out / f"rank{rank}_epoch{epoch}.json"
            assert path.exists(), f"rank {rank} wrote nothing for epoch {epoch}: {sorted(os.listdir(out))}"
            found[rank, epoch] = json.loads(path.read_text())
    return found


def assert_each_sample_once_per_epoch(
    seen: dict[tuple[int, int], dict[str, Any]], world: int, equal_shards: bool = True
) -> None:
    for epoch in range(EPOCHS):
        shards = [seen[rank, epoch]["indices"] for rank in range(world)]
        assert all(seen[rank, epoch]["world_size"] == world for rank in range(world))
        if equal_shards:  # DistributedSampler; a block sampler's ranks have equal batch counts instead
            assert [len(s) for s in shards] == [SAMPLES // world] * world
        union = sorted(i for shard in shards for i in shard)
        assert union == list(range(SAMPLES))  # every sample, none twice, across all ranks
    # set_epoch reached the sampler on every rank: a new order (and new shards) each epoch
    for rank in range(world):
        assert seen[rank, 0]["indices"] != seen[rank, 1]["indices"]


def test_ddp_two_processes_with_lightnings_distributed_sampler(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        command(tmp_path, "--devices", "2", "--shuffle", "shuffle", "--device-prefetch", "2"),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = records(tmp_path / "out", 2)
    # Lightning re-created our DataLoader subclass around its DistributedSampler
    assert {(r["loader"], r["sampler"]) for r in seen.values()} == {("DevicePrefetchingLoader", "DistributedSampler")}
    assert_each_sample_once_per_epoch(seen, 2)


@pytest.mark.reliability
def test_ddp_without_lightnings_distributed_sampler_is_refused_naming_the_fix(tmp_path: Path) -> None:
    # Trainer(use_distributed_sampler=False) with shuffle="shuffle": a RandomSampler on each rank
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        command(tmp_path, "--devices", "2", "--shuffle", "shuffle", "--no-distributed-sampler"),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode != 0
    assert "ValueError: the training loader runs on 2 ranks but its sampler is a RandomSampler" in done.stderr
    assert "use_distributed_sampler=True" in done.stderr and "shuffle='block'" in done.stderr
    assert not list((tmp_path / "out").iterdir())  # refused before any rank trained an epoch


def test_two_nodes_started_externally_with_the_block_sampler(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            command(tmp_path, "--num-nodes", "2", "--devices", "1", "--shuffle", "block", "--workers", "1"),
            cwd=REPO,
            env=environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank), LOCAL_RANK="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=200)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    seen = records(tmp_path / "out", 2)
    assert {(r["loader"], r["sampler"]) for r in seen.values()} == {("ShardedLoader", "BlockShuffleSampler")}
    assert_each_sample_once_per_epoch(seen, 2, equal_shards=False)


def test_ddp_two_processes_stopped_mid_epoch_resume_where_they_stopped(tmp_path: Path) -> None:
    def run(out: str, *args: str) -> None:
        (tmp_path / out).mkdir()
        cmd = command(tmp_path, "--devices", "2", "--shuffle", "shuffle", *args)
        cmd[cmd.index("--out") + 1] = str(tmp_path / out)
        done = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "not resumable" not in done.stderr

    run("whole")
    run("stopped", "--max-steps", "2", "--checkpoint-every", "2")
    (ckpt,) = (tmp_path / "data" / "ckpts").glob("*step=2.ckpt")
    run("resumed", "--resume", str(ckpt))
    whole, stopped = records(tmp_path / "whole", 2), tmp_path / "stopped"
    resumed = records(tmp_path / "resumed", 2)
    for rank in range(2):
        first = json.loads((stopped / f"rank{rank}_epoch0.json").read_text())["indices"]
        assert len(first) == 2 * BATCH
        # the interrupted epoch: each rank's own shard, exactly once, in the uninterrupted order
        assert first + resumed[rank, 0]["indices"] == whole[rank, 0]["indices"]
        assert resumed[rank, 1]["indices"] == whole[rank, 1]["indices"]
    assert_each_sample_once_per_epoch(resumed | {(r, 0): whole[r, 0] for r in range(2)}, 2)


@pytest.mark.reliability
def test_which_train_samplers_count_as_rank_aware() -> None:
    import numpy as np
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

    from zcopy_data import NumpyDataset, ZeroCopyDataLoader
    from zcopy_data.lightning._sharding import _unsharded
    from zcopy_data.samplers import BlockShuffleSampler

    ds = NumpyDataset({"x": np.arange(64, dtype=np.int64)})

    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(4))

    class OwnSampler:  # a kind the check knows nothing of: trusted
        def __iter__(self) -> Any:
            return iter(range(0, 64, 2))

        def __len__(self) -> int:
            return 32

    cases = {
        "shuffle": (ZeroCopyDataLoader(ds, batch_size=8, shuffle=True), "a RandomSampler, which ignores the rank"),
        "sequential": (DataLoader(ds, batch_size=8), "a SequentialSampler, which ignores the rank"),
        "dist-2": (DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=2, rank=0)), None),
        "dist-4": (
            DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=4, rank=0)),
            "a DistributedSampler for 4 ranks",
        ),
        "block-2": (DataLoader(ds, batch_sampler=BlockShuffleSampler(64, 8, num_replicas=2, rank=1)), None),
        "block-1": (
            DataLoader(ds, batch_sampler=BlockShuffleSampler(64, 8, num_replicas=1, rank=0)),
            "a BlockShuffleSampler for 1 ranks",
        ),
        "own": (DataLoader(ds, batch_size=8, sampler=OwnSampler()), None),  # type: ignore[arg-type]
        "iterable": (DataLoader(Stream(), batch_size=2), None),
    }
    assert {k: _unsharded(loader, 2) for k, (loader, _) in cases.items()} == {k: w for k, (_, w) in cases.items()}
