"""An Arrow IPC file, written by pyarrow, read zero-copy through a plain ``DataLoader``.

Writes 2,000 rows (a 3x16x16 uint8 image as a fixed-shape tensor column, an int64 label, a
float32 score) in record batches of 500 rows, then serves them with ``ArrowDataset``: a batch
inside one record batch is a view of the mapped file, a batch that crosses record batches (or a
shuffled one) is one gather per field. Nothing is ever converted on the host::

    python examples/arrow_file.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import DataLoader

from zcopy_data import explain, zero_copy_collate
from zcopy_data.datasets import ArrowDataset


def write_arrow(path: Path, rows: int, chunk: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(rows, 3, 16, 16), dtype=np.uint8)
    tensor_type = pa.fixed_shape_tensor(pa.uint8(), (3, 16, 16))
    schema = pa.schema([("image", tensor_type), ("label", pa.int64()), ("score", pa.float32())])
    with pa.ipc.new_file(str(path), schema) as writer:
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            flat = pa.FixedSizeListArray.from_arrays(pa.array(images[start:stop].reshape(-1)), 3 * 16 * 16)
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.ExtensionArray.from_storage(tensor_type, flat),
                        pa.array(np.arange(start, stop, dtype=np.int64)),
                        pa.array(rng.random(stop - start, dtype=np.float32)),
                    ],
                    schema=schema,
                )
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder for the generated file (default: a temp folder)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500, help="rows per record batch")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.root or tmp) / "data.arrow"
        write_arrow(path, args.rows, args.chunk)
        ds = ArrowDataset(path)
        print(f"{path.name}: {len(ds)} rows, {ds.schema}")

        loader = DataLoader(ds, batch_size=args.batch_size, collate_fn=zero_copy_collate)
        labels = [int(i) for batch in loader for i in batch["label"]]
        print(f"read {len(labels)} rows in order: {labels == list(range(args.rows))}")
        ledger = explain(loader, batches=len(loader))
        print(f"\n== sequential\n{ledger}")

        shuffled = DataLoader(ds, batch_size=args.batch_size, shuffle=True, collate_fn=zero_copy_collate)
        gathered = explain(shuffled, batches=len(shuffled))
        print(f"\n== shuffled\n{gathered}")
        batch = next(iter(loader))
        print(f"\nbatch: image {tuple(batch['image'].shape)} {batch['image'].dtype}, score {batch['score'].dtype}")
        return {
            "in_order": labels == list(range(args.rows)),
            "sequential_copied": ledger.bytes_copied,
            "shuffled_copied": gathered.bytes_copied,
            "image_dtype": str(batch["image"].dtype),
        }


if __name__ == "__main__":
    main()
