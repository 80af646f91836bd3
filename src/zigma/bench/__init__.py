"""``zigma bench``: speed, peak memory and FLOPs of the backbones versus token count, the
order-receptive-field study (zigzag-K versus K-direction parallel Mamba) and the video study
(factorised and 3-D zigzag ZigMa, bidirectional Vision-Mamba, factorised and full attention)."""

from zigma.bench.report import device_name, format_table, write_csv, write_json, write_plots
from zigma.bench.runner import BenchRow, BenchSettings, build_model, run_case, run_suite
from zigma.bench.suites import (
    BenchCase,
    drop_full_attention,
    is_full_attention,
    order_study,
    parse_video_model,
    tiny_overrides,
    token_sweep,
    video_study,
)

__all__ = [
    "BenchCase",
    "BenchRow",
    "BenchSettings",
    "build_model",
    "device_name",
    "drop_full_attention",
    "format_table",
    "is_full_attention",
    "order_study",
    "parse_video_model",
    "run_case",
    "run_suite",
    "tiny_overrides",
    "token_sweep",
    "video_study",
    "write_csv",
    "write_json",
    "write_plots",
]
