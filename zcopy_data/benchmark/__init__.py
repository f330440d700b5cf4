"""The benchmark behind ``zcopy-data bench``: zcopy_data against the default PyTorch path."""

from zcopy_data.benchmark.data import make_synthetic
from zcopy_data.benchmark.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "make_synthetic", "run_bench"]
