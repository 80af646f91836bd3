"""Reference selective scan: a plain sequential loop over the sequence.

It is the test oracle for every fast path, so it favours obviousness over speed: one
(batch, dim, N) state, updated token by token, differentiated by plain autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zigma.ssm.ops._checks import check_scan_inputs, compute_dtype, no_autocast


def selective_scan_ref(
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
    """Mamba-1 selective scan, computed step by step.

    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` with ``h_{-1} = 0`` and
    ``y_t = sum_n C_t * h_t``, then ``y += D * u`` and ``y *= silu(z)`` when given.

    Args:
        u: input ``[batch, dim, L]``.
        delta: step sizes ``[batch, dim, L]`` (before bias/softplus).
        A: state matrix diagonal ``[dim, N]``.
        B: input projection ``[batch, N, L]``.
        C: output projection ``[batch, N, L]``.
        D: optional skip weight ``[dim]``.
        z: optional gate ``[batch, dim, L]``.
        delta_bias: optional ``[dim]`` added to delta before the softplus.
        delta_softplus: apply ``softplus`` to delta.
        return_last_state: also return the final state.

    Returns:
        ``y`` ``[batch, dim, L]`` in u's dtype, and with ``return_last_state`` the final state
        ``[batch, dim, N]`` in the compute dtype (fp32, or fp64 for fp64 inputs).

    Raises:
        ValueError: on malformed inputs (see ``check_scan_inputs``).
    """
    batch, dim, length, n_state = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    with no_autocast(u.device):
        ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        uf, dt, Af, Bf, Cf = (t.to(ct) for t in (u, delta, A, B, C))
        if delta_bias is not None:
            dt = dt + delta_bias.to(ct)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)

        h = uf.new_zeros(batch, dim, n_state)
        ys = []
        for t in range(length):
            decay = torch.exp(dt[:, :, t, None] * Af)  # [batch, dim, N]
            drive = (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bf[:, None, :, t]  # [batch, dim, N]
            h = decay * h + drive
            ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, :, t]))
        y = torch.stack(ys, dim=-1)  # [batch, dim, L]

        if D is not None:
            y = y + D.to(ct)[:, None] * uf
        if z is not None:
            y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y
