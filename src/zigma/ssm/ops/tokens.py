"""Token-layout conv and scan: ``[batch, L, dim]`` tensors in token (raster) order, with the
scan order passed as an index instead of applied by a gather.

The references gather rows into scan order, run the ``[batch, dim, L]`` ops, and scatter the
result back; ``conv_tokens`` / ``scan_tokens`` dispatch to the Triton kernels, which fold the
order into their indexing, when the resolved backend is ``"triton"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import zigma.ssm.ops as ops
from zigma.ssm.ops._checks import (
    check_conv_tokens_args,
    check_index,
    check_scan_inputs,
    compute_dtype,
    describe_shape,
    no_autocast,
)

__all__ = [
    "causal_conv1d_tokens_ref",
    "conv_tokens",
    "scan_tokens",
    "selective_scan_tokens_ref",
]


def _to_tokens(y: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Scatter rows computed in scan order back to token order (``out[:, order[m]] = y[:, m]``)."""
    if order is None:
        return y
    return torch.zeros_like(y).index_copy(1, order.long(), y)


def causal_conv1d_tokens_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Reference for ``causal_conv1d_tokens``: gather, ``F.conv1d`` with left padding, scatter.

    Args:
        x: ``[batch, L, dim]``.
        weight: ``[dim, W]``.
        bias: optional ``[dim]``.
        order: optional integer ``[L]`` permutation; scan step ``m`` reads token ``order[m]``.
        activation: ``"silu"`` or ``None``.

    Returns:
        ``[batch, L, dim]`` in x's dtype (computed in fp32, fp64 for fp64 inputs), token order.

    Raises:
        ValueError: on malformed inputs.
    """
    check_conv_tokens_args(x, weight, bias, order, activation)
    with no_autocast(x.device):
        ct = compute_dtype(x, weight, bias)
        xs = x if order is None else x[:, order]  # scan order   [b, L, d]
        xs = F.pad(xs.transpose(1, 2).to(ct), (weight.shape[1] - 1, 0))  # [b, d, W - 1 + L]
        b = None if bias is None else bias.to(ct)
        y = F.conv1d(xs, weight.to(ct).unsqueeze(1), b, groups=x.shape[2])  # [b, d, L]
        if activation == "silu":
            y = F.silu(y)
    return _to_tokens(y.transpose(1, 2).to(x.dtype), order)


def selective_scan_tokens_ref(
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
    *,
    backend: str = "chunked",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference for ``selective_scan_tokens``: gather, ``selective_scan`` on ``[b, d, L]``,
    scatter.

    Args:
        u, delta, z: ``[batch, L, dim]`` in token order (z optional).
        A: ``[dim, N]``.
        B, C: ``[batch, L, N]`` in token order.
        D, delta_bias: optional ``[dim]``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        order: optional integer ``[L]`` permutation; scan step ``m`` reads and writes token
            row ``order[m]``.
        return_last_state: also return the state after the last scan step.
        backend: a PyTorch ``selective_scan`` backend ("chunked", "reference").

    Returns:
        ``y`` ``[batch, L, dim]`` in token order, or ``(y, last_state [batch, dim, N])``.

    Raises:
        ValueError: on malformed inputs.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be [batch, L, dim], got {describe_shape(u)}")
    if order is not None:
        check_index("order", order, u.shape[1], u.device)

    def to_scan(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        if t.dim() != 3:
            raise ValueError(
                f"token-layout scan inputs must be [batch, L, *], got {describe_shape(t)}"
            )
        return (t if order is None else t[:, order]).transpose(1, 2)  # [b, *, L] scan order

    args = (*map(to_scan, (u, delta)), A, *map(to_scan, (B, C)), D, to_scan(z), delta_bias)
    check_scan_inputs(*args)
    # The backend's function itself, not ops.selective_scan: scan_tokens records the call.
    fn = ops.BACKENDS[ops.resolve_backend(backend, u.device)].fn
    out = fn(*args, delta_softplus, return_last_state)
    y, last = out if return_last_state else (out, None)
    y = _to_tokens(y.transpose(1, 2), order)  # [b, L, d]
    return (y, last) if return_last_state else y


def conv_tokens(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    activation: str | None = "silu",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Token-layout causal depthwise conv: the Triton kernel if ``backend`` resolves to
    ``"triton"`` on x's device, else ``causal_conv1d_tokens_ref`` (arguments as there).

    Raises:
        ValueError: on malformed inputs or an unknown backend.
        RuntimeError: if the requested backend is unavailable on x's device.
    """
    if ops.resolve_backend(backend, x.device) == "triton":
        return _triton_conv()(x, weight, bias, order, activation)
    return causal_conv1d_tokens_ref(x, weight, bias, order, activation)


def scan_tokens(
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
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Token-layout selective scan: the Triton kernel if ``backend`` resolves to ``"triton"``
    on u's device, else ``selective_scan_tokens_ref`` with that backend (arguments as there).

    Either way the call is seen by ``last_backend`` and ``count_scan_flops``.

    Raises:
        ValueError: on malformed inputs or an unknown backend.
        RuntimeError: if the requested backend is unavailable on u's device.
    """
    name = ops.resolve_backend(backend, u.device)
    fn = _triton_scan() if name == "triton" else selective_scan_tokens_ref
    kwargs = {} if name == "triton" else {"backend": name}
    out = fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, order, return_last_state, **kwargs
    )
    batch, length, dim = u.shape
    ops.record_scan(name, batch, dim, length, A.shape[-1])
    return out


# The Triton modules import triton (and must follow TRITON_INTERPRET), so load them on first use.
def _triton_conv():
    from zigma.ssm.ops.triton_conv import causal_conv1d_tokens

    return causal_conv1d_tokens


def _triton_scan():
    from zigma.ssm.ops.triton_scan import selective_scan_tokens

    return selective_scan_tokens
