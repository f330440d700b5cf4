"""The benchmark behind ``zcopy-data bench``: zcopy_data against the default PyTorch path and peers."""

from zcopy_bench.data import DataSource, make_synthetic, open_source, synthetic_source
from zcopy_bench.report import format_markdown, format_table, plot
from zcopy_bench.runner import BenchConfig, run_bench
from zcopy_bench.schema import validate_result

__all__ = [
    "BenchConfig",
    "DataSource",
    "format_markdown",
    "format_table",
    "make_synthetic",
    "open_source",
    "plot",
    "run_bench",
    "synthetic_source",
    "validate_result",
]
