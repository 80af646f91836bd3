"""Benchmark of the Triton selective scan and causal conv, and of a ZigMa training step.

One call on a GPU, from the repository root, builds, checks and times everything:

    PYTHONPATH=src python benchmarks/scan.py --out OUT             # a few minutes on an H100
    PYTHONPATH=src python benchmarks/scan.py --out OUT --quick     # fewer repeats and tiles
    PYTHONPATH=src python benchmarks/scan.py --out OUT --sections check,scan
    PYTHONPATH=src python benchmarks/scan.py --smoke --out /tmp/s  # CPU, Triton interpreter

Sections: ``env`` (card, versions, commit, measured copy bandwidth, SFU rate; always runs),
``check`` (Triton scan, conv and Mamba layer against the PyTorch paths at full size: values
and every gradient), ``scan`` (forward and backward ms of the chunked PyTorch scan and of the
Triton scan without and with a zigzag order, next to their HBM and SFU floors, derived
below), ``conv`` (Triton vs gather + F.conv1d + SiLU + scatter), ``tiles`` (a
small ``ScanConfig`` sweep choosing the best tiles) and ``train`` (a ZigMa-B/2 AdamW step
under bf16 autocast, zigzag-8 vs sweep, triton vs chunked), in that order: a soft time budget
skips the optional cases (later tile candidates, chunked training steps) when it runs short.
Every timed case records its peak CUDA memory. Each section prints its tables as it ends and
all are printed again at the end; OUT/scan.json holds every number, OUT/scan.md the tables.

Exit status: 1 if a correctness check failed or could not run, 2 if another section raised,
else 0. ``--smoke`` runs every section at tiny sizes on CPU under ``TRITON_INTERPRET=1`` to
test this script (tests/test_benchmarks.py); its times mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import (
    Bench,
    copy_bandwidth,
    error_text,
    free_memory,
    git_commit,
    md_table,
    ratio,
    rel_err,
    sm_clock_hz,
    verdict,
)
from zigma.models import create_model
from zigma.scan import scan_orders
from zigma.ssm import Mamba
from zigma.ssm.ops.chunked import selective_scan_chunked
from zigma.ssm.ops.tokens import causal_conv1d_tokens_ref, selective_scan_tokens_ref
from zigma.train.optim import param_groups
from zigma.transport.losses import TransportConfig, training_loss

REPO = Path(__file__).resolve().parents[1]
# Run in this order: the optional and slowest cases (tile candidates, chunked training steps)
# come last, where the soft time budget can cut them.
SECTIONS = ("env", "check", "scan", "conv", "tiles", "train")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # scan argument order

# Max-relative error (max |got - want| / max |want|) allowed against the fp32 PyTorch paths.
# Both sides see the same bf16-rounded inputs and the Triton outputs are rounded to bf16
# (2^-9 relative), so a healthy kernel lands near 3e-3 and a real bug far above these.
TOL = {"scan": 2e-2, "conv": 2e-2, "mamba": 3e-2, "tiles": 2e-2}

# Floors. HBM bytes per (b, d, l) element E: forward reads u,
# delta, z and writes y in bf16, plus B and C (8 B N L in all); backward reads u, delta, z, dy
# and writes du, ddelta, dz (14 E). SFU ops: N exp2 per element plus 4 (softplus, silu)
# forward, 6 backward. MUFU issues 16 ops per clock per SM: 132 SMs at 1.83 GHz give the
# 3.9e12/s that FlashAttention-3 quotes for an H100 SXM, the fallback when no clock is read.
SFU_PER_CLOCK_PER_SM = 16
H100_SFU_RATE = 3.9e12

# Issue 4's targets (B=8, D=1536, L=4096 for the absolute ones).
TARGET_FWD_OVER_FLOOR = 1.5
TARGET_FWD_MS_4096 = 0.4
TARGET_BWD_MS_4096 = 0.65
TARGET_CHUNKED_OVER_TRITON = 30.0
TARGET_ZIGZAG_OVER_SWEEP = 1.03


# -- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Problem sizes, repeats and tile candidates of one run (a square side s gives L = s^2)."""

    dim: int = 1536  # d_inner of ZigMa-B (d_model 768, expand 2)
    d_state: int = 16
    dt_rank: int = 48  # ZigMa-B's x_proj: B and C are views of its output at this offset
    check_batch: int = 2
    check_side: int = 64
    batch: int = 8
    batches: tuple[int, ...] = (8, 1)  # the scan table's batches (1: the paper's FPS study)
    sides: tuple[int, ...] = (32, 64, 128)  # L = 1024, 4096, 16384
    conv_side: int = 64
    conv_width: int = 4
    tile_cases: tuple[tuple[int, int], ...] = ((8, 64), (1, 128))  # (batch, side)
    d_model: int = 768
    train_model: str = "ZigMa-B/2"
    train_overrides: tuple[tuple[str, object], ...] = ()
    # (latent side, batch): 256 tokens x 64 and 4096 x 4 at patch 2, issue 17's settings
    train_cases: tuple[tuple[int, int], ...] = ((32, 64), (128, 4))
    num_classes: int = 1000
    warmup: int = 3
    reps: int = 20
    train_reps: int = 10
    # The chunked path is slow (scan backward ~0.7 s at L=4096; a ZigMa-B step ~10 s est.):
    chunked_scan_reps: int = 3
    chunked_train_reps: int = 2
    # Tile candidates as ScanConfig overrides; the first is the base config itself.
    fwd_tiles: tuple[dict, ...] = (
        {},
        {"warps_per_sm": 0},
        {"warps_per_sm": 64},
        {"fwd_lanes": 2},
        {"warps_per_sm": 16},
        {"fwd_lanes": 2, "warps_per_sm": 64},
        {"fwd_warps": 2},
    )
    bwd_tiles: tuple[dict, ...] = (
        {},
        {"warps_per_sm": 0},
        {"warps_per_sm": 64},
        {"bwd_lanes": 2},
        {"warps_per_sm": 16},
        {"bwd_warps": 2},
        {"bwd_lanes": 2, "bwd_warps": 2},
    )
    chunked_budget_s: float = 40.0  # skip a chunked scan case predicted to take longer
    flush_mb: int = 256  # overwritten before each timed call, so inputs come from HBM
    copy_mb: int = 1024  # per buffer of the bandwidth measurement


