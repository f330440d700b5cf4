"""``TokenDataset``: windows of real token files (NumPy ``.npy``/``.bin``, Megatron-LM pairs) checked
against a slow reference for every sampler, zero-copy where promised, and every bad input refused."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tests.support import in_a_file_mapping
from zcopy_data import (
    BlockShuffleSampler,
    CorruptFileError,
    DevicePrefetcher,
    LazyShuffleSampler,
    SchemaError,
    ZeroCopyDataLoader,
    explain,
    zero_copy_collate,
)
from zcopy_data.datasets import TokenDataset
from zcopy_data.errors import FileChangedError
from zcopy_data.ledger import capture

SEQ = 16



def _reference(tokens: np.ndarray, seq: int, stride: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    w = tokens[i * stride : i * stride + seq + 1]
    return w[:-1], w[1:]


def _check(batch: dict[str, torch.Tensor], idx: list[int], tokens: np.ndarray, seq: int, stride: int) -> None:
    assert batch["input"].is_contiguous() and batch["target"].is_contiguous()
    assert batch["input"].dtype == torch.from_numpy(tokens[:1]).dtype  # as stored, never widened
    for row, i in enumerate(idx):
        x, y = _reference(tokens, seq, stride, i)
        assert np.array_equal(batch["input"][row].numpy(), x), (row, i)
        assert np.array_equal(batch["target"][row].numpy(), y), (row, i)


def write_megatron(prefix: Path, docs: list[np.ndarray], dtype: np.dtype, *, multimodal: bool = False) -> None:
    """A Megatron-LM pair written from its documented layout: one sequence per document."""
    lengths = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64) * np.dtype(dtype).itemsize])
    code = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}[np.dtype(dtype).type]
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        f.write(struct.pack("<Q", len(docs)) + struct.pack("<Q", len(docs) + 1))
        f.write(lengths.tobytes() + pointers.astype(np.int64).tobytes())
        f.write(np.arange(len(docs) + 1, dtype=np.int64).tobytes())
        if multimodal:
            f.write(np.zeros(len(docs), np.int8).tobytes())


# -- sources ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bin", "npy", "array", "memmap"])
def test_every_source_gives_the_reference_windows(tmp_path: Path, tokens: np.ndarray, bin_file: Path, kind) -> None:
    if kind == "bin":
        ds = TokenDataset(bin_file, SEQ, dtype=np.uint16)
    elif kind == "npy":
        np.save(tmp_path / "t.npy", tokens)
        ds = TokenDataset(tmp_path / "t.npy", SEQ)
    elif kind == "array":
        ds = TokenDataset(tokens.copy(), SEQ)
    else:
        ds = TokenDataset(np.memmap(bin_file, dtype=np.uint16, mode="r"), SEQ)  # read-only: mapped again
    assert len(ds) == (tokens.size - SEQ - 1) // SEQ + 1
    idx = [0, 7, len(ds) - 1, 3]
    _check(zero_copy_collate(ds.__getitems__(idx)), idx, tokens, SEQ, SEQ)
    sample = ds[5]
    x, y = _reference(tokens, SEQ, SEQ, 5)
    assert np.array_equal(sample["input"].numpy(), x) and np.array_equal(sample["target"].numpy(), y)


@pytest.mark.reliability
@pytest.mark.parametrize("stride", [1, 5, SEQ, SEQ + 3])
def test_every_sampler_gives_the_reference_windows(bin_file: Path, tokens: np.ndarray, stride: int) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=stride, dtype=np.uint16)
    n = len(ds)
    samplers = {
        "sequential": ZeroCopyDataLoader(ds, batch_size=32),
        "random": ZeroCopyDataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1)),
        "lazy": ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 32, seed=3)),
        "distributed": ZeroCopyDataLoader(ds, batch_size=32, sampler=DistributedSampler(ds, num_replicas=1, rank=0)),
        "plain DataLoader": DataLoader(ds, batch_size=32, shuffle=True, collate_fn=zero_copy_collate),
    }
    if stride >= SEQ:
        samplers["block"] = ZeroCopyDataLoader(ds, batch_sampler=BlockShuffleSampler(ds, 32, seed=2))
    window = {tokens[i * stride : i * stride + SEQ].tobytes(): i for i in range(n)}  # random ids: unique
    assert len(window) == n
    for name, loader in samplers.items():
        seen: list[int] = []
        for batch in loader:
            idx = [window[row.numpy().tobytes()] for row in batch["input"]]  # the window each row came from
            _check(batch, idx, tokens, SEQ, stride)
            seen += idx
        if name != "distributed":
            assert sorted(seen) == list(range(n)), name  # every window once per epoch
        else:
            assert len(seen) == n


@pytest.mark.reliability
def test_megatron_pair_matches_its_reference_reader_and_gives_document_fields(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 30000, int(k), dtype=np.uint16) for k in rng.integers(1, 40, 60)]
    write_megatron(tmp_path / "corpus", docs, np.uint16)
    flat = np.concatenate(docs)
    assert (tmp_path / "corpus.bin").read_bytes() == flat.tobytes()  # byte for byte: the layout
    fields = ("input", "target", "position_ids", "doc_ids", "cu_seqlens")
    for given in ("corpus", "corpus.bin", "corpus.idx"):
        ds = TokenDataset(tmp_path / given, SEQ, stride=7, fields=fields)
        assert ds.kind == "megatron" and ds.documents == len(docs) and ds.token_count == flat.size
    starts = set(np.concatenate([[0], np.cumsum([len(d) for d in docs])]).tolist())
    idx = list(np.random.default_rng(2).permutation(len(ds))[:20])
    batch = zero_copy_collate(ds.__getitems__(idx))
    _check(batch, idx, flat, SEQ, 7)
    cu = [0]
    for row, i in enumerate(idx):
        pos, doc, p, d = [], [], 0, 0
        for j in range(SEQ):
            if j > 0 and (i * 7 + j) in starts:
                p, d = 0, d + 1
                cu.append(row * SEQ + j)
            pos.append(p)
            doc.append(d)
            p += 1
        if row + 1 < len(idx):
            cu.append((row + 1) * SEQ)
        assert batch["position_ids"][row].tolist() == pos, (row, i)
        assert batch["doc_ids"][row].tolist() == doc, (row, i)
    cu.append(len(idx) * SEQ)
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].tolist() == cu


def test_megatron_core_builder_output_is_read(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # megatron-core warns about optional kernels on import
        indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 60000, int(k), dtype=np.uint16) for k in rng.integers(5, 50, 30)]
    builder = indexed.IndexedDatasetBuilder(str(tmp_path / "mc.bin"), dtype=np.uint16)
    for d in docs:
        builder.add_item(torch.from_numpy(d.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "mc.idx"))
    write_megatron(tmp_path / "ref", docs, np.uint16)
    assert (tmp_path / "mc.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()
    ds = TokenDataset(tmp_path / "mc", SEQ, fields=("input", "target", "doc_ids"))
    assert ds.documents == len(docs)
    _check(zero_copy_collate(ds.__getitems__([0, 3])), [0, 3], np.concatenate(docs), SEQ, SEQ)


def test_eos_boundaries_reset_positions_after_each_end_of_document() -> None:
    tokens = np.array([5, 6, 0, 7, 8, 9, 0, 1, 0, 2, 3, 4, 5, 6, 7, 8], dtype=np.int32)
    ds = TokenDataset(tokens, 6, stride=2, eos_id=0, fields=("input", "position_ids", "doc_ids", "cu_seqlens"))
    batch = zero_copy_collate(ds.__getitems__([0, 3]))
    assert batch["input"].tolist() == [[5, 6, 0, 7, 8, 9], [0, 1, 0, 2, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 0, 1, 0, 1, 2]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 2, 2, 2]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 6, 7, 9, 12]


# -- zero-copy and the ledger ------------------------------------------------------------------------
def test_consecutive_disjoint_windows_are_views_of_the_file(bin_file: Path, tokens: np.ndarray) -> None:
    ds = TokenDataset(bin_file, SEQ, dtype=np.uint16)
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(list(range(4, 12))))
    _check(batch, list(range(4, 12)), tokens, SEQ, SEQ)
    assert in_a_file_mapping(batch["input"]) and in_a_file_mapping(batch["target"])
    assert batch["target"].data_ptr() == batch["input"].data_ptr() + 2  # the same tokens, shifted by one
    assert sum(r[4] for r in records) == 0 and sum(r[3] for r in records) == 2 * 8 * SEQ * 2


def test_a_shuffled_batch_is_one_gather_per_field_of_its_bytes(bin_file: Path, tokens: np.ndarray) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)
    idx = [900, 3, 47, 2000]
    with capture() as records:
        batch = zero_copy_collate(ds.__getitems__(idx))
    _check(batch, idx, tokens, SEQ, 1)
    assert not in_a_file_mapping(batch["input"])
    copies = [(r[1], r[4]) for r in records if r[4]]
    assert copies == [("input", 4 * SEQ * 2), ("target", 4 * SEQ * 2)]  # 2-byte tokens, once each
    # stride 1: even consecutive windows overlap, so they are gathered, never aliased views
    assert not ds.batch_is_view((0, 8))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes_send_descriptors_of_the_token_file(bin_file: Path, tokens: np.ndarray, context) -> None:
    ds = TokenDataset(bin_file, SEQ, dtype=np.uint16)
    loader = DataLoader(
        ds, batch_size=16, num_workers=2, multiprocessing_context=context, collate_fn=zero_copy_collate, timeout=60
    )
    batches = list(loader)
    for k, b in enumerate(batches):
        idx = list(range(16 * k, min(16 * (k + 1), len(ds))))
        _check(b, idx, tokens, SEQ, SEQ)
        assert in_a_file_mapping(b["input"]) and not b["input"].is_shared()
    ledger = explain(loader, batches=3)
    assert ledger.bytes_copied == 0
    crossing = {r.reason for r in ledger.rows if r.stage == "worker->main"}
    assert crossing and all(reason.startswith("descriptor") for reason in crossing), crossing


def test_widening_is_the_declared_device_cast(bin_file: Path, tokens: np.ndarray) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=3, dtype=np.uint16)
    loader = ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 8, seed=0))
    idx = next(iter(LazyShuffleSampler(ds, 8, seed=0)))
    batch = next(iter(DevicePrefetcher(loader, "cpu", cast={"input": torch.int64, "target": torch.int64})))
    assert batch["input"].dtype == torch.int64 and batch["target"].dtype == torch.int64
    for row, i in enumerate(idx):
        x, y = _reference(tokens, SEQ, 3, i)
        assert batch["input"][row].tolist() == x.astype(np.int64).tolist()
        assert batch["target"][row].tolist() == y.astype(np.int64).tolist()  # ids above 32767 stay positive


def test_block_shuffling_overlapping_windows_warns(bin_file: Path) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=1, dtype=np.uint16)
    with pytest.warns(UserWarning, match="share 15 of their 16 input tokens.*LazyShuffleSampler"):
        BlockShuffleSampler(ds, 8)


@pytest.mark.reliability
# -- bad input ---------------------------------------------------------------------------------------
def test_bad_token_files_are_refused_with_the_fix(tmp_path: Path, bin_file: Path) -> None:
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CorruptFileError, match=r"3 bytes, not a multiple of uint16's 2"):
        TokenDataset(odd, 1, dtype=np.uint16)
    with pytest.raises(SchemaError, match=r"raw token file.*pass dtype=np.uint16"):
        TokenDataset(bin_file, SEQ)
    with pytest.raises(SchemaError, match=r"seq_len=5000 needs windows of 5001 tokens, the source has 5000"):
        TokenDataset(bin_file, 5000, dtype=np.uint16)
    with pytest.raises(SchemaError, match=r"holds uint16 tokens, dtype=int32 was asked.*Cast\(torch.int64\)"):
        TokenDataset(np.zeros(100, np.uint16), 4, dtype=np.int32)
    with pytest.raises(SchemaError, match=r"float32 values; token ids are integers"):
        TokenDataset(np.zeros(100, np.float32), 4)
    with pytest.raises(SchemaError, match=r"need document boundaries; pass eos_id="):
        TokenDataset(np.zeros(100, np.uint16), 4, fields=("input", "position_ids"))
    with pytest.raises(SchemaError, match=r"eos_id=70000 is not a uint16 token \(0..65535\)"):
        TokenDataset(np.zeros(100, np.uint16), 4, eos_id=70000, fields=("input", "position_ids"))
    with pytest.raises(FileNotFoundError, match="no such token file"):
        TokenDataset(tmp_path / "missing.bin", 4, dtype=np.uint16)


def _megatron(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    docs = [np.arange(10 * k, 10 * k + 10, dtype=np.uint16) for k in range(6)]
    write_megatron(tmp_path / "m", docs, np.uint16)
    return tmp_path / "m", docs


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.reliability
def test_an_idx_that_does_not_match_its_bin_is_refused(tmp_path: Path) -> None:
    prefix, _ = _megatron(tmp_path)
    TokenDataset(prefix, 8)  # the good pair opens
    with open(f"{prefix}.bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(CorruptFileError, match=r"does not match.*60 tokens of uint16 = 120 bytes, the .bin has 122"):
        TokenDataset(prefix, 8)


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("what", "offset", "value", "message"),
    [
        ("negative length", 34 + 4 * 2, struct.pack("<i", -3), "sequence 2 has a negative length -3"),
        ("decreasing pointer", 34 + 24 + 8 * 3, struct.pack("<q", 4), "sequence 3 starts at byte 4, expected 60"),
        ("pointer past the values", 34 + 24 + 8 * 5, struct.pack("<q", 10**6), "sequence 5 starts at byte 1000000"),
        ("decreasing documents", 34 + 72 + 8 * 3, struct.pack("<q", 1), "document index 3 .1. is smaller"),
        ("truncated index", None, b"", "truncated"),
        ("another dtype", 17, bytes([4]), "sequence 1 starts at byte 20, expected 40"),
    ],
)
def test_each_broken_index_is_its_own_error(tmp_path: Path, what, offset, value, message) -> None:  # noqa: ARG001
    prefix, _ = _megatron(tmp_path)
    idx = Path(f"{prefix}.idx")
    if offset is None:
        idx.write_bytes(idx.read_bytes()[:-8])
    else:
        _patch(idx, offset, value)
    with pytest.raises(CorruptFileError, match=message):
        TokenDataset(prefix, 8)


@pytest.mark.reliability
def test_a_token_file_replaced_after_building_is_an_error_not_other_tokens(bin_file: Path) -> None:
    ds = TokenDataset(bin_file, SEQ, dtype=np.uint16)
    replacement = bin_file.with_suffix(".new")
    np.zeros(5000, np.uint16).tofile(replacement)
    replacement.replace(bin_file)
    with pytest.raises(FileChangedError):
        zero_copy_collate(ds.__getitems__([1, 5]))


# -- the arithmetic sampler -------------------------------------------------------------------------
def test_lazy_shuffle_splits_ranks_like_distributed_sampler_and_moves_each_epoch() -> None:
    n, ranks = 1003, 4
    per_rank = [LazyShuffleSampler(n, 16, seed=5, num_replicas=ranks, rank=r) for r in range(ranks)]
    seen = [i for s in per_rank for b in s for i in b]
    assert len(seen) == ranks * -(-n // ranks) and set(seen) == set(range(n))  # padded by repeats, as torch's
    assert len({len(s) for s in per_rank}) == 1
    s = LazyShuffleSampler(n, 16, seed=5)
    first = [i for b in s for i in b]
    s.set_epoch(1)
    second = [i for b in s for i in b]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    dropped = LazyShuffleSampler(n, 16, seed=5, drop_last=True)
    assert all(len(b) == 16 for b in dropped) and len(dropped) == n // 16


def test_lazy_shuffle_over_a_billion_windows_builds_no_index_array() -> None:
    import tracemalloc

    tracemalloc.start()
    batch = next(iter(LazyShuffleSampler(10**9, 64, seed=0).batches()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(batch.tolist())) == 64 and int(batch.max()) < 10**9
    assert peak < 16 * 2**20  # a chunk of positions, not 8 GB of indices


@pytest.mark.reliability
def test_a_resumed_lazy_shuffle_epoch_sees_each_window_once(bin_file: Path) -> None:
    ds = TokenDataset(bin_file, SEQ, stride=2, dtype=np.uint16)

    def loader() -> ZeroCopyDataLoader:
        return ZeroCopyDataLoader(ds, batch_sampler=LazyShuffleSampler(ds, 24, seed=9))

    first = loader()
    it = iter(first)
    before = [next(it)["input"][:, 0].clone() for _ in range(10)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    after = [b["input"][:, 0] for b in resumed]
    whole = [b["input"][:, 0] for b in loader()]
    assert torch.equal(torch.cat(before + after), torch.cat(whole))


def test_inspect_describes_token_files(tmp_path: Path, bin_file: Path) -> None:
    from zcopy_data.inspect import format_report, inspect_path

    prefix, _ = _megatron(tmp_path)
    report = inspect_path(prefix)
    assert report.format.startswith("Megatron-LM") and report.samples == 60 and report.fields[0].dtype == "uint16"
    assert "60 uint16 tokens in 6 documents" in format_report(report)
    raw = inspect_path(bin_file)
    assert raw.format.startswith("raw token file") and "5000 as uint16" in format_report(raw)


@pytest.mark.reliability
def test_a_fifo_is_refused_never_waited_on(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    fifo = tmp_path / "train.bin"
    os.mkfifo(fifo)
    code = (
        "import numpy as np\nfrom zcopy_data.datasets import TokenDataset\n"
        f"try:\n    TokenDataset({str(fifo)!r}, 4, dtype=np.uint16)\n"
        "except Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "CorruptFileError" in out.stdout and "not a regular file" in out.stdout, out.stdout + out.stderr
