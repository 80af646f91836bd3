"""``zigma bench``: speed, peak memory and FLOPs of the backbones versus token count, and the
order-receptive-field study (zigzag-K versus K-direction parallel Mamba)."""

from zigma.bench.report import device_name, format_table, write_csv, write_json, write_plots
from zigma.bench.runner import BenchRow, BenchSettings, build_model, run_case, run_suite
from zigma.bench.suites import BenchCase, order_study, tiny_overrides, token_sweep

__all__ = [
    "BenchCase",
    "BenchRow",
    "BenchSettings",
    "build_model",
    "device_name",
    "format_table",
    "order_study",
    "run_case",
    "run_suite",
    "tiny_overrides",
    "token_sweep",
    "write_csv",
    "write_json",
    "write_plots",
]
