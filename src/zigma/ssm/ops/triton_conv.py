"""Triton causal depthwise conv1d in token layout, with the scan order folded into its indexing.

Mamba's short conv runs along the *scanned* sequence; instead of gathering the tokens into scan
order and scattering the result back (two full passes over ``[batch, L, dim]``), the kernels
read and write token rows through ``order`` directly. Forward and backward are
``torch.library`` custom ops (``zigma::causal_conv1d_tokens``), so torch.compile traces them.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from zigma.ssm.ops._checks import check_conv_tokens_args

__all__ = ["causal_conv1d_tokens"]


# -- kernels ----------------------------------------------------------------------------------
# Tiles are [BLOCK_L scan positions, BLOCK_D channels]; a row of a tile is one token's channels,
# contiguous in memory whatever the order, so every load and store is coalesced along D.


@triton.jit
def _rows(order_ptr, pos, ok, HAS_ORDER: tl.constexpr):
    """Token rows (int64) of the scan positions ``pos``; masked-off positions give row 0."""
    if HAS_ORDER:
        rows = tl.load(order_ptr + pos, mask=ok, other=0).to(tl.int64)
    else:
        rows = pos.to(tl.int64)
    return rows


@triton.jit
def _load_tile(ptr, rows, ok, d, d_ok, stride_l, stride_d, ACC: tl.constexpr):
    offs = rows[:, None] * stride_l + d[None, :].to(tl.int64) * stride_d
    return tl.load(ptr + offs, mask=ok[:, None] & d_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _preact(x_ptr, w_ptr, order_ptr, bias, t, t_ok, d, d_ok, length,
            stride_xl, stride_xd, stride_wd, stride_wk,
            WIDTH: tl.constexpr, HAS_ORDER: tl.constexpr, ACC: tl.constexpr,
            BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """Conv output before the activation at scan positions ``t``: bias + sum_j w_j x[t-W+1+j]."""
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC) + bias[None, :]
    for j in tl.static_range(WIDTH):
        s = t - (WIDTH - 1) + j
        s_ok = t_ok & (s >= 0)
        rows = _rows(order_ptr, s, s_ok, HAS_ORDER)
        s_ok = s_ok & (rows >= 0) & (rows < length)  # a bad order reads zeros, never out of bounds
        xj = _load_tile(x_ptr, rows, s_ok, d, d_ok, stride_xl, stride_xd, ACC)
        wj = tl.load(w_ptr + d * stride_wd + j * stride_wk, mask=d_ok, other=0.0).to(ACC)
        acc += xj * wj[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, order_ptr, out_ptr, length, dim,
                     stride_xb, stride_xl, stride_xd, stride_wd, stride_wk, stride_ob, stride_ol,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ORDER: tl.constexpr,
                     SILU: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    pid_l, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok, d_ok = t < length, d < dim
    x_ptr += pid_b.to(tl.int64) * stride_xb
    out_ptr += pid_b.to(tl.int64) * stride_ob

    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=d_ok, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], dtype=ACC)
    acc = _preact(x_ptr, w_ptr, order_ptr, bias, t, t_ok, d, d_ok, length,
                  stride_xl, stride_xd, stride_wd, stride_wk,
                  WIDTH, HAS_ORDER, ACC, BLOCK_L, BLOCK_D)  # fmt: skip
    if SILU:
        acc = acc * tl.sigmoid(acc)
    rows = _rows(order_ptr, t, t_ok, HAS_ORDER)
    ok = t_ok & (rows >= 0) & (rows < length)
    offs = rows[:, None] * stride_ol + d[None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok[:, None] & d_ok[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, order_ptr, dout_ptr, dx_ptr, dw_ptr, db_ptr,
                     length, dim, n_batch,
                     stride_xb, stride_xl, stride_xd, stride_wd, stride_wk,
                     stride_gb, stride_gl, stride_gd, stride_dxb, stride_dxl,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ORDER: tl.constexpr,
                     SILU: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                     TILES: tl.constexpr):  # fmt: skip
    """dx for TILES consecutive tiles of the scanned sequence, and their partial sums of
    dweight [dim, W] and dbias [dim] (one row of partials per (program along L, batch)).

    A tile computes g = dL/d(pre-activation) on BLOCK_L positions but owns only the first
    OWN = BLOCK_L - W + 1: dx at an owned position needs g up to W - 1 positions later, which
    the tile holds, so the shifts are register gathers rather than recomputation. dweight and
    dbias are summed elementwise across the tiles and reduced once at the end (per-tile
    reductions over L measured about 1.5x slower)."""
    OWN: tl.constexpr = BLOCK_L - (WIDTH - 1)
    pid_c, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = tl.arange(0, BLOCK_L)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    x_ptr += pid_b.to(tl.int64) * stride_xb
    dout_ptr += pid_b.to(tl.int64) * stride_gb
    dx_ptr += pid_b.to(tl.int64) * stride_dxb
    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=d_ok, other=0.0).to(ACC)
    else:
        bias = tl.zeros([BLOCK_D], dtype=ACC)
    ws = ()  # tap weights, [BLOCK_D] each
    dw_acc = ()  # per-tap running sums of g * x, [BLOCK_L, BLOCK_D] each
    for j in tl.static_range(WIDTH):
        ws = ws + (tl.load(w_ptr + d * stride_wd + j * stride_wk, mask=d_ok, other=0.0).to(ACC),)
        dw_acc = dw_acc + (tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC),)
    db_acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC)

    for k in range(TILES):
        t = (pid_c * TILES + k) * OWN + r
        t_ok = t < length
        rows = _rows(order_ptr, t, t_ok, HAS_ORDER)
        t_ok = t_ok & (rows >= 0) & (rows < length)
        g = _load_tile(dout_ptr, rows, t_ok, d, d_ok, stride_gl, stride_gd, ACC)
        xs = ()  # x at the W window positions of t, kept for dweight
        pre = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC) + bias[None, :]
        for j in tl.static_range(WIDTH):
            q = t - (WIDTH - 1) + j
            q_ok = t_ok & (q >= 0)
            q_rows = _rows(order_ptr, q, q_ok, HAS_ORDER)
            q_ok = q_ok & (q_rows >= 0) & (q_rows < length)
            xq = _load_tile(x_ptr, q_rows, q_ok, d, d_ok, stride_xl, stride_xd, ACC)
            xs = xs + (xq,)
            pre += xq * ws[j][None, :]
        if SILU:  # the pre-activation is recomputed, not saved by the forward
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        own = t_ok & (r < OWN)
        g_own = tl.where(own[:, None], g, 0.0)
        db_acc += g_own
        summed = ()
        for j in tl.static_range(WIDTH):  # dweight[:, j] += g[t] * x[t - W + 1 + j]
            summed = summed + (dw_acc[j] + g_own * xs[j],)
        dw_acc = summed
        dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=ACC)
        for j in tl.static_range(WIDTH):  # dx[s] = sum_j w_j g[s + W - 1 - j]
            shift = tl.minimum(r + (WIDTH - 1 - j), BLOCK_L - 1)  # clamped rows are not owned
            g_j = tl.gather(g, tl.broadcast_to(shift[:, None], [BLOCK_L, BLOCK_D]), axis=0)
            dx += g_j * ws[j][None, :]
        offs = rows[:, None] * stride_dxl + d[None, :]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=own[:, None] & d_ok[None, :])

    part = (pid_c * n_batch + pid_b).to(tl.int64)
    for j in tl.static_range(WIDTH):
        dw_j = tl.sum(dw_acc[j], axis=0)
        tl.store(dw_ptr + (part * dim + d) * WIDTH + j, dw_j, mask=d_ok)
    tl.store(db_ptr + part * dim + d, tl.sum(db_acc, axis=0), mask=d_ok)


# -- launchers --------------------------------------------------------------------------------
# Tile sizes measured on an H200 at B=8, L=4096, dim=1536, W=4, bf16, zigzag order (kernel
# times: forward 0.10 ms at 32 x 128; backward 0.43 ms at 64 x 64 x 8 tiles with 8 warps).


def _acc_dtype(x: torch.Tensor) -> tl.dtype:
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _fwd_blocks(x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_D) of the forward. The CPU interpreter pays per program, so it gets big
    tiles (the tests shrink them to cross tile borders)."""
    return (32, 128) if x.device.type == "cuda" else (32, 64)