FULL = Sizes()
QUICK = dataclasses.replace(
    FULL,
    warmup=2,
    reps=5,
    train_reps=4,
    chunked_scan_reps=1,
    chunked_train_reps=1,
    fwd_tiles=FULL.fwd_tiles[:4],
    bwd_tiles=FULL.bwd_tiles[:4],
)
SMOKE = Sizes(
    dim=8,
    d_state=4,
    dt_rank=2,
    check_side=4,
    batch=2,
    batches=(2, 1),
    sides=(4,),
    conv_side=4,
    tile_cases=((2, 4),),
    d_model=4,
    train_model="ZigMa-S/2",
    train_overrides=(("hidden_size", 4), ("depth", 2)),
    train_cases=((8, 2),),
    num_classes=10,
    warmup=0,
    reps=1,
    train_reps=1,
    chunked_scan_reps=1,
    chunked_train_reps=1,
    fwd_tiles=({}, {"fwd_lanes": 1}, {"chunk": 8}),
    bwd_tiles=({}, {"bwd_lanes": 1}, {"chunk": 8}),
    copy_mb=1,
)
# Interpreter-sized tiles for --smoke: the interpreter runs the programs one after another.
SMOKE_CONFIG = {"group": 4, "fwd_lanes": 2, "bwd_lanes": 2, "fwd_block_d": 8, "bwd_block_d": 8}


# -- harness ----------------------------------------------------------------------------------


class Context(Bench):
    """A ``Bench`` plus what the sections share: the sizes, the env section's ceilings
    (``env["copy_bandwidth"]``, ``env["sfu_rate"]``) and how long the last chunked training
    case took."""

    def __init__(self, sizes: Sizes, device: torch.device, budget_s: float) -> None:
        super().__init__(device, sizes.warmup, sizes.reps, budget_s, sizes.flush_mb)
        self.sizes = sizes
        self.env: dict = {}
        self.chunked_train_s = 40.0  # a guess until a chunked training case has run
        self.commit: str | None = None  # --commit


def zigzag(side: int, device: torch.device) -> torch.Tensor:
    """A zigzag order of a side x side grid (ZigMa's second path, S1), int64 ``[L]``."""
    return scan_orders("zigzag", side, side)[1].to(device)


@contextlib.contextmanager
def scan_config(**overrides) -> Iterator[None]:
    """Run the Triton scan with ``overrides`` of its module-level ``CONFIG``, then restore."""
    from zigma.ssm.ops import triton_scan

    saved = triton_scan.CONFIG
    triton_scan.CONFIG = dataclasses.replace(saved, **overrides)
    try:
        yield
    finally:
        triton_scan.CONFIG = saved


# -- scan inputs ------------------------------------------------------------------------------


