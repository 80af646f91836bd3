"""Measuring and reporting for the benchmark scripts in this folder: timing (warm-up, CUDA
events, median), peak memory, the machine's ceilings and markdown tables.

Not a script: ``benchmarks/scan.py`` imports it (a script's folder is on its import path).
"""

from __future__ import annotations

import contextlib
import gc
import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from zigma.bench.runner import time_ms


class Bench:
    """Times and measures callables on one device, under a soft time budget.

    Attributes:
        device: where the work runs; on CPU times come from a host clock.
        warmup: calls before timing.
        reps: timed calls; ``time_ms`` reports their median.
        deadline: ``time.monotonic()`` after which callers should skip optional work.
    """

    def __init__(self, device: torch.device, warmup: int, reps: int, budget_s: float,
                 flush_mb: int = 256) -> None:  # fmt: skip
        self.device, self.warmup, self.reps = device, warmup, reps
        self.deadline = time.monotonic() + budget_s
        # Written before each timed CUDA call so that no input is still in L2 (50 MB on an
        # H100): a model's kernels read their inputs from HBM.
        self._flush = torch.empty(flush_mb << 20, dtype=torch.int8, device=device) if (
            device.type == "cuda") else None  # fmt: skip

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left before the soft deadline."""
        return self.deadline - time.monotonic()

    def time_ms(
        self, fn: Callable[[], object], reps: int | None = None, warmup: int | None = None
    ) -> float:
        """Median milliseconds of ``fn()`` after warm-up (``zigma.bench.time_ms``), with L2
        overwritten before each timed CUDA call."""
        flush = self._flush.zero_ if self._flush is not None else None
        return time_ms(
            fn,
            str(self.device),
            self.warmup if warmup is None else warmup,
            self.reps if reps is None else reps,
            before=flush,
        )

    @contextlib.contextmanager
    def peak_memory(self, row: dict) -> Iterator[None]:
        """Put into ``row`` the peak CUDA memory of the block (``peak_mb``) and its growth over
        what was allocated when the block began (``extra_mb``); nothing on CPU."""
        if not self.cuda:
            yield
            return
        free_memory()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        try:
            yield
        finally:
            peak = torch.cuda.max_memory_allocated(self.device)
            row["peak_mb"] = peak / 2**20
            row["extra_mb"] = (peak - base) / 2**20


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def copy_bandwidth(bench: Bench, megabytes: int) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    n = megabytes << 20
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=bench.device)
    dst = torch.empty_like(src)
    return 2 * n / (bench.time_ms(lambda: dst.copy_(src)) * 1e-3)


def sm_clock_hz() -> tuple[float | None, str]:
    """The peak SM clock of the current CUDA device and where it was read: the driver
    (through Triton's launcher utilities), else nvidia-smi; ``None`` if neither answers."""
    try:
        import triton

        utils = triton.runtime.driver.active.utils
        khz = utils.get_device_properties(torch.cuda.current_device()).get("sm_clock_rate", 0)
        if khz > 0:
            return khz * 1e3, "peak clock, CU_DEVICE_ATTRIBUTE_CLOCK_RATE"
    except Exception:  # any failure here falls back to nvidia-smi
        pass
    try:
        query = ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0]) * 1e6, "nvidia-smi clocks.max.sm"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None, "no clock read"


def git_commit(repo: Path) -> str | None:
    """Short commit of ``repo``, ``+dirty`` with uncommitted changes to tracked files; ``None``
    without git or its metadata (as in a copied working tree)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode:
            raise RuntimeError(out.stderr.strip())
        return out.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return None


def error_text(exc: BaseException) -> str:
    """The error as one table cell; its traceback goes to stderr. Call inside ``except``."""
    traceback.print_exc(file=sys.stderr)
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text[:300]


def attempt(row: dict, fn: Callable[[], None]) -> dict:
    """Run ``fn`` (which fills ``row``) and set ``row["status"]``: "ok", "OOM" when it ran out
    of CUDA memory, else "error" with the error text, so that the other cases still run."""
    try:
        fn()
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    except Exception as exc:  # the other cases still run
        row["status"], row["error"] = "error", error_text(exc)
    free_memory()  # after the except clause: its traceback no longer holds the model
    return row


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in fp64; inf when ``got`` is not finite."""
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(ok: bool | None) -> str | None:
    """A target's mark: ✓ met, ✗ missed, ``None`` not measured."""
    return None if ok is None else ("✓" if ok else "✗")


def cell(value: object, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return verdict(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else format(value, spec)
    return str(value)


def md_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table of ``rows`` over ``columns`` (key, header, format spec); a row's
    ``error`` is appended to its last cell."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [cell(row.get(key), spec) for key, _, spec in columns]
        if row.get("error"):
            cells[-1] = f"{cells[-1]} {row['error']}".strip()
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
