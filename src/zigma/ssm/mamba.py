"""Mamba-1 mixer (``Mamba``): in_proj -> causal depthwise conv -> selective scan -> out_proj.

Supports scanning the tokens in an arbitrary order (ZigMa's zigzag scans), the Vision-Mamba
bidirectional variant and K orders at once (``ParallelMamba``, the paper's Fig. 6c/d baseline);
the scan itself goes through ``zigma.ssm.ops``. With the Triton backend everything after in_proj
is one op, ``zigma.ssm.ops.branch.mamba_branches``, whose kernels fold the orders into their
indexing (no gather/scatter); the PyTorch backends keep the gather path below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from zigma.ssm.ops import resolve_backend, selective_scan
from zigma.ssm.ops._checks import check_index
from zigma.ssm.ops.branch import BranchWeights, mamba_branches, scan_param

__all__ = ["Mamba", "ParallelMamba"]


def _tag_fp32(param: nn.Parameter, *, no_reinit: bool = False) -> nn.Parameter:
    """Mark a parameter as kept in (at least) fp32 and excluded from weight decay."""
    param._no_weight_decay = True  # type: ignore[attr-defined]
    param._keep_fp32 = True  # type: ignore[attr-defined]
    if no_reinit:
        param._no_reinit = True  # type: ignore[attr-defined]
    return param


class Mamba(nn.Module):
    """Mamba-1 selective-SSM token mixer (Gu & Dao, 2023), optionally bidirectional.

    ``x -> in_proj -> (x, z)``; ``x -> causal depthwise conv1d -> SiLU``; ``x_proj(x) ->
    (dt, B, C)``; ``delta = dt_proj.weight @ dt`` (its bias goes to the scan as ``delta_bias``
    with softplus, so it is added in fp32); ``y = scan(x, delta, A, B, C, D, z)``;
    ``out_proj(y)``. With ``bidirectional`` (Vision Mamba "v2") a second conv/x_proj/dt_proj/
    A/D set scans the flipped sequence and both gated branch outputs are summed.

    Attributes:
        d_inner: ``expand * d_model`` channels of the scan.
        dt_rank: rank of the delta projection.
        A_log, D: fp32 (fp64 for fp64 modules) scan parameters, tagged ``_keep_fp32`` and
            ``_no_weight_decay`` like ``dt_proj.bias`` (which is also ``_no_reinit``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Build the mixer.

        Args:
            d_model: residual-stream width.
            d_state: SSM state size N.
            d_conv: causal conv kernel width.
            expand: ``d_inner = expand * d_model``.
            dt_rank: rank of the delta projection; ``"auto"`` is ``ceil(d_model / 16)``.
            dt_min: smallest initial step size ``softplus(dt_proj.bias)``.
            dt_max: largest initial step size.
            dt_init_floor: lower clamp of the sampled initial step sizes.
            dt_scale: scale of the ``dt_proj.weight`` init range.
            conv_bias: bias in the depthwise conv.
            bias: bias in ``in_proj`` and ``out_proj``.
            bidirectional: add a backward-scanning branch (shared in/out projections).
            backend: selective-scan backend (see ``zigma.ssm.ops.selective_scan``).
            device: parameter device.
            dtype: parameter dtype; ``A_log``, ``D`` and ``dt_proj.bias`` stay fp32 (fp64
                if ``dtype`` is fp64).

        Raises:
            ValueError: on a non-positive size or a bad ``dt_rank`` / ``dt_min``/``dt_max``.
        """
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if expand < 1:
            raise ValueError(f"expand must be >= 1, got {expand}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")

        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max = dt_min, dt_max
        self.dt_init_floor, self.dt_scale = dt_init_floor, dt_scale
        self.bidirectional = bidirectional
        # Training memory switch (not saved with the weights): see ``_run_branch``.
        self.recompute_branches = False
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self._param_dtype = torch.float64 if dtype == torch.float64 else torch.float32

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._make_branch(
            conv_bias, factory
        )
        if bidirectional:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = (
                self._make_branch(conv_bias, factory)
            )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.reset_parameters()

    def _make_branch(
        self, conv_bias: bool, factory: dict
    ) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        d_inner, n = self.d_inner, self.d_state
        conv = nn.Conv1d(
            d_inner,
            d_inner,
            kernel_size=self.d_conv,
            groups=d_inner,
            bias=conv_bias,
            **factory,
        )
        x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False, **factory)
        dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True, **factory)
        # The bias is only ever read in fp32 by the scan, so store it there.
        keep = {"device": dt_proj.weight.device, "dtype": self._param_dtype}
        dt_proj.bias = _tag_fp32(nn.Parameter(torch.empty(d_inner, **keep)), no_reinit=True)
        A_log = _tag_fp32(nn.Parameter(torch.empty(d_inner, n, **keep)))
        D = _tag_fp32(nn.Parameter(torch.empty(d_inner, **keep)))
        return conv, x_proj, dt_proj, A_log, D

    def _branches(self) -> list[tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]]:
        branches = [(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)]
        if self.bidirectional:
            branches.append((self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b))
        return branches

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: S4D-real ``A``, ``D = 1`` and the dt (step size) init.

        ``dt_proj.weight ~ U(+-dt_scale / sqrt(dt_rank))``; ``dt ~ exp(U(log dt_min,
        log dt_max))`` clamped below at ``dt_init_floor``; ``dt_proj.bias = softplus^-1(dt)``.
        The linear layers and convs keep torch's default init.
        """
        if self.in_proj.weight.is_meta:
            return  # built for its shapes only (e.g. to count parameters): no values to set
        for module in (self.in_proj, self.out_proj):
            module.reset_parameters()
        for branch in self._branches():
            self._reset_branch(*branch)

    @torch.no_grad()
    def _reset_branch(
        self,
        conv: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: nn.Parameter,
        D: nn.Parameter,
    ) -> None:
        """``reset_parameters`` for one scan direction's conv, projections, ``A`` and ``D``."""
        if A_log.is_meta:
            return
        conv.reset_parameters()
        x_proj.reset_parameters()
        bound = self.dt_rank**-0.5 * self.dt_scale
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(dt_proj.bias) * (hi - lo) + lo)
        dt = dt.clamp(min=self.dt_init_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        n = torch.arange(1, self.d_state + 1, dtype=A_log.dtype, device=A_log.device)
        A_log.copy_(torch.log(n).expand_as(A_log))
        D.fill_(1.0)

    def _run_branch(self, branch: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        """``branch(*args)`` (conv, projections, scan, gate of one direction). With
        ``recompute_branches`` and grad enabled, only the branch's inputs are kept for the
        backward, which reruns the branch: the conv output, delta, the scan's checkpoints and
        pre-gate output (about 15 KB per token at d_inner 1536) are not held between the
        passes, for a second branch forward in the backward."""
        if self.recompute_branches and torch.is_grad_enabled():
            return checkpoint(branch, *args, use_reentrant=False)
        return branch(*args)

    def _scan_branch(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        conv: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: nn.Parameter,
        D: nn.Parameter,
    ) -> torch.Tensor:
        """Conv + SiLU + selective scan + gate for one direction; ``[b, d, L] -> [b, d, L]``."""
        # Causal: left-pad by d_conv - 1 so output t sees inputs t-d_conv+1..t. Equivalent to
        # mamba_ssm's symmetric padding + keeping the first L outputs, without computing the
        # d_conv - 1 discarded ones.
        x = F.silu(conv(F.pad(x, (self.d_conv - 1, 0))))  # [b, d_inner, L]
        x_dbl = x_proj(rearrange(x, "b d l -> b l d"))  # [b, L, dt_rank + 2N]
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight)  # bias added in fp32 by the scan   [b, L, d_inner]
        return selective_scan(
            x,
            rearrange(delta, "b l d -> b d l"),
            -torch.exp(scan_param(A_log)),  # [d_inner, N]
            rearrange(B, "b l n -> b n l"),
            rearrange(C, "b l n -> b n l"),
            scan_param(D),
            z=z,
            delta_bias=scan_param(dt_proj.bias),
            delta_softplus=True,
            backend=self.backend,
        )  # [b, d_inner, L]

    def forward(
        self,
        x: torch.Tensor,
        order: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix the tokens of ``x``, scanning them in ``order`` if given.

        Args:
            x: ``[batch, L, d_model]`` in raster (residual-stream) order.
            order: optional gather index ``[L]`` (a permutation): scanned position ``m`` holds
                token ``order[m]``.
            inverse: optional inverse permutation of ``order`` (``argsort(order)`` if omitted;
                not needed by the Triton path).

        Returns:
            ``[batch, L, d_model]`` in raster order.

        Raises:
            ValueError: if ``x`` is not ``[batch, L, d_model]`` or ``order``/``inverse`` are not
                integer ``[L]`` tensors.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be [batch, L, d_model] with d_model = {self.d_model}, got {list(x.shape)}"
            )
        length = x.shape[1]
        if order is not None:
            check_index("order", order, length)
            if inverse is not None:
                check_index("inverse", inverse, length)
        if resolve_backend(self.backend, x.device) == "triton":
            orders = [order]
            if self.bidirectional:
                if order is None:
                    order = torch.arange(length, device=x.device)
                orders.append(order.flip(0))
            return self._mix_tokens(x, orders)
        return self._forward_gathered(x, order, inverse)

    def _branch_weights(self) -> list[BranchWeights]:
        return [
            BranchWeights(conv.weight.squeeze(1), conv.bias, x_proj.weight, dt_proj.weight,
                          dt_proj.bias, A_log, D)
            for conv, x_proj, dt_proj, A_log, D in self._branches()
        ]  # fmt: skip

    def _mix_tokens(self, x: torch.Tensor, orders: list, scale: float = 1.0) -> torch.Tensor:
        """Triton path: in_proj, then every branch, the gate and out_proj in one op
        (``zigma.ssm.ops.branch.mamba_branches``) that reads token rows through the orders."""
        xz = self.in_proj(x)  # [b, L, 2 d_inner], raster order
        args = (xz, self._branch_weights(), orders, self.out_proj.weight, self.out_proj.bias)
        kwargs = {"scale": scale, "backend": self.backend}
        if self.recompute_branches and torch.is_grad_enabled():
            # The op already recomputes the cheap parts; this also reruns its scans.
            return checkpoint(partial(mamba_branches, **kwargs), *args, use_reentrant=False)
        return mamba_branches(*args, **kwargs)  # [b, L, d_model]

    def _forward_gathered(
        self, x: torch.Tensor, order: torch.Tensor | None, inverse: torch.Tensor | None
    ) -> torch.Tensor:
        """PyTorch-scan path: gather into scan order, ``[b, d, L]`` layout, scatter back."""
        if order is not None:
            if inverse is None:
                inverse = torch.argsort(order)
            # in_proj is token-wise, so gathering its (narrower) input equals permuting its output.
            x = x[:, order]  # scan order   [b, L, d_model]

        xz = self.in_proj(x)  # [b, L, 2 d_inner]
        xs, z = rearrange(xz, "b l (two d) -> two b d l", two=2)  # [b, d_inner, L] each
        branches = self._branches()
        y = self._run_branch(self._scan_branch, xs, z, *branches[0])  # [b, d_inner, L]
        if self.bidirectional:
            y_b = self._run_branch(self._scan_branch, xs.flip(-1), z.flip(-1), *branches[1])
            y = y + y_b.flip(-1)  # [b, d_inner, L]
        out = self.out_proj(rearrange(y, "b d l -> b l d"))  # [b, L, d_model]
        if order is not None:
            out = out[:, inverse]  # back to raster order
        return out


class _ScanPath(nn.Module):
    """The parameters one extra scan order of ``ParallelMamba`` owns (a Mamba branch)."""

    def __init__(self, conv1d, x_proj, dt_proj, A_log, D) -> None:
        super().__init__()
        self.conv1d, self.x_proj, self.dt_proj = conv1d, x_proj, dt_proj
        self.A_log, self.D = A_log, D

    def branch(self) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]:
        return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D