def scan_inputs(sz: Sizes, batch: int, length: int, device, seed: int) -> dict[str, torch.Tensor]:
    """Token-layout scan arguments laid out as Mamba makes them: u and z the halves of one
    ``[batch, L, 2 dim]`` bf16 tensor, B and C views of one ``[batch, L, dt_rank + 2N]``; A in
    Mamba's S4D-real range, delta_bias from its dt init (long memories, the harder case). All
    require grad (u, z, B and C through their bases)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dim, n, r = sz.dim, sz.d_state, sz.dt_rank

    def randn(*shape, scale=1.0, dtype=torch.bfloat16):
        t = torch.randn(*shape, generator=g, device=device) * scale
        return t.to(dtype).requires_grad_()

    def uniform(*shape):
        return torch.rand(*shape, generator=g, device=device)

    xz = randn(batch, length, 2 * dim)
    x_dbl = randn(batch, length, r + 2 * n)
    dt = torch.exp(uniform(dim) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": xz[..., :dim],
        "delta": randn(batch, length, dim, scale=0.5),
        "A": (-torch.exp(uniform(dim, n) * math.log(n))).requires_grad_(),  # -1 .. -N
        "B": x_dbl[..., r : r + n],
        "C": x_dbl[..., r + n :],
        "D": randn(dim, dtype=torch.float32),
        "z": xz[..., dim:],
        "delta_bias": (dt + torch.log(-torch.expm1(-dt))).requires_grad_(),  # softplus^-1(dt)
    }


def run_triton_scan(x: dict, order: torch.Tensor | None, last: bool = False):
    from zigma.ssm.ops.triton_scan import selective_scan_tokens

    args = [x[k] for k in NAMES]
    return selective_scan_tokens(*args, delta_softplus=True, order=order, return_last_state=last)


def run_reference_scan(x: dict, order: torch.Tensor | None, last: bool = False):
    """Gather into scan order, the chunked PyTorch scan on ``[batch, dim, L]``, scatter."""
    args = [x[k] for k in NAMES]
    return selective_scan_tokens_ref(
        *args, delta_softplus=True, order=order, return_last_state=last, backend="chunked"
    )


def bdl_leaves(x: dict) -> dict[str, torch.Tensor]:
    """Contiguous ``[batch, *, L]`` leaf copies of token-layout inputs (the chunked layout)."""
    out = {}
    for k, v in x.items():
        v = v.detach().transpose(1, 2) if v.dim() == 3 else v.detach()
        out[k] = v.contiguous().requires_grad_()
    return out


def backward_fn(y: torch.Tensor, inputs: list[torch.Tensor]) -> Callable[[], tuple]:
    """A repeatable backward pass of ``y`` (its graph kept) into ``inputs``."""
    dy = torch.randn_like(y)
    return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)


# -- env --------------------------------------------------------------------------------------


def section_env(ctx: Context) -> dict:
    import triton

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": ctx.commit or git_commit(REPO) or "unknown (no git metadata)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        sms = props.multi_processor_count
        info.update(gpu=props.name, sms=sms, memory_gib=round(props.total_memory / 2**30, 1))
        info["cuda"] = torch.version.cuda
        clock, source = sm_clock_hz()
        if clock:
            info["sfu_rate"] = SFU_PER_CLOCK_PER_SM * sms * clock
            info["sfu_note"] = (
                f"{SFU_PER_CLOCK_PER_SM}/clk/SM x {sms} SMs x {clock / 1e9:.2f} GHz ({source}; "
                "a lower clock under load would raise the SFU floor)"
            )
        else:
            info["sfu_rate"] = H100_SFU_RATE * sms / 132
            info["sfu_note"] = f"3.9e12/s (H100 SXM) x {sms}/132 SMs ({source})"
    else:
        info.update(gpu="CPU: smoke run, times mean nothing", sms=None, cuda=None)
        info.update(sfu_rate=H100_SFU_RATE, sfu_note="3.9e12/s, the H100 SXM figure")
    info["copy_bandwidth"] = copy_bandwidth(ctx, ctx.sizes.copy_mb)
    ctx.env.update(info)
    line = (
        f"{info['gpu']} | torch {info['torch']} | triton {info['triton']} | {info['date']} | "
        f"commit {info['commit']} | copy {info['copy_bandwidth'] / 1e12:.2f} TB/s (read + "
        f"write) | SFU {info['sfu_rate'] / 1e12:.2f} T/s = {info['sfu_note']}"
    )
    return {"info": info, "notes": [line]}


# -- check ------------------------------------------------------------------------------------


def check_rows(case: str, errors: dict[str, float], tol: float) -> list[dict]:
    return [
        {"case": case, "output": k, "rel_err": e, "tol": tol, "ok": e <= tol}
        for k, e in errors.items()
    ]


def scan_outputs(run: Callable, x: dict, seed: int) -> dict[str, torch.Tensor]:
    """y, last state and the gradient of every input for seeded cotangents."""
    y, last = run(x)
    g = torch.Generator(device=y.device).manual_seed(seed)
    dy = torch.randn(y.shape, generator=g, device=y.device)
    dlast = torch.randn(last.shape, generator=g, device=y.device)
    loss = (y.float() * dy).sum() + (last * dlast).sum()
    grads = torch.autograd.grad(loss, [x[k] for k in NAMES])
    return {"y": y, "last_state": last, **{f"d{k}": g for k, g in zip(NAMES, grads, strict=True)}}


def check_scan(ctx: Context) -> list[dict]:
    """Triton (bf16 inputs, zigzag) against the chunked scan on fp32 copies of the same
    inputs: y, last state and every gradient."""
    sz = ctx.sizes
    length = sz.check_side**2
    order = zigzag(sz.check_side, ctx.device)
    x = scan_inputs(sz, sz.check_batch, length, ctx.device, seed=1)
    x32 = {k: v.detach().float().requires_grad_() for k, v in x.items()}
    got = scan_outputs(lambda t: run_triton_scan(t, order, last=True), x, seed=2)
    want = scan_outputs(lambda t: run_reference_scan(t, order, last=True), x32, seed=2)
    errors = {k: rel_err(got[k], want[k]) for k in got}
    return check_rows(f"scan B={sz.check_batch} D={sz.dim} L={length} zigzag", errors, TOL["scan"])


def check_conv(ctx: Context) -> list[dict]:
    """Triton conv (bf16, zigzag) against the reference on fp32 copies: y and every grad."""
    from zigma.ssm.ops.triton_conv import causal_conv1d_tokens

    sz = ctx.sizes
    length = sz.check_side**2
    order = zigzag(sz.check_side, ctx.device)
    x, weight, bias = conv_inputs(sz, sz.check_batch, length, ctx.device)
    outs = []
    for conv, dtype in ((causal_conv1d_tokens, None), (causal_conv1d_tokens_ref, torch.float32)):
        leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, weight, bias)]
        y = conv(*leaves, order, "silu")
        g = torch.Generator(device=ctx.device).manual_seed(3)
        dy = torch.randn(y.shape, generator=g, device=ctx.device)
        grads = torch.autograd.grad((y.float() * dy).sum(), leaves)
        outs.append(dict(zip(("y", "dx", "dweight", "dbias"), (y, *grads), strict=True)))
    errors = {k: rel_err(outs[0][k], outs[1][k]) for k in outs[0]}
    case = f"conv B={sz.check_batch} D={sz.dim} L={length} W={sz.conv_width} zigzag"
    return check_rows(case, errors, TOL["conv"])


def mamba_outputs(layer: Mamba, x: torch.Tensor, dy: torch.Tensor, order) -> dict:
    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = layer(x, order=order)
    (y.float() * dy).sum().backward()
    return {"y": y, "dx": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


def check_mamba(ctx: Context) -> list[dict]:
    """A Mamba layer with backend "triton" vs "chunked" (same weights, bf16 autocast, zigzag
    order): output, input grad and the worst parameter grad; one- and two-directional."""
    sz = ctx.sizes
    length = sz.check_side**2
    order = zigzag(sz.check_side, ctx.device)
    rows = []
    for bidirectional in (False, True):
        torch.manual_seed(4)
        kw = {"bidirectional": bidirectional, "device": ctx.device}
        fast = Mamba(sz.d_model, sz.d_state, backend="triton", **kw)
        ref = Mamba(sz.d_model, sz.d_state, backend="chunked", **kw)
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(sz.check_batch, length, sz.d_model, device=ctx.device)
        dy = torch.randn_like(x)
        got, want = mamba_outputs(fast, x, dy, order), mamba_outputs(ref, x, dy, order)
        errors = {k: rel_err(got[k], want[k]) for k in got}
        params = {k: e for k, e in errors.items() if k not in ("y", "dx")}
        worst = max(params, key=params.get)
        errors = {"y": errors["y"], "dx": errors["dx"], f"grads (worst: {worst})": params[worst]}
        case = f"Mamba d_model={sz.d_model} B={sz.check_batch} L={length} bidir={bidirectional}"
        rows += check_rows(case, errors, TOL["mamba"])
        del fast, ref, got, want
        free_memory()
    return rows


def section_check(ctx: Context) -> dict:
    rows = []
    for name, check in (("scan", check_scan), ("conv", check_conv), ("mamba", check_mamba)):
        try:
            rows += check(ctx)
        except Exception as exc:  # a check that cannot run counts as failed
            rows.append({"case": name, "output": "", "error": error_text(exc), "ok": False})
        free_memory()
    failures = [f"{r['case']} {r['output']}".strip() for r in rows if not r["ok"]]
    return {"rows": rows, "failures": failures}


# -- scan -------------------------------------------------------------------------------------


def floors(ctx: Context, batch: int, length: int) -> dict[str, float]:
    """HBM and SFU floors (ms) of one scan (see the floor comment at the top)."""
    sz, bw, sfu = ctx.sizes, ctx.env["copy_bandwidth"], ctx.env["sfu_rate"]
    e = batch * sz.dim * length
    out = {
        "hbm_fwd": (8 * e + 8 * batch * sz.d_state * length) / bw * 1e3,
        "hbm_bwd": 14 * e / bw * 1e3,
        "sfu_fwd": e * (sz.d_state + 4) / sfu * 1e3,
        "sfu_bwd": e * (sz.d_state + 6) / sfu * 1e3,
    }
    out["fwd"] = max(out["hbm_fwd"], out["sfu_fwd"])
    out["bwd"] = max(out["hbm_bwd"], out["sfu_bwd"])
    return out


def time_scan(ctx: Context, forward: Callable, inputs: list, row: dict, **repeats) -> None:
    """Into ``row``, in ms: the forward without grad (``fwd``), the forward that saves for
    backward (``fwd_train``), the backward alone (``bwd``) and ``fwd_bwd`` = the last two.
    ``repeats``: ``reps`` and ``warmup`` for ``Context.time_ms``."""
    with ctx.peak_memory(row):
        with torch.no_grad():
            row["fwd"] = ctx.time_ms(forward, **repeats)
        row["fwd_train"] = ctx.time_ms(forward, **repeats)
        row["bwd"] = ctx.time_ms(backward_fn(forward(), inputs), **repeats)
    row["fwd_bwd"] = row["fwd_train"] + row["bwd"]


def scan_case(ctx: Context, impl: str, x: dict, order: torch.Tensor, row: dict) -> None:
    if impl == "chunked":
        leaves = bdl_leaves(x)  # no order: the chunked scan's work is the same for any
        xc = [leaves[k] for k in NAMES]

        def forward():
            return selective_scan_chunked(*xc, delta_softplus=True)

        time_scan(ctx, forward, xc, row, reps=ctx.sizes.chunked_scan_reps, warmup=1)
    else:
        o = order if impl == "triton zigzag" else None
        time_scan(ctx, lambda: run_triton_scan(x, o), [x[k] for k in NAMES], row)


def section_scan(ctx: Context) -> dict:
    sz = ctx.sizes
    rows, chunked = [], None  # chunked: (B L, seconds) of the last chunked case
    for batch, side in ((b, s) for b in sz.batches for s in sz.sides):
        length = side * side
        x = scan_inputs(sz, batch, length, ctx.device, seed=side)
        order = zigzag(side, ctx.device)
        for impl in ("chunked", "triton", "triton zigzag"):
            row = {"B": batch, "L": length, "impl": impl}
            rows.append(row)
            # The chunked scan is linear in B L: predict this case from the last one.
            guess = None if chunked is None else chunked[1] * batch * length / chunked[0]
            if impl == "chunked" and guess and guess > min(sz.chunked_budget_s, ctx.left() / 3):
                row["error"] = f"skipped: predicted {guess:.0f} s"
                continue
            t0 = time.monotonic()
            try:
                scan_case(ctx, impl, x, order, row)
            except Exception as exc:  # one case fails, the table goes on
                row["error"] = error_text(exc)
            if impl == "chunked":
                chunked = (batch * length, time.monotonic() - t0)
            free_memory()
        del x
    notes = [
        f"D={sz.dim}, N={sz.d_state}, bf16 u, delta, z, B, C (views as in Mamba), "
        "zigzag order of a square grid; median of CUDA-event times, L2 flushed before each call.",
        "fwd: no grad (writes y only, as the floor counts); fwd (saving): the training forward, "
        "which also writes fp32 checkpoints (4E B) and the pre-gate output (2E B); bwd: the "
        "backward alone; fwd+bwd = fwd (saving) + bwd. zz = Triton with the zigzag order.",
        "chunked: the PyTorch scan on contiguous [batch, dim, L] inputs, without the gather and "
        "scatter a model adds around it, so chunked/zz is conservative.",
        f"Floors (ms): HBM at the measured copy rate, SFU at {ctx.env['sfu_rate']:.3g}/s; a "
        "kernel's floor is the larger. Targets: fwd <= 1.5x floor, and at L=4096 "
        "fwd <= 0.4 ms and bwd <= 0.65 ms; fwd+bwd >= 30x chunked.",
    ]
    return {"rows": rows, "summary": scan_summary(ctx, rows), "notes": notes}


def scan_summary(ctx: Context, rows: list[dict]) -> list[dict]:
    """Per batch and length: floors, Triton/floor, the issue's targets, chunked/Triton,
    zigzag/none."""
    out = []
    for batch, length in dict.fromkeys((r["B"], r["L"]) for r in rows):
        by = {r["impl"]: r for r in rows if (r["B"], r["L"]) == (batch, length)}
        zz, none, ch = by["triton zigzag"], by["triton"], by["chunked"]
        fl = floors(ctx, batch, length)
        s = {"B": batch, "L": length, **{f"floor_{k}": v for k, v in fl.items()}}
        s["fwd_over_floor"] = ratio(zz.get("fwd"), fl["fwd"])
        s["fwd_train_over_floor"] = ratio(zz.get("fwd_train"), fl["fwd"])
        s["bwd_over_floor"] = ratio(zz.get("bwd"), fl["bwd"])
        s["chunked_over_triton"] = ratio(ch.get("fwd_bwd"), zz.get("fwd_bwd"))
        s["zigzag_over_none"] = ratio(zz.get("fwd_bwd"), none.get("fwd_bwd"))
        r = s["fwd_over_floor"]
        s["target_fwd_floor"] = verdict(None if r is None else r <= TARGET_FWD_OVER_FLOOR)
        if (batch, length, ctx.sizes.dim) == (8, 4096, 1536) and "fwd" in zz and "bwd" in zz:
            s["target_fwd_ms"] = verdict(zz["fwd"] <= TARGET_FWD_MS_4096)
            s["target_bwd_ms"] = verdict(zz["bwd"] <= TARGET_BWD_MS_4096)
        r = s["chunked_over_triton"]
        s["target_chunked"] = verdict(None if r is None else r >= TARGET_CHUNKED_OVER_TRITON)
        out.append(s)
    return out


# -- conv -------------------------------------------------------------------------------------


def conv_inputs(sz: Sizes, batch: int, length: int, device):
    """x as the first half of a ``[batch, L, 2 dim]`` bf16 tensor (Mamba's xz), the weight
    ``[dim, width]`` and bias ``[dim]``, bf16, all requiring grad."""
    g = torch.Generator(device=device).manual_seed(length)
    xz = torch.randn(batch, length, 2 * sz.dim, generator=g, device=device)
    weight = torch.randn(sz.dim, sz.conv_width, generator=g, device=device) / sz.conv_width
    bias = torch.randn(sz.dim, generator=g, device=device)
    xz, weight, bias = (t.bfloat16().requires_grad_() for t in (xz, weight, bias))
    return xz[..., : sz.dim], weight, bias


def torch_conv_tokens(x, weight, bias, order, inverse):
    """The gather path's conv: gather into scan order, depthwise F.conv1d with left padding,
    SiLU, scatter back to token order."""
    xs = x if order is None else x[:, order]  # [b, L, d] scan order
    xs = F.pad(xs.transpose(1, 2), (weight.shape[1] - 1, 0))  # [b, d, W - 1 + L]
    y = F.silu(F.conv1d(xs, weight.unsqueeze(1), bias, groups=x.shape[2])).transpose(1, 2)
    return y if inverse is None else y[:, inverse]


def conv_fn(impl: str, x, weight, bias, order, inverse) -> Callable[[], torch.Tensor]:
    from zigma.ssm.ops.triton_conv import causal_conv1d_tokens

    if impl == "triton":
        return lambda: causal_conv1d_tokens(x, weight, bias, order, "silu")
    return lambda: torch_conv_tokens(x, weight, bias, order, inverse)


def section_conv(ctx: Context) -> dict:
    sz = ctx.sizes
    length = sz.conv_side**2
    x, weight, bias = conv_inputs(sz, sz.batch, length, ctx.device)
    order = zigzag(sz.conv_side, ctx.device)
    inverse = torch.argsort(order)
    # Bytes: forward reads x and writes y; backward reads x and dy and writes dx.
    e, bw = sz.batch * sz.dim * length, ctx.env["copy_bandwidth"]
    floor = {"floor_fwd": 4 * e / bw * 1e3, "floor_fwd_bwd": 10 * e / bw * 1e3}
    rows = []
    for impl, ordered in (("triton", False), ("triton", True), ("torch", False), ("torch", True)):
        row = {"impl": impl, "order": "zigzag" if ordered else "none", **floor}
        rows.append(row)
        fn = conv_fn(impl, x, weight, bias, *((order, inverse) if ordered else (None, None)))
        try:
            with ctx.peak_memory(row):
                with torch.no_grad():
                    row["fwd"] = ctx.time_ms(fn)
                backward = backward_fn(fn(), [x, weight, bias])
                row["fwd_bwd"] = ctx.time_ms(lambda fn=fn, backward=backward: (fn(), backward()))
        except Exception as exc:  # one case fails, the table goes on
            row["error"] = error_text(exc)
        free_memory()
    for row in rows:
        twin = next(r for r in rows if r["impl"] == "torch" and r["order"] == row["order"])
        row["torch_over_this_fwd"] = ratio(twin.get("fwd"), row.get("fwd"))
        row["torch_over_this_fwd_bwd"] = ratio(twin.get("fwd_bwd"), row.get("fwd_bwd"))
    note = (
        f"B={sz.batch}, L={length}, dim={sz.dim}, width {sz.conv_width}, bf16, SiLU, x a view of "
        "[B, L, 2 dim]; fwd+bwd times a forward and the backward of a kept graph. torch: gather "
        "+ F.conv1d + SiLU + scatter ('none': F.conv1d + SiLU alone). Floors: 4E B forward, "
        "10E B forward + backward, at the copy rate."
    )
    return {"rows": rows, "notes": [note]}


# -- train ------------------------------------------------------------------------------------


def train_step_fn(ctx: Context, model, opt, side: int, batch: int) -> Callable[[], None]:
    """One AdamW step of the linear-path velocity loss under bf16 autocast, fixed latents."""
    g = torch.Generator(device=ctx.device).manual_seed(side)
    x = torch.randn(batch, model.config.in_channels, side, side, generator=g, device=ctx.device)
    labels = torch.randint(0, ctx.sizes.num_classes, (batch,), generator=g, device=ctx.device)
    transport = TransportConfig()

    def step() -> None:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            loss = training_loss(model, x, transport, model_kwargs={"y": labels}).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_rows(ctx: Context, side: int, batch: int, scan: str, reserve_s: float) -> list[dict]:
    """ms per step of one model on the triton backend, then on chunked unless fewer than
    ``reserve_s`` seconds would be left after it."""
    sz = ctx.sizes
    overrides = dict(sz.train_overrides, scan=scan, num_classes=sz.num_classes)
    model = create_model(sz.train_model, input_size=(side, side), **overrides).to(ctx.device)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4, fused=ctx.cuda)
    step = train_step_fn(ctx, model, opt, side, batch)
    tokens = (side // model.config.patch_size) ** 2
    rows = []
    for backend in ("triton", "chunked"):
        row = {"side": side, "tokens": tokens, "batch": batch, "scan": scan, "backend": backend}
        rows.append(row)
        # A chunked ZigMa-B step takes seconds (~0.5 s a layer at 16K tokens, BENCHMARKS.md):
        # a few repeats, no warm-up (the triton steps warmed everything but the scan) and a
        # guess from the last chunked case of how long it will take.
        reps, warmup = (sz.train_reps, None) if backend == "triton" else (sz.chunked_train_reps, 0)
        if backend == "chunked" and ctx.left() < ctx.chunked_train_s + reserve_s:
            row["error"] = f"skipped: out of time (~{ctx.chunked_train_s:.0f} s needed)"
            continue
        model.set_scan_backend(backend)
        t0 = time.monotonic()
        try:
            with ctx.peak_memory(row):
                row["ms"] = ctx.time_ms(step, reps=reps, warmup=warmup)
            row["img_per_s"] = batch / row["ms"] * 1e3
        except Exception as exc:  # e.g. out of memory at one size
            row["error"] = error_text(exc)
        if backend == "chunked":
            ctx.chunked_train_s = time.monotonic() - t0
        opt.zero_grad(set_to_none=True)
        free_memory()
    return rows


def section_train(ctx: Context) -> dict:
    sz = ctx.sizes
    cases = [(side, batch, scan) for side, batch in sz.train_cases for scan in ("zigzag", "sweep")]
    rows = []
    for i, case in enumerate(cases):
        # Chunked steps are the optional part: keep ~15 s for each remaining triton case.
        rows += train_rows(ctx, *case, reserve_s=15.0 * (len(cases) - i - 1))
        free_memory()
    summary = []
    for side, batch in sz.train_cases:
        for backend in ("triton", "chunked"):
            by = {r["scan"]: r for r in rows if (r["side"], r["backend"]) == (side, backend)}
            zz, sw = by["zigzag"], by["sweep"]
            r = ratio(zz.get("ms"), sw.get("ms"))
            summary.append({
                "side": side, "tokens": zz["tokens"], "batch": batch, "backend": backend,
                "zigzag_ms": zz.get("ms"), "sweep_ms": sw.get("ms"), "zigzag_over_sweep": r,
                "target": verdict(None if r is None else r <= TARGET_ZIGZAG_OVER_SWEEP),
            })  # fmt: skip
    for s in summary:
        chunked = next(c for c in summary if (c["side"], c["backend"]) == (s["side"], "chunked"))
        s["chunked_over_this"] = ratio(chunked["zigzag_ms"], s["zigzag_ms"])
    note = (
        f"{sz.train_model}, {sz.num_classes} classes, linear-path velocity loss, bf16 autocast, "
        "fused AdamW, fp32 weights; zigzag: 8 orders (layer i takes order i mod 8); sweep: "
        f"raster order. ms per step, median of {sz.train_reps} (chunked: {sz.chunked_train_reps}). "
        f"Target zigzag/sweep <= {TARGET_ZIGZAG_OVER_SWEEP}."
    )
    return {"rows": rows, "summary": summary, "notes": [note]}


# -- tiles ------------------------------------------------------------------------------------


def describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def tile_row(ctx: Context, kind: str, overrides: dict, make_run: Callable, want) -> tuple:
    """Time one candidate; compare its outputs with the base config's (``want``, if any).

    Returns:
        The table row and the candidate's outputs (``None`` if it failed).
    """
    row = {"pass": kind, "config": describe(overrides), "overrides": overrides}
    try:
        with scan_config(**overrides), ctx.peak_memory(row):
            run = make_run()  # under the candidate config (the backward graph, too)
            got = run()
            if want is not None:
                row["rel_err"] = max(rel_err(a, b) for a, b in zip(got, want, strict=True))
                row["ok"] = row["rel_err"] <= TOL["tiles"]
            row["ms"] = ctx.time_ms(run)
        return row, got
    except Exception as exc:  # a candidate that fails to build is recorded, not fatal
        row["error"] = error_text(exc)
        return row, None


def tile_case(ctx: Context, batch: int, side: int) -> tuple[list[dict], list[str], dict]:
    """Every tile candidate at one size: rows, failures and the best overrides per pass."""
    sz = ctx.sizes
    length = side * side
    x = scan_inputs(sz, batch, length, ctx.device, seed=7)
    order = zigzag(side, ctx.device)
    inputs = [x[k] for k in NAMES]

    def make_forward():
        def forward():
            with torch.no_grad():
                return (run_triton_scan(x, order),)

        return forward

    def make_backward():
        return backward_fn(run_triton_scan(x, order), inputs)

    rows, failures = [], []
    for kind, candidates, make_run in (
        ("fwd", sz.fwd_tiles, make_forward),
        ("bwd", sz.bwd_tiles, make_backward),
    ):
        want = None
        for i, overrides in enumerate(candidates):
            if i and ctx.left() < 30:
                rows.append({"pass": kind, "config": describe(overrides), "error": "skipped: time"})
                continue
            torch.manual_seed(8)  # the same dy for every backward candidate
            row, got = tile_row(ctx, kind, overrides, make_run, want)
            rows.append(row)
            want = got if i == 0 else want
            if row.get("ok") is False:
                where = f"tiles B={batch} L={length} {kind} {row['config']}"
                failures.append(f"{where}: rel err {row['rel_err']:.2e}")
            free_memory()
    best = {}
    for kind in ("fwd", "bwd"):
        # Only candidates checked against the base (and the base itself) can be the best.
        timed = [r for r in rows if r["pass"] == kind and "ms" in r]
        timed = [r for r in timed if r.get("ok", r["config"] == "default")]
        base = next((r for r in timed if r["config"] == "default"), None)
        for r in timed:
            r["speedup"] = ratio(base["ms"], r["ms"]) if base else None
        if timed:
            best[kind] = describe(min(timed, key=lambda r: r["ms"])["overrides"])
    for r in rows:
        r.update(B=batch, L=length)
    return rows, failures, best


def kernel_resources() -> list[str]:
    """Registers and spills of every compiled variant of the scan kernels (none under the
    interpreter). Reads Triton's kernel cache, an internal: a failure only loses the note."""
    from zigma.ssm.ops import _triton_scan_kernels as k

    lines = []
    for name in ("_scan_fwd_kernel", "_scan_bwd_local_kernel", "_scan_bwd_kernel"):
        try:
            caches = getattr(k, name).device_caches.values()
            seen = sorted({
                (c.metadata.num_warps, c.n_regs, c.n_spills)
                for cache in caches for c in cache[0].values()
            })  # fmt: skip
        except Exception as exc:  # a lost note, never a failure
            lines.append(f"{name}: resources unknown ({error_text(exc)})")
            continue
        if seen:
            text = ", ".join(f"{w} warps: {r} regs, {sp} spills" for w, r, sp in seen)
            lines.append(f"{name} variants: {text}")
    return lines


def section_tiles(ctx: Context) -> dict:
    from zigma.ssm.ops import triton_scan

    rows, failures, notes = [], [], []
    for batch, side in ctx.sizes.tile_cases:
        case_rows, case_failures, best = tile_case(ctx, batch, side)
        rows += case_rows
        failures += case_failures
        notes.append(f"Best at B={batch}, L={side * side}: " + "; ".join(
            f"{kind} {b}" for kind, b in best.items()))  # fmt: skip
    notes += kernel_resources()
    notes.insert(
        0,
        f"D={ctx.sizes.dim}, zigzag; overrides of the base {triton_scan.CONFIG}. fwd: the "
        "forward without grad; bwd: the backward alone. Outputs are compared with the base's.",
    )
    return {"rows": rows, "failures": failures, "notes": notes}


# -- report -----------------------------------------------------------------------------------


MS, X = ".3f", ".2f"
# Per section: (key of its row list, columns).
TABLES = {
    "check": [
        ("rows", [("case", "case", ""), ("output", "output", ""),
                  ("rel_err", "max rel err", ".2e"), ("tol", "tol", ".0e"), ("ok", "ok", "")]),
    ],
    "scan": [
        ("rows", [("B", "B", ""), ("L", "L", ""), ("impl", "impl", ""), ("fwd", "fwd ms", MS),
                  ("fwd_train", "fwd (saving) ms", MS), ("bwd", "bwd ms", MS),
                  ("fwd_bwd", "fwd+bwd ms", MS), ("peak_mb", "peak MB", ".0f"),
                  ("extra_mb", "extra MB", ".0f")]),
        ("summary", [("B", "B", ""), ("L", "L", ""), ("floor_hbm_fwd", "HBM fwd", MS),
                     ("floor_sfu_fwd", "SFU fwd", MS), ("floor_hbm_bwd", "HBM bwd", MS),
                     ("floor_sfu_bwd", "SFU bwd", MS), ("fwd_over_floor", "zz fwd/floor", X),
                     ("fwd_train_over_floor", "zz fwd (saving)/floor", X),
                     ("bwd_over_floor", "zz bwd/floor", X),
                     ("target_fwd_floor", "fwd <= 1.5x", ""),
                     ("target_fwd_ms", "fwd <= 0.4 ms", ""),
                     ("target_bwd_ms", "bwd <= 0.65 ms", ""),
                     ("chunked_over_triton", "chunked/zz fwd+bwd", ".1f"),
                     ("target_chunked", ">= 30x", ""),
                     ("zigzag_over_none", "zz/none fwd+bwd", X)]),
    ],
    "conv": [
        ("rows", [("impl", "impl", ""), ("order", "order", ""), ("fwd", "fwd ms", MS),
                  ("fwd_bwd", "fwd+bwd ms", MS), ("floor_fwd", "floor fwd", MS),
                  ("floor_fwd_bwd", "floor fwd+bwd", MS),
                  ("torch_over_this_fwd", "torch/this fwd", X),
                  ("torch_over_this_fwd_bwd", "torch/this fwd+bwd", X),
                  ("peak_mb", "peak MB", ".0f")]),
    ],
    "train": [
        ("rows", [("tokens", "tokens", ""), ("batch", "batch", ""), ("scan", "scan", ""),
                  ("backend", "backend", ""), ("ms", "ms/step", ".1f"),
                  ("img_per_s", "img/s", ".0f"), ("peak_mb", "peak MB", ".0f")]),
        ("summary", [("tokens", "tokens", ""), ("batch", "batch", ""),
                     ("backend", "backend", ""), ("zigzag_ms", "zigzag ms", ".1f"),
                     ("sweep_ms", "sweep ms", ".1f"), ("zigzag_over_sweep", "zigzag/sweep", ".3f"),
                     ("target", "<= 1.03", ""), ("chunked_over_this", "chunked/this zigzag", X)]),
    ],
    "tiles": [
        ("rows", [("B", "B", ""), ("L", "L", ""), ("pass", "pass", ""),
                  ("config", "overrides", ""), ("ms", "ms", MS),
                  ("speedup", "vs default", X), ("rel_err", "rel err vs default", ".1e"),
                  ("ok", "ok", ""), ("peak_mb", "peak MB", ".0f")]),
    ],
}  # fmt: skip
TITLES = {
    "env": "Environment",
    "check": "Correctness: Triton vs the PyTorch paths",
    "scan": "Selective scan",
    "conv": "Causal conv",
    "train": "Training step",
    "tiles": "ScanConfig sweep",
}


def render(name: str, data: dict) -> str:
    parts = [f"## {TITLES[name]}"]
    if "error" in data:
        parts.append(f"Section failed: {data['error']}")
    for key, columns in TABLES.get(name, []):
        if data.get(key):
            parts.append(md_table(data[key], columns))
    parts += [f"- {note}" for note in data.get("notes", [])]
    parts += [f"- FAILED: {failure}" for failure in data.get("failures", [])]
    return "\n\n".join(parts)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Check and time the Triton scan and conv.")
    p.add_argument("--out", type=Path, required=True, help="folder for scan.json and scan.md")
    p.add_argument("--quick", action="store_true", help="fewer repeats and tile candidates")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, Triton interpreter")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (env always runs)",
    )
    p.add_argument("--commit", help="commit to report where the tree has no git metadata")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="soft limit in seconds: optional cases (chunked scan at large L, chunked training "
        "steps, tile candidates) are skipped when it nears",
    )
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    return args


