"""Triton kernels of the Mamba gate ``g = scale * y * silu(z)`` and its backward, one pass each.

``mamba_branches`` gates the summed scan outputs once; done with PyTorch ops in fp32 this is a
dozen passes over ``[batch, L, dim]`` per layer (~20 ms of a ZigMa-B/2 step at 256 x 64), here
one read of ``y`` and ``z`` forward and one of ``dg``, ``y`` and ``z`` backward, in fp32
registers. Custom ops (``zigma::mamba_gate*``) so torch.compile traces them.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["gate", "gate_bwd"]

_BLOCK = 1024


@triton.jit
def _gate_fwd_kernel(y_ptr, z_ptr, g_ptr, dim, stride_y, stride_z, stride_g, scale,
                     BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < dim
    y = tl.load(y_ptr + row * stride_y + cols, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0).to(tl.float32)
    g = y * z * tl.sigmoid(z) * scale
    tl.store(g_ptr + row * stride_g + cols, g.to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gate_bwd_kernel(dg_ptr, y_ptr, z_ptr, dy_ptr, dz_ptr, g_ptr, dim, stride_dg, stride_y,
                     stride_z, stride_out, scale, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < dim
    dg = tl.load(dg_ptr + row * stride_dg + cols, mask=ok, other=0.0).to(tl.float32) * scale
    y = tl.load(y_ptr + row * stride_y + cols, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    silu = z * sig
    out = row * stride_out + cols
    tl.store(dy_ptr + out, (dg * silu).to(dy_ptr.dtype.element_ty), mask=ok)
    dz = dg * y * sig * (1.0 + z * (1.0 - sig))
    tl.store(dz_ptr + out, dz.to(dz_ptr.dtype.element_ty), mask=ok)
    tl.store(g_ptr + out, (y * silu * scale).to(g_ptr.dtype.element_ty), mask=ok)


def _on_device(y: torch.Tensor):
    """Launch on y's GPU whatever the current device."""
    return torch.cuda.device(y.device) if y.is_cuda else contextlib.nullcontext()


def _grid(y: torch.Tensor) -> tuple[int, int]:
    return y.shape[0] * y.shape[1], triton.cdiv(y.shape[2], _BLOCK)


def _rows(t: torch.Tensor) -> int:
    """The row stride of a ``[batch, L, dim]`` tensor whose rows are evenly spaced."""
    if t.stride(2) != 1 or t.stride(0) != t.shape[1] * t.stride(1):
        raise ValueError(f"gate inputs need evenly spaced unit-stride rows, got {t.stride()}")
    return t.stride(1)


@torch.library.custom_op("zigma::mamba_gate", mutates_args=())
def gate(y: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * y * silu(z)`` for ``[batch, L, dim]`` ``y`` and ``z`` (a view is fine), in
    y's dtype, computed in fp32."""
    g = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if g.numel():
        with _on_device(y):
            _gate_fwd_kernel[_grid(y)](
                y, z, g, y.shape[2], _rows(y), _rows(z), g.stride(1), scale, BLOCK=_BLOCK
            )
    return g


@gate.register_fake
def _(y, z, scale):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


@torch.library.custom_op("zigma::mamba_gate_bwd", mutates_args=())
def gate_bwd(
    dg: torch.Tensor, y: torch.Tensor, z: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dy, dz, g)`` of ``g = scale * y * silu(z)`` for the cotangent ``dg``; ``g`` comes
    along (the out_proj weight gradient needs it)."""
    dy, dz, g = (torch.empty(y.shape, dtype=y.dtype, device=y.device) for _ in range(3))
    if g.numel():
        with _on_device(y):
            _gate_bwd_kernel[_grid(y)](
                dg, y, z, dy, dz, g, y.shape[2], _rows(dg), _rows(y), _rows(z), g.stride(1),
                scale, BLOCK=_BLOCK,
            )  # fmt: skip
    return dy, dz, g


@gate_bwd.register_fake
def _(dg, y, z, scale):
    return tuple(torch.empty_like(y, memory_format=torch.contiguous_format) for _ in range(3))
