"""The Mamba branches as one op: in_proj output -> conv -> projections -> scan -> gate -> out_proj.

``mamba_branches`` takes the in_proj output ``xz`` of a Mamba layer and the weights of its K
branches (one for Mamba, two for Vision Mamba's bidirectional variant, K for ParallelMamba),
each with its own scan order, and returns the layer output. It is one autograd function: the
forward keeps only ``xz``, the weights, the summed pre-gate scan output and the scan's own
checkpoints; the backward recomputes the conv, x_proj and dt_proj of each branch (cheap next to
what saving them costs: ~15 KB per token and branch at d_inner 1536) and runs the scan backward.

Kernels: on the "triton" backend the Triton conv and scan (custom ops ``zigma::*``), with the
order folded into their indexing; elsewhere the token-layout PyTorch paths of ``tokens``, whose
backward recomputes them under autograd (what CPU tests need, not speed). The gate is applied
outside the scans, once to their sum: ``silu(z) * sum_k y_k``, which equals the sum of gated
branches and saves no per-branch pre-gate output. ``mamba_branches_ref`` is the plain
composition, differentiated by autograd: the oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import zigma.ssm.ops as ops
from zigma.ssm.ops import tokens
from zigma.ssm.ops._checks import check_index, describe_shape, no_autocast

__all__ = ["BranchWeights", "mamba_branches", "mamba_branches_ref", "scan_param"]

# What the Triton scan kernels take (the conv also takes fp64).
_TRITON_SCAN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class BranchWeights:
    """The weights of one Mamba branch (scan direction), as the module holds them.

    Attributes:
        conv_weight: ``[dim, W]`` depthwise causal conv (``nn.Conv1d.weight`` squeezed).
        conv_bias: optional ``[dim]``.
        x_proj_weight: ``[R + 2N, dim]``: rows ``dt`` (R), ``B`` (N), ``C`` (N).
        dt_proj_weight: ``[dim, R]``.
        dt_proj_bias: ``[dim]``, added to delta in fp32 before the softplus.
        A_log: ``[dim, N]``; the scan uses ``A = -exp(A_log)``.
        D: ``[dim]`` skip weight.
    """

    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor
    dt_proj_weight: torch.Tensor
    dt_proj_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (
            self.conv_weight,
            self.conv_bias,
            self.x_proj_weight,
            self.dt_proj_weight,
            self.dt_proj_bias,
            self.A_log,
            self.D,
        )


_PER_BRANCH = 8  # order + the 7 tensors of BranchWeights, in the autograd function's arguments


def scan_param(t: torch.Tensor) -> torch.Tensor:
    """The scan parameters in fp32 (fp64 ones stay fp64), as the scan computes with them."""
    return t if t.dtype == torch.float64 else t.float()


def _check(xz, branches, orders, out_weight, out_bias) -> tuple[int, int, int]:
    """Shapes only (no compute); returns ``(dim, R, N)``."""
    if not isinstance(xz, torch.Tensor) or xz.dim() != 3 or xz.shape[-1] % 2:
        raise ValueError(f"xz must be [batch, L, 2 dim], got {describe_shape(xz)}")
    if xz.shape[1] == 0:
        raise ValueError("xz must have at least one token (L >= 1), got L = 0")
    if len(branches) == 0 or len(branches) != len(orders):
        raise ValueError(
            f"need one order (or None) per branch and at least one branch, got "
            f"{len(branches)} branches and {len(orders)} orders"
        )
    dim, length = xz.shape[-1] // 2, xz.shape[1]
    first = branches[0]
    n_state = first.A_log.shape[-1] if first.A_log.dim() == 2 else 0
    rank = first.dt_proj_weight.shape[-1] if first.dt_proj_weight.dim() == 2 else 0
    width = first.conv_weight.shape[-1] if first.conv_weight.dim() == 2 else 0
    want = {
        "conv_weight": (dim, width),
        "conv_bias": (dim,),
        "x_proj_weight": (rank + 2 * n_state, dim),
        "dt_proj_weight": (dim, rank),
        "dt_proj_bias": (dim,),
        "A_log": (dim, n_state),
        "D": (dim,),
    }
    for k, (branch, order) in enumerate(zip(branches, orders, strict=True)):
        for name, t in zip(want, branch.tensors(), strict=True):
            if t is None and name == "conv_bias":
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want[name] or 0 in want[name]:
                raise ValueError(
                    f"branch {k}: {name} must be {list(want[name])}, got {describe_shape(t)}"
                )
        if (branch.conv_bias is None) != (first.conv_bias is None):
            raise ValueError("either every branch has a conv bias or none has")
        if order is not None:
            check_index(f"orders[{k}]", order, length, xz.device)
    d_model = out_weight.shape[0] if isinstance(out_weight, torch.Tensor) else 0
    if not isinstance(out_weight, torch.Tensor) or tuple(out_weight.shape) != (d_model, dim):
        raise ValueError(f"out_weight must be [d_model, {dim}], got {describe_shape(out_weight)}")
    if out_bias is not None and tuple(out_bias.shape) != (d_model,):
        raise ValueError(f"out_bias must be [{d_model}] or None, got {describe_shape(out_bias)}")
    return dim, rank, n_state


def mamba_branches_ref(
    xz: torch.Tensor,
    branches: Sequence[BranchWeights],
    orders: Sequence[torch.Tensor | None],
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """Reference for ``mamba_branches``: each branch gathered, convolved, projected, scanned by
    the reference loop with its gate and scattered back; the sum scaled and projected out.
    Differentiated by plain autograd. Arguments and returns as ``mamba_branches``."""
    dim, rank, n_state = _check(xz, branches, orders, out_weight, out_bias)
    xs, z = xz[..., :dim], xz[..., dim:]
    y = 0
    for w, order in zip(branches, orders, strict=True):
        x = tokens.causal_conv1d_tokens_ref(xs, w.conv_weight, w.conv_bias, order, "silu")
        dt, B, C = F.linear(x, w.x_proj_weight).split([rank, n_state, n_state], dim=-1)
        delta = F.linear(dt, w.dt_proj_weight)
        y = y + tokens.selective_scan_tokens_ref(
            x, delta, -torch.exp(scan_param(w.A_log)), B, C, scan_param(w.D), z,
            scan_param(w.dt_proj_bias), True, order, backend="reference",
        )  # fmt: skip
    return F.linear(y * scale, out_weight, out_bias)


@dataclass(frozen=True)
class _Plan:
    """What the autograd function needs besides tensors."""

    backend: str  # resolved: "triton" or a PyTorch scan backend
    conv_kernel: bool  # the Triton conv custom ops
    scan_kernel: bool  # the Triton scan custom ops (checkpoints saved by the forward)
    dtype: torch.dtype  # activations and matmuls (the autocast dtype under autocast)
    rank: int
    n_state: int
    scale: float
    group: int  # the Triton scan's checkpoint spacing, read once per call
    save: bool  # a backward will follow: the Triton scan keeps its checkpoints


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gate(plan: _Plan, ysum: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``scale * silu(z) * ysum``, computed in fp32 (fp64) and rounded once."""
    if plan.scan_kernel:
        return torch.ops.zigma.mamba_gate(ysum, z, plan.scale)
    acc = _acc(ysum.dtype)
    return (ysum.to(acc) * F.silu(z.to(acc)) * plan.scale).to(ysum.dtype)


