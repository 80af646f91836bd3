"""Triton selective scan (Mamba-1) in token layout, with the scan order folded into the kernels.

``selective_scan_tokens`` reads ``[batch, L, dim]`` activations (strided views welcome) and an
optional scan order, and writes ``y`` in token order: ZigMa's zigzag scans need no gather or
scatter pass. Forward and backward are ``torch.library`` custom ops (``zigma::selective_scan_*``)
so torch.compile traces them; ``selective_scan_triton`` adapts the ``[batch, dim, L]`` layout of
``zigma.ssm.ops.selective_scan`` (the "triton" backend). Kernels: ``_triton_scan_kernels``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton

from zigma.ssm.ops._checks import check_scan_inputs, check_scan_tokens_inputs
from zigma.ssm.ops._triton_scan_kernels import (
    _scan_bwd_kernel,
    _scan_bwd_local_kernel,
    _scan_fwd_kernel,
    reduce_scatter_ptx,
)

__all__ = ["ScanConfig", "selective_scan_tokens", "selective_scan_triton"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class ScanConfig:
    """Launch parameters of the scan kernels.

    A program owns ``block_d`` channels x ``lanes`` lane groups; a thread owns ``N / lanes``
    states of one channel. ``block_d`` defaults to ``32 * warps / lanes`` (one element per
    thread).

    Attributes:
        group: scan steps between the fp32 ``[batch, N, dim]`` states the forward saves for
            the backward (a power of two), which holds a group's values of one state in
            registers; 16 (or more, with lanes) enables its warp reduce-scatter.
        fwd_lanes: lanes sharing a channel's states in the forward (a power of two).
        fwd_warps: warps per forward program.
        bwd_lanes: lanes sharing a channel's states in the backward.
        bwd_warps: warps per backward program.
        fwd_block_d: channels per forward program (default above).
        bwd_block_d: channels per backward program.
        chunk: scan steps per chunk (a multiple of ``group``); None picks one per call.
            A program walks one chunk of one channel tile; more chunks keep more programs in
            flight (what small batches need: a program's steps are sequential and wait on
            their loads) at the price of a first pass over every chunk but the last, which
            finds the state (or gradient) that each chunk hands to the next.
        warps_per_sm: with ``chunk=None``, the fewest chunks (at least ``min_chunk`` steps
            long) that put this many warps per SM in flight; 0 never splits.
        min_chunk: the shortest chunk the automatic choice makes.
    """

    group: int = 16
    fwd_lanes: int = 1
    fwd_warps: int = 1
    bwd_lanes: int = 1
    bwd_warps: int = 1
    fwd_block_d: int | None = None
    bwd_block_d: int | None = None
    chunk: int | None = None
    warps_per_sm: int = 32
    min_chunk: int = 128

    def __post_init__(self) -> None:
        for name in ("group", "fwd_lanes", "fwd_warps", "bwd_lanes", "bwd_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"ScanConfig.{name} must be a power of two, got {value}")
        for name in ("fwd_block_d", "bwd_block_d"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value & (value - 1)):
                raise ValueError(f"ScanConfig.{name} must be a power of two or None, got {value}")
        if self.chunk is not None and (self.chunk < 1 or self.chunk % self.group):
            raise ValueError(
                f"ScanConfig.chunk must be a positive multiple of group={self.group}, "
                f"got {self.chunk}"
            )
        if self.warps_per_sm < 0 or self.min_chunk < 1:
            raise ValueError(
                f"ScanConfig needs warps_per_sm >= 0 and min_chunk >= 1, got "
                f"{self.warps_per_sm} and {self.min_chunk}"
            )


# Module-level so tests (and tuning) can shrink the tiles: the interpreter is slow per step.
CONFIG = ScanConfig()


def _n_groups(length: int, group: int) -> int:
    return (length + group - 1) // group


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunking(length: int, programs: int, warps: int, device: torch.device) -> tuple[int, int]:
    """``(chunk_len, n_chunks)`` of a launch of ``programs`` programs of ``warps`` warps per
    chunk (``CONFIG.chunk``, or the automatic choice on CUDA; one chunk otherwise)."""
    cfg = CONFIG
    whole = triton.cdiv(length, cfg.group) * cfg.group  # chunks are whole groups
    chunk = cfg.chunk or whole
    if cfg.chunk is None and device.type == "cuda" and cfg.warps_per_sm:
        wanted = _sm_count(device) * cfg.warps_per_sm // warps
        n = min(triton.cdiv(wanted, programs), length // cfg.min_chunk)
        if n > 1:
            chunk = triton.cdiv(triton.cdiv(length, n), cfg.group) * cfg.group
    chunk = min(chunk, whole)
    return chunk, triton.cdiv(length, chunk)


def _tiling(n_state: int, lanes: int, warps: int, block_d: int | None) -> dict[str, int]:
    """Constexprs ``NP`` (padded N), ``LN``, ``NR`` (states per thread) and ``BLOCK_D``."""
    n_pad = triton.next_power_of_2(n_state)
    lanes = min(lanes, n_pad)
    block_d = block_d or max(1, 32 * warps // lanes)
    return {"NP": n_pad, "LN": lanes, "NR": n_pad // lanes, "BLOCK_D": block_d}


def _flags(D, z, delta_bias, order, delta_softplus, row_elems) -> dict[str, bool]:
    return {
        "ROW64": row_elems >= 2**31,
        "HAS_D": D is not None,
        "HAS_Z": z is not None,
        "HAS_BIAS": delta_bias is not None,
        "SOFTPLUS": bool(delta_softplus),
        "HAS_ORDER": order is not None,
        "FAST": not _interpreting(),
    }


def _row_elems(length: int, *tensors: torch.Tensor | None) -> int:
    """Largest in-batch-row offset the kernels form (``row * row_stride``, int32 if it fits)."""
    return length * max(max(t.stride(1), t.shape[-1]) for t in tensors if t is not None)


def _bl_strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _row_major(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` itself if its last dim is contiguous (what the kernels need), else a copy."""
    if t is None or t.shape[-1] <= 1 or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _pack_bc(B: torch.Tensor, C: torch.Tensor, n_pad: int, lanes: int) -> torch.Tensor:
    """``[batch, L, 2 n_pad]`` fp32 rows ``(B, C)``, zero-padded to ``n_pad`` states each and
    ordered so that lane group j's states ``k lanes + j`` are contiguous (one vector load).

    Every program reads B and C at every step: converting them once (a few MB) beats
    converting them in every thread.
    """
    batch, length, n_state = B.shape
    bc = torch.stack((B, C), dim=2).float()  # [batch, L, 2, N]
    bc = F.pad(bc, (0, n_pad - n_state))  # [batch, L, 2, n_pad], n = k lanes + j
    bc = bc.view(batch, length, 2, n_pad // lanes, lanes).transpose(-1, -2)  # [.., j, k]
    return bc.reshape(batch, length, 2 * n_pad)


def _fwd(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, group, save):
    batch, length, dim = u.shape
    n_state = A.shape[1]
    n_groups = _n_groups(length, group)
    u, delta, z = (_row_major(t) for t in (u, delta, z))
    cfg = CONFIG
    tiling = _tiling(n_state, cfg.fwd_lanes, cfg.fwd_warps, cfg.fwd_block_d)
    bc = _pack_bc(B, C, tiling["NP"], tiling["LN"])
    y = torch.empty(batch, length, dim, dtype=u.dtype, device=u.device)
    # Pre-gate output, for dz in the backward (empty without z).
    y_pre, ck = _saved_like(u, n_state, group, save and z is not None, save)
    last = torch.empty(batch, dim, n_state, dtype=torch.float32, device=u.device)
    n_tiles = triton.cdiv(dim, tiling["BLOCK_D"])
    chunk, n_chunks = _chunking(length, n_tiles * batch, cfg.fwd_warps, u.device)
    # Pass-1 results: each chunk's end state from a zero start and its sum of delta.
    hloc = u.new_empty(batch, n_chunks, n_state, dim, dtype=torch.float32)
    sdt = u.new_empty(batch, n_chunks, dim, dtype=torch.float32)
    args = (
        u, delta, z if z is not None else u, bc, A, D if D is not None else A,
        delta_bias if delta_bias is not None else A, order if order is not None else A,
        y, y_pre if y_pre.numel() else y, last, ck, hloc, sdt,
        length, dim, n_groups, chunk, n_chunks, 1,
        *_bl_strides(u), *_bl_strides(delta), *_bl_strides(z), *_bl_strides(bc),
    )  # fmt: skip
    meta = dict(
        N=n_state, T=group, **tiling,
        **_flags(D, z, delta_bias, order, delta_softplus, _row_elems(length, u, delta, z, bc)),
        SAVE=save, num_warps=cfg.fwd_warps,
    )  # fmt: skip
    if n_chunks > 1:  # the last chunk's end state is nobody's start
        _scan_fwd_kernel[(n_tiles, batch, n_chunks - 1)](*args, **{**meta, "SAVE": False},
                                                         LOCAL=True)  # fmt: skip
    _scan_fwd_kernel[(n_tiles, batch, n_chunks)](*args, **meta, LOCAL=False)
    return y, last, ck, y_pre


def _saved_like(u, n_state: int, group: int, with_y_pre: bool, with_ck: bool):
    """Buffers the forward fills for the backward (empty when not needed): the pre-gate
    output (for dz) and the fp32 state after every group of steps, ``[batch, groups - 1, N,
    dim]``."""
    batch, length, dim = u.shape
    y_pre = u.new_empty((batch, length, dim) if with_y_pre else (0,))
    n_ck = _n_groups(length, group) - 1 if with_ck else 0
    ck = u.new_empty(batch, n_ck, n_state, dim, dtype=torch.float32)
    if n_ck * n_state * dim >= 2**31:
        raise ValueError(f"sequence too long for the Triton scan: L = {length}, dim = {dim}")
    return y_pre, ck


def _pack_bc_groups(B, C, order, n_pad: int, group: int) -> torch.Tensor:
    """``[batch, groups, 2, n_pad, group]`` fp32: B and C in scan order, each state's values
    over a group of steps contiguous (the backward loads them per state)."""
    batch, length, n_state = B.shape
    n_groups = _n_groups(length, group)
    bc = torch.stack((B, C), dim=2)  # [batch, L, 2, N]
    if order is not None:
        bc = bc[:, order.long()]
    bc = F.pad(bc.float(), (0, n_pad - n_state, 0, 0, 0, n_groups * group - length))
    bc = bc.view(batch, n_groups, group, 2, n_pad).permute(0, 1, 3, 4, 2)
    return bc.contiguous()


@functools.cache
def _reduce_scatter(n_vals: int, lanes: int) -> tuple[str, str, int]:
    keep = max(1, n_vals * lanes // 32)
    constraints = ",".join(["=r"] * keep + ["r"] * n_vals)
    return reduce_scatter_ptx(n_vals, lanes), constraints, keep


def _bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, order, ck, y_pre, delta_softplus,
         group):  # fmt: skip
    batch, length, dim = u.shape
    n_state = A.shape[1]
    n_groups = _n_groups(length, group)
    u, delta, z, dy = (_row_major(t) for t in (u, delta, z, dy))
    cfg = CONFIG
    tiling = _tiling(n_state, cfg.bwd_lanes, cfg.bwd_warps, cfg.bwd_block_d)
    n_pad, lanes = tiling["NP"], tiling["LN"]
    # The warp reduce-scatter of the dB/dC terms needs 2 group lanes >= 32 and whole warps
    # (the interpreter runs an emulation of it).
    rs = 2 * group * lanes >= 32 and tiling["BLOCK_D"] * lanes % 32 == 0
    bcs = _pack_bc_groups(B, C, order, n_pad, group)
    n_tiles = triton.cdiv(dim, tiling["BLOCK_D"])
    dev = u.device
    du = torch.empty(batch, length, dim, dtype=u.dtype, device=dev)
    ddelta = torch.empty(batch, length, dim, dtype=delta.dtype, device=dev)
    dz = torch.empty_like(du, dtype=z.dtype) if z is not None else du.new_empty(0)
    # dB and dC are sums over channels: one fp32 partial per channel tile, in scan order,
    # reduced below (deterministic, unlike atomics). dA, dD, ddelta_bias: one per batch row.
    steps = n_groups * group
    # (Every entry with a real state is written: no zero fill.)
    dbc_part = torch.empty(n_tiles, batch, steps, 2, n_pad, dtype=torch.float32, device=dev)
    chunk, n_chunks = _chunking(length, n_tiles * batch, cfg.bwd_warps, dev)
    flags = _flags(D, z, delta_bias, order, delta_softplus, _row_elems(length, u, delta, z, dy))
    # Pass 1 (chunks 1 ..): the gradient each chunk sends to the state before it, from a zero
    # carry, and its sum of delta.
    gloc = torch.empty(batch, n_chunks, n_state, dim, dtype=torch.float32, device=dev)
    sdt = torch.empty(batch, n_chunks, dim, dtype=torch.float32, device=dev)
    if n_chunks > 1:
        local = _tiling(n_state, cfg.fwd_lanes, cfg.fwd_warps, cfg.fwd_block_d)
        bc = _pack_bc(B, C, local["NP"], local["LN"])
        _scan_bwd_local_kernel[(triton.cdiv(dim, local["BLOCK_D"]), batch, n_chunks - 1)](
            delta, z if z is not None else u, bc, A, delta_bias if delta_bias is not None else A,
            order if order is not None else A, dy, gloc, sdt, length, dim, chunk, n_chunks, 1,
            *_bl_strides(delta), *_bl_strides(z), *_bl_strides(bc), *_bl_strides(dy),
            N=n_state, **local, **{k: v for k, v in flags.items() if k != "HAS_D"},
            num_warps=cfg.fwd_warps,
        )  # fmt: skip
    # Per chunk, state and channel: the gradient carried into earlier groups, and dA.
    dlast_p = torch.zeros(batch, n_pad, dim, dtype=torch.float32, device=dev)
    if dlast is not None:
        dlast_p[:, :n_state] = dlast.transpose(1, 2)
    carry = torch.empty(n_chunks, batch, n_pad, dim, dtype=torch.float32, device=dev)
    da_part = torch.zeros(n_chunks * batch, n_pad, dim, dtype=torch.float32, device=dev)
    dd_part = torch.empty(n_chunks * batch, dim, dtype=torch.float32, device=dev)
    dbias_part = torch.empty(n_chunks * batch, dim, dtype=torch.float32, device=dev)
    rs_ptx, rs_cons, rs_keep = _reduce_scatter(2 * group, lanes)
    _scan_bwd_kernel[(n_tiles, batch, n_chunks)](
        u, delta, z if z is not None else u, bcs, A.t().contiguous(), D if D is not None else A,
        delta_bias if delta_bias is not None else A, order if order is not None else A,
        ck, y_pre if z is not None else u, dy, dlast_p, gloc, sdt, carry,
        du, ddelta, dz if z is not None else du, dbc_part, da_part, dd_part, dbias_part,
        length, dim, n_groups, batch, chunk, n_chunks, 1,
        *_bl_strides(u), *_bl_strides(delta), *_bl_strides(z), *_bl_strides(dy),
        N=n_state, T=group, LOG_T=group.bit_length() - 1, **tiling, **flags,
        RS=rs, RS_PTX=rs_ptx, RS_CONS=rs_cons, RS_KEEP=rs_keep,
        LOG_KEEP=rs_keep.bit_length() - 1, num_warps=cfg.bwd_warps,
    )  # fmt: skip
    dbc = dbc_part.sum(0)[:, :length]  # [batch, L, 2, n_pad], scan order
    if order is not None:
        dbc = torch.empty_like(dbc).index_copy_(1, order.long(), dbc)  # token order
    dB = dbc[:, :, 0, :n_state].to(B.dtype, copy=True)  # copies: outputs must not alias
    dC = dbc[:, :, 1, :n_state].to(C.dtype, copy=True)
    dD = dd_part.sum(0) if D is not None else A.new_empty(0)
    dbias = dbias_part.sum(0) if delta_bias is not None else A.new_empty(0)
    dA = da_part.sum(0)[:n_state].t().contiguous()
    return du, ddelta, dA, dB, dC, dD, dz, dbias


# -- custom ops -------------------------------------------------------------------------------


@torch.library.custom_op("zigma::selective_scan_tokens", mutates_args=())
def _scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    order: torch.Tensor | None,
    delta_softplus: bool,
    group: int,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``y``, the last state, the group checkpoints and the pre-gate output (the
    last two empty unless ``save``)."""
    return _fwd(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, group, save)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, group, save):
    batch, length, dim = u.shape
    n_state = A.shape[1]
    y = u.new_empty(batch, length, dim)
    last = u.new_empty(batch, dim, n_state, dtype=torch.float32)
    y_pre, ck = _saved_like(u, n_state, group, save and z is not None, save)
    return y, last, ck, y_pre


@torch.library.custom_op("zigma::selective_scan_tokens_bwd", mutates_args=())
def _scan_bwd_op(
    dy: torch.Tensor,
    dlast: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    order: torch.Tensor | None,
    ck: torch.Tensor,
    y_pre: torch.Tensor,
    delta_softplus: bool,
    group: int,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    return _bwd(
        dy, dlast, u, delta, A, B, C, D, z, delta_bias, order, ck, y_pre, delta_softplus, group
    )


@_scan_bwd_op.register_fake
def _(dy, dlast, u, delta, A, B, C, D, z, delta_bias, order, ck, y_pre, delta_softplus, group):
    return (
        u.new_empty(u.shape),
        delta.new_empty(delta.shape),
        A.new_empty(A.shape),
        B.new_empty(B.shape),
        C.new_empty(C.shape),
        D.new_empty(D.shape) if D is not None else A.new_empty(0),
        z.new_empty(z.shape) if z is not None else u.new_empty(0),
        delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else A.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, group, save = inputs
    if not save:
        raise RuntimeError("selective_scan_tokens ran without saving for a backward pass")
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, order, output[2], output[3])
    ctx.delta_softplus, ctx.group = delta_softplus, group
    ctx.has = (D is not None, z is not None, delta_bias is not None)


def _backward(ctx, dy, dlast, _dck, _dy_pre):
    u, delta, A, B, C, D, z, delta_bias, order, ck, y_pre = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(u)
    grads = torch.ops.zigma.selective_scan_tokens_bwd(
        dy, dlast, u, delta, A, B, C, D, z, delta_bias, order, ck, y_pre, ctx.delta_softplus,
        ctx.group,
    )  # fmt: skip
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    has_d, has_z, has_bias = ctx.has
    return (
        du, ddelta, dA, dB, dC,
        dD if has_d else None, dz if has_z else None, dbias if has_bias else None,
        None, None, None, None,
    )  # fmt: skip


_scan_op.register_autograd(_backward, setup_context=_setup_context)


# -- public entry points ----------------------------------------------------------------------


def _check_device(device: torch.device) -> None:
    if device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"the Triton selective scan needs CUDA tensors (got {device}); on CPU set "
            "TRITON_INTERPRET=1 before importing triton"
        )


def selective_scan_tokens(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    order: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan over token rows, stepping through them in ``order``.

    Scan step ``m`` reads every input at token row ``r = order[m]`` (``r = m`` without an
    order) and writes ``y`` there: ``delta = softplus?(delta[r] + delta_bias)``;
    ``h_m = exp(delta A) h_{m-1} + delta B[r] u[r]`` (``h_{-1} = 0``); ``y[r] = C[r] . h_m
    + D u[r]``, times ``silu(z[r])``. Equals gathering the rows into scan order, running
    ``selective_scan_ref`` on ``[batch, dim, L]`` and scattering ``y`` back. State and
    arithmetic are fp32; autocast does not apply. Differentiable in every tensor input and in
    the last state. For the backward the forward saves one fp32 ``[batch, N, dim]`` state per
    ``CONFIG.group`` (16) steps (200 MB at batch 8, dim 1536, L 4096, N 16) and, with ``z``,
    the pre-gate output in u's dtype; nothing when no input requires grad.

    Args:
        u: ``[batch, L, dim]`` fp16/bf16/fp32; any strides with a contiguous last dimension
            (e.g. ``xz[..., :dim]``), as for ``delta``, ``z``, ``B`` and ``C``.
        delta: ``[batch, L, dim]`` step sizes (before bias/softplus).
        A: ``[dim, N]`` state matrix diagonal (computed in fp32).
        B: ``[batch, L, N]`` input projection, e.g. a view of the x_proj output.
        C: ``[batch, L, N]`` output projection.
        D: optional ``[dim]`` skip weight.
        z: optional ``[batch, L, dim]`` gate.
        delta_bias: optional ``[dim]``, added to delta in fp32 before the softplus.
        delta_softplus: apply softplus to delta.
        order: optional integer ``[L]`` permutation on u's device (e.g. ``order.flip(0)`` for
            a backward scan). Values are not checked (that needs a host sync); out-of-range
            entries are identity steps that read and write nothing.
        return_last_state: also return the state after the last scan step.

    Returns:
        ``y`` ``[batch, L, dim]`` contiguous in u's dtype, token order; with
        ``return_last_state`` also the final state ``[batch, dim, N]`` fp32.

    Raises:
        ValueError: on a bad shape, dtype, device, order or stride (before any compute).
        RuntimeError: for CPU tensors unless ``TRITON_INTERPRET=1``.
    """
    check_scan_tokens_inputs(u, delta, A, B, C, D, z, delta_bias, order, dtypes=_DTYPES)
    _check_device(u.device)
    f32 = [t.float().contiguous() if t is not None else None for t in (A, D, delta_bias)]
    if order is not None:
        order = order.to(torch.int32).contiguous()
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last, _, _ = _scan_op(
        u, delta, f32[0], B, C, f32[1], z, f32[2], order, bool(delta_softplus), CONFIG.group,
        save,
    )  # fmt: skip
    return (y, last) if return_last_state else y


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The "triton" backend of ``selective_scan``: mamba_ssm layout ``[batch, dim, L]``.

    Inputs are transposed to token layout (views, copied only where the channel dimension is
    not contiguous, as for a contiguous ``[batch, dim, L]`` tensor) and scanned by
    ``selective_scan_tokens``; ``y`` comes back as a ``[batch, dim, L]`` view.

    Args and returns as ``zigma.ssm.ops.selective_scan`` (fp16/bf16/fp32 inputs).

    Raises:
        ValueError: on malformed inputs.
        RuntimeError: for CPU tensors unless ``TRITON_INTERPRET=1``.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    tokens = [None if t is None else _row_major(t.transpose(1, 2)) for t in (u, delta, B, C, z)]
    tu, tdelta, tB, tC, tz = tokens
    out = selective_scan_tokens(
        tu, tdelta, A, tB, tC, D, tz, delta_bias, delta_softplus, None, return_last_state
    )
    if return_last_state:
        return out[0].transpose(1, 2), out[1]
    return out.transpose(1, 2)
