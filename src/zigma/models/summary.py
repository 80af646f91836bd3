"""Counting a model: parameters, and FLOPs of one forward pass.

FLOPs are counted, not estimated: torch's FlopCounterMode counts matrix products, convolutions
and attention (2 FLOPs per multiply-add) and the selective scan adds its own analytic count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from zigma.ssm import BACKENDS, Mamba, count_scan_flops, register_backend

_COUNT_ONLY = "count-only"


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class FlopCount:
    matmul: int  # linear layers, convolutions and attention (QK^T and AV products)
    scan: int  # selective scans (zigma.ssm analytic count)

    @property
    def total(self) -> int:
        return self.matmul + self.scan


def _count_only_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    # Does no arithmetic: the scan's FLOPs are added analytically by count_scan_flops, and a real
    # backend's internal matmuls would otherwise be counted a second time by FlopCounterMode.
    y = torch.zeros_like(u)
    return (y, u.new_zeros(u.shape[0], u.shape[1], A.shape[1])) if return_last_state else y


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # [B, heads, L, E] queries against [B, heads, S, E] keys: QK^T and AV, 2 FLOPs per MAC
    b, h, l_q, e = query_shape
    s, e_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * l_q * s * (e + e_v)


def _flop_counter():
    # torch.utils.flop_counter imports triton when it is installed (torch >= 2.13): keep it
    # out of ``import zigma.models``.
    from torch.utils.flop_counter import FlopCounterMode

    # On CPU, scaled_dot_product_attention runs an op the counter does not know (torch 2.13
    # counts the CUDA flash/efficient/cuDNN kernels only), so attention would count as 0.
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {} if cpu_sdpa is None else {cpu_sdpa: _attention_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


@contextmanager
def _scans_counted_not_run(model: torch.nn.Module) -> Iterator[None]:
    register_backend(_COUNT_ONLY, _count_only_scan, lambda device: True, replace=True)
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    saved = [m.backend for m in mixers]
    for m in mixers:
        m.backend = _COUNT_ONLY
    try:
        yield
    finally:
        for m, backend in zip(mixers, saved, strict=True):
            m.backend = backend
        BACKENDS.pop(_COUNT_ONLY, None)


@torch.no_grad()
def count_flops(model: torch.nn.Module, batch_size: int = 1, input_size=None) -> FlopCount:
    """FLOPs of one forward pass at ``input_size`` (default: the model's configured size).

    Runs the forward once on zeros. DiT's papers report multiply-adds ("Gflops" = GMACs):
    divide ``matmul`` by two to compare with those tables.
    """
    cfg = model.config
    size = cfg.input_size if input_size is None else tuple(input_size)
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, cfg.in_channels, *size, device=device)
    t = torch.zeros(batch_size, device=device)
    cond = model.conditioner.example(batch_size, device)
    was_training = model.training
    model.eval()
    try:
        with (
            _scans_counted_not_run(model),
            _flop_counter() as counter,
            count_scan_flops() as scan,
        ):
            model(x, t, **cond)
    finally:
        model.train(was_training)
    return FlopCount(matmul=int(counter.get_total_flops()), scan=int(scan.flops))


def summarize(model: torch.nn.Module, name: str | None = None, flops: bool = True) -> str:
    """A short human-readable description of a model (used by ``zigma info``)."""
    cfg = model.config
    shape = cfg.grid_shape
    if cfg.uses_scan:  # a ZigMa (or one of its Mamba baselines)
        if cfg.scan_mode == "parallel":
            mixer = f" ({cfg.num_orders} orders in parallel in every layer)"
        elif cfg.is_video:
            mixer = f" ({cfg.num_orders} orders; layers {cfg.scan_pattern or 'sst'} repeated)"
        elif cfg.num_orders > 1:
            mixer = f" ({cfg.num_orders} orders, layer i uses order i mod {cfg.num_orders})"
        else:
            mixer = ""
        mixer = f"  scan             {cfg.scan}{mixer}"
    else:
        mixer = f"  attention        {cfg.num_heads} heads (scaled_dot_product_attention)"
        if cfg.is_video and getattr(cfg, "attn_pattern", None):
            mixer += f"; layers {cfg.attn_pattern} repeated"
    size = "x".join(map(str, (cfg.in_channels, *cfg.input_size)))
    grid = (
        f"{shape.frames}x{shape.height}x{shape.width}"
        if cfg.is_video
        else (f"{shape.height}x{shape.width}")
    )
    patch = f"{cfg.temporal_patch}x{cfg.patch_size}" if cfg.is_video else str(cfg.patch_size)
    lines = [
        f"{name or type(model).__name__}",
        f"  input            {size} -> {grid} = {shape.length} tokens (patch {patch})",
        f"  width x depth    {cfg.hidden_size} x {cfg.depth}",
        mixer,
        f"  positional emb.  {cfg.pos_embed}",
        f"  conditioning     {model.conditioner.describe()}",
        f"  parameters       {count_parameters(model) / 1e6:.2f} M",
    ]
    if flops:
        f = count_flops(model)
        lines.append(
            f"  forward GFLOPs   {f.total / 1e9:.2f} (matmul {f.matmul / 1e9:.2f}, "
            f"scan {f.scan / 1e9:.2f}) at batch 1"
        )
    return "\n".join(lines)