def _gate_bwd(plan: _Plan, dg: torch.Tensor, ysum: torch.Tensor, z: torch.Tensor):
    """``(dysum, dz, g)`` of ``g = _gate(ysum, z)`` for the cotangent ``dg``."""
    if plan.scan_kernel:
        return torch.ops.zigma.mamba_gate_bwd(dg, ysum, z, plan.scale)
    acc = _acc(ysum.dtype)
    dg, ysum, z = dg.to(acc) * plan.scale, ysum.to(acc), z.to(acc)
    sig = torch.sigmoid(z)
    dz = dg * ysum * sig * (1 + z * (1 - sig))
    return dg * z * sig, dz, None


def _autocast_off(device: torch.device):
    """``no_autocast`` without the availability query that torch.compile (2.11) cannot trace:
    CPU and CUDA always have autocast."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return no_autocast(device)


def _order32(order: torch.Tensor | None) -> torch.Tensor | None:
    return None if order is None else order.to(torch.int32).contiguous()


def _conv_fwd(plan: _Plan, xs, weight, bias, order) -> torch.Tensor:
    if plan.conv_kernel:
        return torch.ops.zigma.causal_conv1d_tokens(xs, weight, bias, order, True)
    return tokens.causal_conv1d_tokens_ref(xs, weight, bias, order, "silu")


def _conv_bwd(plan: _Plan, dout, xs, weight, bias, order):
    """``(dxs, dweight, dbias)``; dbias ``None`` without a bias."""
    if plan.conv_kernel:
        dx, dw, db = torch.ops.zigma.causal_conv1d_tokens_bwd(dout, xs, weight, bias, order, True)
        return dx, dw, (db if bias is not None else None)
    x_l, w_l = xs.detach().requires_grad_(), weight.detach().requires_grad_()
    b_l = None if bias is None else bias.detach().requires_grad_()
    leaves = [x_l, w_l] if bias is None else [x_l, w_l, b_l]
    with torch.enable_grad():
        out = tokens.causal_conv1d_tokens_ref(x_l, w_l, b_l, order, "silu")
        grads = torch.autograd.grad(out, leaves, dout)
    return grads[0], grads[1], (grads[2] if bias is not None else None)


def _generic_scan(plan: _Plan):
    """The token-layout scan of a PyTorch backend (or whatever ``tokens`` routes "triton" to),
    without the call recording of ``tokens.scan_tokens``."""
    if plan.backend == "triton":
        return tokens._triton_scan()
    return lambda *args: tokens.selective_scan_tokens_ref(*args, backend=plan.backend)


def _scan_fwd(plan: _Plan, u, delta, A, B, C, D, bias, order, save: bool):
    """``(y, checkpoints)``: the pre-gate scan output (with ``D u``) and, from the Triton
    kernels when ``save``, the states its backward starts from."""
    if plan.scan_kernel:
        y, _, ck, _ = torch.ops.zigma.selective_scan_tokens(
            u, delta, A, B, C, D, None, bias, order, True, plan.group, save
        )
        return y, ck
    return _generic_scan(plan)(u, delta, A, B, C, D, None, bias, True, order, False), None


def _scan_bwd(plan: _Plan, dy, u, delta, A, B, C, D, bias, order, ck):
    """``(du, ddelta, dA, dB, dC, dD, dbias)``."""
    if plan.scan_kernel:
        du, ddelta, dA, dB, dC, dD, _, dbias = torch.ops.zigma.selective_scan_tokens_bwd(
            dy, None, u, delta, A, B, C, D, None, bias, order, ck, u.new_empty(0), True,
            plan.group,
        )  # fmt: skip
        return du, ddelta, dA, dB, dC, dD, dbias
    leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    with torch.enable_grad():
        y = _generic_scan(plan)(*leaves[:6], None, leaves[6], True, order, False)
        return torch.autograd.grad(y, leaves, dy)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^T b`` over all tokens: the weight gradient of a linear layer, ``[out, in]``."""
    return a.reshape(-1, a.shape[-1]).t() @ b.reshape(-1, b.shape[-1])