class ParallelMamba(Mamba):
    """K-direction parallel Mamba: every call scans the same tokens in K orders at once.

    The "Parallel Mamba" baseline of the ZigMa paper (§2 and Fig. 6c/d; VMamba / LocalMamba
    style): in_proj and out_proj are shared, each order has its own conv1d, x_proj, dt_proj,
    ``A_log`` and ``D`` (the first order uses the attributes of ``Mamba``, orders 1..K-1 live
    in ``extra_paths``), and the K gated scan outputs are **averaged** before out_proj::

        out = out_proj(mean_k scatter_k(scan_k(gather_k(in_proj(x)))))

    which equals the mean of K single-order ``Mamba`` mixers sharing in_proj/out_proj. The mean
    (not the sum of Vim's bidirectional v2) keeps the output scale independent of K; with
    orders ``[o, o.flip(0)]`` it is ``Mamba(bidirectional=True)`` with out_proj halved.

    Parameters grow linearly with K: ``2*D*E + E*D`` (shared) plus, per order,
    ``E*(d_conv + 1) + E*(R + 2N) + R*E + E + E*N + E`` with ``E = expand*D``,
    ``R = dt_rank``; at D=768 one order is about 0.23 M, 4.2 % of a ZigMa block. FLOPs of
    the conv and scan grow K-fold, the projections' do not.
    """

    def __init__(self, d_model: int, num_paths: int, **kwargs) -> None:
        """Build the mixer: ``num_paths`` (K >= 1) scan orders; ``kwargs`` as for ``Mamba``
        (``bidirectional`` is not accepted: pass the flipped order as a path instead)."""
        if num_paths < 1:
            raise ValueError(f"num_paths must be >= 1, got {num_paths}")
        if kwargs.get("bidirectional"):
            raise ValueError("ParallelMamba takes its directions as orders, not bidirectional")
        super().__init__(d_model, **kwargs)  # shared projections and path 0, initialised
        self.num_paths = num_paths
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        conv_bias = kwargs.get("conv_bias", True)
        self.extra_paths = nn.ModuleList(
            _ScanPath(*self._make_branch(conv_bias, factory)) for _ in range(num_paths - 1)
        )
        for path in self.extra_paths:
            self._reset_branch(*path.branch())

    def _branches(self) -> list[tuple[nn.Conv1d, nn.Linear, nn.Linear, nn.Parameter, nn.Parameter]]:
        extra = self._modules.get("extra_paths") or ()  # absent while Mamba.__init__ runs
        return super()._branches() + [path.branch() for path in extra]

    def forward(
        self,
        x: torch.Tensor,
        orders: torch.Tensor,
        inverses: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix the tokens of ``x`` along K orders and average.

        Args:
            x: ``[batch, L, d_model]`` in raster (residual-stream) order.
            orders: ``[K, L]`` gather indices (permutations), one row per path.
            inverses: optional ``[K, L]`` inverse permutations (``argsort`` if omitted).

        Returns:
            ``[batch, L, d_model]`` in raster order.

        Raises:
            ValueError: on a malformed ``x``, or ``orders``/``inverses`` not ``[K, L]``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must be [batch, L, d_model] with d_model = {self.d_model}, got {list(x.shape)}"
            )
        length, k = x.shape[1], self.num_paths
        for name, index in (("orders", orders), ("inverses", inverses)):
            if index is None:
                continue
            if not isinstance(index, torch.Tensor) or index.dim() != 2 or index.shape[0] != k:
                got = list(index.shape) if isinstance(index, torch.Tensor) else type(index)
                raise ValueError(f"{name} must be [K, L] = [{k}, {length}], got {got}")
            for row in index:
                check_index(name, row, length)
        if resolve_backend(self.backend, x.device) == "triton":
            return self._mix_tokens(x, list(orders), scale=1.0 / k)
        xz = self.in_proj(x)  # [b, L, 2 d_inner], raster order
        if inverses is None:
            inverses = torch.argsort(orders, dim=-1)
        y = 0
        for order, inverse, branch in zip(orders, inverses, self._branches(), strict=True):
            xs, z = rearrange(xz[:, order], "b l (two d) -> two b d l", two=2)
            y_k = self._run_branch(self._scan_branch, xs, z, *branch)  # [b, d_inner, L]
            y = y + y_k[..., inverse]  # raster order
        y = rearrange(y, "b d l -> b l d")
        return self.out_proj(y / k)  # [b, L, d_model]
