"""Benchmark results out: a printed table, ``bench.csv``, ``bench.json`` and PNG plots."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from zigma.bench.plot import line_plot
from zigma.bench.runner import BenchRow, BenchSettings

COLUMNS = [f.name for f in dataclasses.fields(BenchRow)]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[BenchRow]) -> str:
    cols = ["label", "input", "tokens", "scan_paths", "status", "params", "gflops", "fwd_ms",
            "fwd_fps", "fwd_peak_mib", "train_ms", "train_fps", "train_peak_mib"]  # fmt: skip
    if not any(r.scan_paths is not None for r in rows):
        cols.remove("scan_paths")
    if not any(r.frames is not None for r in rows):  # images: the label and tokens say it
        cols.remove("input")
    if not any(r.train_ms is not None or r.status == "OOM (train)" for r in rows):
        cols = [c for c in cols if not c.startswith("train")]
    cells = [cols] + [[_cell(getattr(r, c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = []
    for line in cells:
        padded = [c.rjust(w) for c, w in zip(line, widths, strict=True)]
        padded[0] = line[0].ljust(widths[0])
        lines.append(" ".join(padded))
    return "\n".join(lines)


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.as_dict().items()})
    return path


def device_name(device: str | torch.device = "cpu") -> str:
    """The card's name for a CUDA device, else the CPU's model name (what results depend on)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(rows: Sequence[BenchRow], settings: BenchSettings, path: str | os.PathLike) -> Path:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": device_name(settings.device),
    }
    doc = {
        "settings": dataclasses.asdict(settings),
        "env": env,
        "rows": [r.as_dict() for r in rows],
    }
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _series(rows, x: str, y: str, suffix: str = "") -> dict[str, list[tuple[float, float]]]:
    """label -> points; video rows of several frame counts get a line per count."""
    several = len({r.frames for r in rows}) > 1
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        name = r.label + (f" {r.frames}f" if several else "") + suffix
        out.setdefault(name, []).append((getattr(r, x), getattr(r, y)))
    return out


def write_plots(rows: Sequence[BenchRow], out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots of the rows (OOM points are left out). The token sweep gives ``tokens_ms``,
    ``tokens_fps`` and, on CUDA, ``tokens_memory``; the order study gives ``orders_fps`` and,
    on CUDA, ``orders_memory``; the video study ``video_ms``, ``video_fps`` (clips/s) and, on
    CUDA, ``video_memory``, against the clip's tokens."""
    out_dir = Path(out_dir)
    written = []
    train = any(r.train_ms is not None for r in rows)
    for suite, x, xlabel, log_x in (
        ("tokens", "tokens", "tokens (log scale)", True),
        ("orders", "scan_paths", "scan paths K", True),
        ("video", "tokens", "tokens per clip (log scale)", True),
    ):
        part = [r for r in rows if r.suite == suite]
        if not part:
            continue
        dtype = part[0].dtype
        rate = "clips / s" if suite == "video" else "images / s"
        plots = {"ms": ("fwd_ms", "train_ms", "ms per step"),
                 "fps": ("fwd_fps", "train_fps", rate),
                 "memory": ("fwd_peak_mib", "train_peak_mib", "peak MiB")}  # fmt: skip
        if suite == "orders":
            del plots["ms"]
        for name, (fwd, trn, ylabel) in plots.items():
            series = _series(part, x, fwd, " fwd" if train else "")
            if train:
                series.update(_series(part, x, trn, " train"))
            if not any(y is not None for pts in series.values() for _, y in pts):
                continue  # e.g. memory on CPU
            title = f"{suite} study: {ylabel} vs {x}, batch {part[0].batch}, {dtype}"
            path = out_dir / f"{suite}_{name}.png"
            # Times and rates span decades over the token sweep: log scale, or the large
            # sizes flatten the small ones.
            log_y = suite != "orders"
            written.append(line_plot(series, path, title=title, xlabel=xlabel,
                                     ylabel=ylabel + (" (log scale)" if log_y else ""),
                                     log_x=log_x, log_y=log_y))  # fmt: skip
    return written