class _Branches(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, xz, out_weight, out_bias, *flat):
        ct, dim = plan.dtype, xz.shape[-1] // 2
        xz = xz.to(ct)
        xs, z = xz[..., :dim], xz[..., dim:]
        save = plan.save
        ysum, cks = None, []
        with _autocast_off(xz.device):
            for k in range(0, len(flat), _PER_BRANCH):
                order, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D = flat[k : k + _PER_BRANCH]
                x = _conv_fwd(plan, xs, conv_w, conv_b, order)  # [b, L, dim]
                x_dbl = F.linear(x, x_w.to(ct))  # [b, L, R + 2N]
                dt, B, C = x_dbl.split([plan.rank, plan.n_state, plan.n_state], dim=-1)
                delta = F.linear(dt, dt_w.to(ct))  # [b, L, dim]
                A = -torch.exp(scan_param(A_log))
                y, ck = _scan_fwd(
                    plan, x, delta, A, B, C, scan_param(D), scan_param(dt_b), order, save
                )
                ysum = y if ysum is None else ysum + y
                cks.append(ck)
            bias = None if out_bias is None else out_bias.to(ct)
            out = F.linear(_gate(plan, ysum, z), out_weight.to(ct), bias)
        ctx.plan = plan
        ctx.n_flat = len(flat)
        ctx.save_for_backward(xz, out_weight, out_bias, ysum, *flat, *cks)
        return out

    @staticmethod
    def backward(ctx, dout):
        plan, ct = ctx.plan, ctx.plan.dtype
        saved = ctx.saved_tensors
        xz, out_weight, out_bias, ysum = saved[:4]
        flat, cks = saved[4 : 4 + ctx.n_flat], saved[4 + ctx.n_flat :]
        dim = xz.shape[-1] // 2
        xs, z = xz[..., :dim], xz[..., dim:]
        acc = _acc(ct)
        with _autocast_off(xz.device):
            dout = dout.to(ct)
            # out = linear(g), g = scale * silu(z) * ysum
            d_out_b = None
            if out_bias is not None:
                d_out_b = dout.to(acc).sum((0, 1)).to(out_bias.dtype)
            dysum, dz, g = _gate_bwd(plan, dout @ out_weight.to(ct), ysum, z)
            if g is None:
                g = _gate(plan, ysum, z)
            d_out_w = _mm(dout, g).to(out_weight.dtype)
            dysum, dz = dysum.to(ct), dz.to(ct)
            dxs, grads = None, []
            for i, k in enumerate(range(0, len(flat), _PER_BRANCH)):
                order, conv_w, conv_b, x_w, dt_w, dt_b, A_log, D = flat[k : k + _PER_BRANCH]
                x_w_c, dt_w_c = x_w.to(ct), dt_w.to(ct)
                # Recompute the branch up to the scan's inputs.
                x = _conv_fwd(plan, xs, conv_w, conv_b, order)
                x_dbl = F.linear(x, x_w_c)
                dt, B, C = x_dbl.split([plan.rank, plan.n_state, plan.n_state], dim=-1)
                delta = F.linear(dt, dt_w_c)
                A = -torch.exp(scan_param(A_log))
                du, ddelta, dA, dB, dC, dD, dbias = _scan_bwd(
                    plan, dysum, x, delta, A, B, C, scan_param(D), scan_param(dt_b), order, cks[i]
                )
                d_dt_w = _mm(ddelta, dt).to(dt_w.dtype)
                d_x_dbl = torch.cat([ddelta @ dt_w_c, dB.to(ct), dC.to(ct)], dim=-1)
                d_x_w = _mm(d_x_dbl, x).to(x_w.dtype)
                dx = du.to(ct) + d_x_dbl @ x_w_c
                dxs_k, d_conv_w, d_conv_b = _conv_bwd(plan, dx, xs, conv_w, conv_b, order)
                dxs = dxs_k if dxs is None else dxs + dxs_k
                grads += [
                    None,
                    d_conv_w.to(conv_w.dtype),
                    None if conv_b is None else d_conv_b.to(conv_b.dtype),
                    d_x_w,
                    d_dt_w,
                    dbias.to(dt_b.dtype),
                    (dA * A).to(A_log.dtype),  # A = -exp(A_log)
                    dD.to(D.dtype),
                ]
            dxz = torch.cat([dxs.to(ct), dz], dim=-1)
        return None, dxz, d_out_w, d_out_b, *grads