def _bwd_blocks(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_L, BLOCK_D, tiles per program, warps) of the backward."""
    return (64, 64, 8, 8) if x.device.type == "cuda" else (32, 64, 2, 4)


def _conv_fwd(x, weight, bias, order, silu):
    batch, length, dim = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_l, block_d = _fwd_blocks(x)
    grid = (triton.cdiv(length, block_l), triton.cdiv(dim, block_d), batch)
    with _on_device(x):
        _conv_fwd_kernel[grid](
            x, weight, bias if bias is not None else weight, order if order is not None else x,
            out, length, dim, *x.stride(), *weight.stride(), out.stride(0), out.stride(1),
            WIDTH=weight.shape[1], HAS_BIAS=bias is not None, HAS_ORDER=order is not None,
            SILU=silu, ACC=_acc_dtype(x), BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return out


def _conv_bwd(dout, x, weight, bias, order, silu):
    batch, length, dim = x.shape
    width = weight.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    db_dtype = bias.dtype if bias is not None else weight.dtype
    if x.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros(dim, dtype=db_dtype, device=x.device)
    block_l, block_d, tiles, warps = _bwd_blocks(x)
    block_l = max(block_l, triton.next_power_of_2(2 * width))  # a tile must own >= W rows
    n_progs = triton.cdiv(length, (block_l - width + 1) * tiles)
    # Per-(program, batch) partial sums, reduced below: deterministic, unlike atomics.
    dw_part = torch.empty(n_progs * batch, dim, width, dtype=acc, device=x.device)
    db_part = torch.empty(n_progs * batch, dim, dtype=acc, device=x.device)
    grid = (n_progs, triton.cdiv(dim, block_d), batch)
    with _on_device(x):
        _conv_bwd_kernel[grid](
            x, weight, bias if bias is not None else weight, order if order is not None else x,
            dout, dx, dw_part, db_part, length, dim, batch,
            *x.stride(), *weight.stride(), *dout.stride(), dx.stride(0), dx.stride(1),
            WIDTH=width, HAS_BIAS=bias is not None, HAS_ORDER=order is not None, SILU=silu,
            ACC=_acc_dtype(x), BLOCK_L=block_l, BLOCK_D=block_d, TILES=tiles, num_warps=warps,
        )  # fmt: skip
    return dx, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(db_dtype)


def _on_device(x: torch.Tensor):
    """Launch on x's GPU whatever the current device (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