def setup(args: argparse.Namespace) -> Context:
    """Sizes and device. --smoke selects the Triton interpreter before anything imports
    triton (the kernels' modules read TRITON_INTERPRET when they are imported)."""
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
        from zigma.ssm.ops import triton_scan

        triton_scan.CONFIG = triton_scan.ScanConfig(**SMOKE_CONFIG)
        ctx = Context(SMOKE, torch.device("cpu"), args.budget_s)
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/scan.py needs a CUDA device (or --smoke, on CPU)")
    else:
        ctx = Context(QUICK if args.quick else FULL, torch.device("cuda"), args.budget_s)
    ctx.commit = args.commit
    return ctx


def run_section(name: str, ctx: Context) -> dict:
    runners = {
        "env": section_env,
        "check": section_check,
        "scan": section_scan,
        "conv": section_conv,
        "train": section_train,
        "tiles": section_tiles,
    }
    t0 = time.monotonic()
    print(f"== {name} ...", flush=True)
    try:
        data = runners[name](ctx)
    except Exception as exc:  # the other sections still run
        data = {"error": error_text(exc)}
    data["seconds"] = round(time.monotonic() - t0, 1)
    free_memory()
    return data


def conclude(report: dict, start: float) -> int:
    """Fill in the verdict of the sections run so far; returns the exit status."""
    ran = [n for n in SECTIONS if n in report]
    report["errors"] = {n: report[n]["error"] for n in ran if "error" in report[n]}
    report["failures"] = [f for n in ran for f in report[n].get("failures", [])]
    report["ok"] = not report["failures"] and "check" not in report["errors"]
    report["exit_code"] = 1 if not report["ok"] else (2 if report["errors"] else 0)
    report["seconds"] = round(time.monotonic() - start, 1)
    return report["exit_code"]


def write(out: Path, report: dict, texts: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scan.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "scan.md").write_text("\n\n".join(texts) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    ctx = setup(args)
    report = {
        "args": {"quick": args.quick, "smoke": args.smoke, "sections": args.sections},
        "sizes": dataclasses.asdict(ctx.sizes),
    }
    texts = ["# benchmarks/scan.py"]
    for name in SECTIONS:
        if name == "env" or name in args.sections:
            report[name] = run_section(name, ctx)
            texts.append(render(name, report[name]))
            print(f"{texts[-1]}\n\n({name}: {report[name]['seconds']} s)\n", flush=True)
            conclude(report, start)
            write(args.out, report, texts)  # after every section: a killed run keeps its results
    code = conclude(report, start)
    write(args.out, report, texts)
    print("\n\n".join(texts), flush=True)  # again at the end: a log cut short keeps its tail
    print(f"\nok={report['ok']} exit={code} in {report['seconds']} s; "
          f"wrote {args.out}/scan.json and scan.md", flush=True)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