def mamba_branches(
    xz: torch.Tensor,
    branches: Sequence[BranchWeights],
    orders: Sequence[torch.Tensor | None],
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """The token mixing of a Mamba layer after its in_proj, all branches in one autograd op.

    With ``x, z = xz.chunk(2, -1)``, branch ``k`` scans the tokens in ``orders[k]``:
    ``u = silu(conv_k(x))`` (causal along the order), ``dt, B, C = x_proj_k(u)``, ``delta =
    dt_proj_k(dt)``, ``y_k = scan(u, delta, -exp(A_log_k), B, C, D_k, delta_bias =
    dt_proj_bias_k, softplus)``; the result is ``out_proj(scale * silu(z) * sum_k y_k)``.
    Under autocast the activations and matmuls run in the autocast dtype and the scan in fp32.

    For the backward it keeps ``xz``, the weights, ``sum_k y_k`` and, on the Triton path, the
    scan's state checkpoints (fp32, one ``[N, dim]`` state per 16 steps); the conv output,
    ``x_proj`` output and ``delta`` are recomputed.

    Args:
        xz: ``[batch, L, 2 dim]`` in_proj output, token (raster) order.
        branches: K ``BranchWeights``.
        orders: K integer ``[L]`` permutations (or ``None`` for raster order): scan step ``m``
            of branch ``k`` reads and writes token ``orders[k][m]``.
        out_weight: ``[d_model, dim]`` out_proj weight.
        out_bias: optional ``[d_model]``.
        scale: factor on the summed branches (``1 / K`` for ParallelMamba's mean).
        backend: ``"auto"`` or a registered scan backend; "triton" runs the Triton kernels
            (for fp64 inputs its conv only), the others the token-layout PyTorch paths.

    Returns:
        ``[batch, L, d_model]`` in the compute dtype.

    Raises:
        ValueError: on malformed shapes or orders (before any compute), or an unknown backend.
        RuntimeError: if the backend is unavailable on xz's device.
    """
    dim, rank, n_state = _check(xz, branches, orders, out_weight, out_bias)
    name = ops.resolve_backend(backend, xz.device)
    device = xz.device.type
    if device in ("cpu", "cuda"):  # no availability query: torch.compile (2.11) cannot trace it
        autocast = torch.is_autocast_enabled(device)
    else:
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else xz.dtype
    group = 0
    scan_kernel = name == "triton" and dtype in _TRITON_SCAN_DTYPES
    if name == "triton":
        from zigma.ssm.ops import triton_conv, triton_gate, triton_scan  # noqa: F401  (the ops)

        group = triton_scan.CONFIG.group
    flat = []
    for w, order in zip(branches, orders, strict=True):
        flat += [_order32(order), *w.tensors()]
        ops.record_scan(name, xz.shape[0], dim, xz.shape[1], n_state)
    inputs = [xz, out_weight, out_bias, *flat]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    plan = _Plan(
        name, name == "triton", scan_kernel, dtype, rank, n_state, float(scale), group, save
    )
    return _Branches.apply(plan, xz, out_weight, out_bias, *flat)