# -- custom ops -------------------------------------------------------------------------------


@torch.library.custom_op("zigma::causal_conv1d_tokens", mutates_args=())
def _conv_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    order: torch.Tensor | None,
    silu: bool,
) -> torch.Tensor:
    return _conv_fwd(x, weight, bias, order, silu)


@_conv_op.register_fake
def _(x, weight, bias, order, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("zigma::causal_conv1d_tokens_bwd", mutates_args=())
def _conv_bwd_op(
    dout: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    order: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _conv_bwd(dout, x, weight, bias, order, silu)


@_conv_bwd_op.register_fake
def _(dout, x, weight, bias, order, silu):
    db_dtype = bias.dtype if bias is not None else weight.dtype
    db = x.new_empty(x.shape[2:], dtype=db_dtype)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _setup_context(ctx, inputs, output):
    x, weight, bias, order, silu = inputs
    ctx.save_for_backward(x, weight, bias, order)
    ctx.silu = silu


def _backward(ctx, dout):
    x, weight, bias, order = ctx.saved_tensors
    dx, dw, db = torch.ops.zigma.causal_conv1d_tokens_bwd(dout, x, weight, bias, order, ctx.silu)
    return dx, dw, (db if bias is not None else None), None, None


_conv_op.register_autograd(_backward, setup_context=_setup_context)


# -- public entry point -----------------------------------------------------------------------


def causal_conv1d_tokens(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Causal depthwise conv1d along the scan order, read from and written to token rows.

    At scan step ``m`` (token row ``order[m]``): ``out = act(bias + sum_j weight[:, j] *
    x[order[m - W + 1 + j]])`` with zeros before the start, i.e. ``nn.Conv1d`` with left padding
    ``W - 1`` over the gathered sequence, scattered back to token order. Accumulates in fp32
    (fp64 for fp64 ``x``); differentiable in ``x``, ``weight`` and ``bias``.

    Args:
        x: ``[batch, L, dim]`` fp16/bf16/fp32/fp64, any strides (e.g. the view
            ``xz[..., :dim]`` of the in_proj output).
        weight: ``[dim, W]`` (``nn.Conv1d``'s ``[dim, 1, W]`` squeezed).
        bias: optional ``[dim]``.
        order: optional integer ``[L]`` permutation (``None``: the raster order). Its values
            are not checked (that would need a host sync); out-of-range entries read zeros
            and are not written, so they never touch memory outside the tensors.
        activation: ``"silu"`` or ``None``.

    Returns:
        ``[batch, L, dim]`` contiguous, in x's dtype, rows in token order.

    Raises:
        ValueError: on a bad shape, dtype, device, order or activation (before any compute).
        RuntimeError: for CPU tensors unless ``TRITON_INTERPRET=1``.
    """
    check_conv_tokens_args(x, weight, bias, order, activation)
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the Triton conv needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors "
            f"(x is on {x.device})"
        )
    # The kernels index order and bias with unit stride (x, weight and dout take any strides).
    order = None if order is None else order.contiguous()
    bias = None if bias is None else bias.contiguous()
    return torch.ops.zigma.causal_conv1d_tokens(x, weight, bias, order, activation == "silu")
