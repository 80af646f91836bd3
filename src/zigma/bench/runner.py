"""Timing, peak memory and OOM handling of one benchmark case.

On CUDA each repeat is timed with CUDA events and peak memory is
``torch.cuda.max_memory_allocated``; on CPU time is ``time.perf_counter`` and memory is not
measured. The reported time is the median over ``repeats`` after ``warmup`` untimed runs. A
``torch.cuda.OutOfMemoryError`` marks the row "OOM" and the suite goes on.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from zigma.bench.suites import BenchCase
from zigma.models import GraphedForward, count_flops, count_parameters, create_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class BenchSettings:
    device: str = "cpu"
    dtype: str = "bf16"  # autocast dtype; weights stay fp32 (mixed precision, as in training)
    batch: int = 1
    warmup: int = 1
    repeats: int = 3
    train: bool = False  # also time forward + backward + AdamW step
    backend: str | None = None  # scan backend for models that have one; None: the default
    cuda_graph: bool = False  # time the forward replayed as one CUDA graph (CUDA only)
    recompute_scans: bool = False  # Mamba models: rerun scan branches in the backward


@dataclass
class BenchRow:
    suite: str
    label: str
    preset: str
    side: int
    frames: int | None  # a video row's frames (its input is frames x side x side)
    tokens: int
    scan_paths: int | None
    batch: int
    dtype: str
    device: str
    status: str  # "ok", "OOM" or "OOM (train)"
    params: int | None = None
    gflops: float | None = None  # forward, whole batch, 2 FLOPs per multiply-add
    fwd_ms: float | None = None
    fwd_fps: float | None = None  # images (a video row: clips) per second
    fwd_peak_mib: float | None = None
    train_ms: float | None = None
    train_fps: float | None = None
    train_peak_mib: float | None = None

    @property
    def input(self) -> str:
        """The input's size as printed: "HxW", or "TxHxW" for a video row."""
        return "x".join(str(n) for n in ((self.frames,) if self.frames else ()) + (self.side,) * 2)

    def as_dict(self) -> dict:
        return asdict(self)


def build_model(case: BenchCase) -> torch.nn.Module:
    return create_model(case.preset, **case.overrides)


def case_flops(case: BenchCase, batch: int) -> int:
    """Forward FLOPs of the case's model, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = create_model(case.preset, **case.overrides)
    return count_flops(model, batch, case.input_shape).total


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def time_ms(
    fn: Callable[[], object],
    device: str,
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs: CUDA events
    around each call on a GPU, a host clock on CPU. ``before`` (e.g. overwriting L2 so inputs
    come from memory) runs ahead of each timed call, outside the timing."""
    for _ in range(warmup):
        fn()
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return statistics.median(times)


def _reset_peak(device: str) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: str) -> float | None:
    if _is_cuda(device):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _free(device: str) -> None:
    gc.collect()
    if _is_cuda(device):
        torch.cuda.empty_cache()


def _measure(case: BenchCase, s: BenchSettings, row: BenchRow, build) -> None:
    model = build(case).to(s.device)
    if s.backend and hasattr(model, "set_scan_backend"):
        model.set_scan_backend(s.backend)
    if s.recompute_scans and hasattr(model, "recompute_scans"):
        model.recompute_scans = True
    row.params = count_parameters(model)
    cfg = model.config
    x = torch.randn(s.batch, cfg.in_channels, *case.input_shape, device=s.device)
    t = torch.rand(s.batch, device=s.device)
    cond = model.conditioner.example(s.batch, torch.device(s.device))
    dtype = DTYPES[s.dtype]
    device_type = torch.device(s.device).type

    def autocast():
        return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)

    def forward():
        with torch.no_grad(), autocast():
            return model(x, t, **cond)

    model.eval()
    _reset_peak(s.device)
    if s.cuda_graph:  # the launches recorded once: what is left is the GPU's own time
        graphed = GraphedForward(model, x, t, cond, dtype=dtype)
        row.fwd_ms = time_ms(lambda: graphed(x, t, **cond), s.device, 1, s.repeats)
    else:
        row.fwd_ms = time_ms(forward, s.device, s.warmup, s.repeats)
    row.fwd_fps = s.batch * 1e3 / row.fwd_ms
    row.fwd_peak_mib = _peak_mib(s.device)
    if not s.train:
        return
    row.status = "OOM (train)"  # until the training step has been measured
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn_like(x)

    def step():
        with autocast():
            loss = (model(x, t, **cond).float() - target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _free(s.device)
    _reset_peak(s.device)
    row.train_ms = time_ms(step, s.device, max(s.warmup, 1), s.repeats)  # AdamW state: warm up
    row.train_fps = s.batch * 1e3 / row.train_ms
    row.train_peak_mib = _peak_mib(s.device)
    row.status = "ok"


def run_case(
    case: BenchCase,
    settings: BenchSettings,
    build: Callable[[BenchCase], torch.nn.Module] = build_model,
) -> BenchRow:
    """Measure one case; an out-of-memory error gives a row with status "OOM" (or "OOM
    (train)" where only the training step ran out), never an exception."""
    s = settings
    row = BenchRow(
        case.suite, case.label, case.preset, case.side, case.frames, case.tokens, case.scan_paths,
        s.batch, s.dtype, s.device, "ok",
    )  # fmt: skip
    row.gflops = case_flops(case, s.batch) / 1e9
    try:
        _measure(case, s, row, build)
    except torch.cuda.OutOfMemoryError:
        if row.status == "ok":
            row.status = "OOM"
            row.fwd_ms = row.fwd_fps = row.fwd_peak_mib = None
        row.train_ms = row.train_fps = row.train_peak_mib = None
    finally:
        _free(s.device)
    return row


def run_suite(
    cases: Iterable[BenchCase],
    settings: BenchSettings,
    build: Callable[[BenchCase], torch.nn.Module] = build_model,
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    rows = []
    for case in cases:
        rows.append(run_case(case, settings, build))
        if on_row is not None:
            on_row(rows[-1])
    return rows
