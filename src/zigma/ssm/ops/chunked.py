"""Chunked selective scan: the fast pure-PyTorch path (CPU default, works on any device).

The sequence is cut into chunks and the recurrence advances the same in-chunk position of
every chunk at once, so Python loops ~2 x chunk_size + L / chunk_size times over large,
cache-sized tensors instead of L times over tiny ones. Backward recomputes the states.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from zigma.ssm.ops._checks import check_scan_inputs, compute_dtype, no_autocast

# Chosen by measurement (fwd+bwd, batch 2, dim 768, N 16, fp32, 2-core CPU): 64 was within
# ~10% of the best chunk size at L = 256, 1024 and 4096 with both 1 and 2 threads, while 32
# and 256 each lost 20-30% somewhere. Larger chunks mean more (smaller) per-step ops, smaller
# ones a longer carry loop and per-step tensors that spill out of L2.
DEFAULT_CHUNK_SIZE = 64

# Backward keeps the decays and states of a group of chunks (2 x chunk_size + 1 tensors of
# [chunks, batch, dim, N]); chunks are processed in groups of at most this many elements so
# peak memory stays bounded independently of L.
BACKWARD_GROUP_ELEMENTS = 1 << 25

# torch's CPU exp leaves its vector path (~100-200x slower) when the result is subnormal, and
# subnormal products slow every later multiply, so the log-decay delta*A is floored. A decay
# of exp(-60) ~ 9e-27 (fp32) or exp(-700) (fp64) is indistinguishable from the true one after
# adding the next token's drive; only exactly-zero-input stretches see a (tiny, absolute) change.
_LOG_DECAY_FLOOR = {torch.float32: -60.0, torch.float64: -700.0}


def _transpose(x: torch.Tensor) -> torch.Tensor:
    """Contiguous ``x.transpose(1, 2)`` for ``[batch, P, Q]``.

    torch's copy walks the output with a page-sized input stride; going through small square
    tiles keeps both sides cache-friendly (3x faster at [2, 768, 1024] on CPU).
    """
    batch, p, q = x.shape
    tile = next((t for t in (32, 16, 8) if p % t == 0 and q % t == 0), 0)
    if not tile or x.device.type != "cpu" or not x.is_contiguous():
        return x.transpose(1, 2).contiguous()
    x = x.reshape(batch, p // tile, tile, q // tile, tile)
    x = x.permute(0, 3, 1, 2, 4).contiguous()  # [batch, Q/t, P/t, t_p, t_q]
    x = x.transpose(-1, -2).contiguous()  # [batch, Q/t, P/t, t_q, t_p]
    return x.permute(0, 1, 3, 2, 4).reshape(batch, q, p)


def _to_steps(x: torch.Tensor, T: int, K: int) -> torch.Tensor:
    """``[batch, X, L]`` -> ``[T, K, batch, X]``: step-major so ``x[j]`` is one contiguous slab."""
    x = _transpose(x)  # [batch, L, X]
    pad = T * K - x.shape[1]
    if pad:
        # Zero delta makes the padded steps identities (decay 1, drive 0).
        x = F.pad(x, (0, 0, 0, pad))
    batch, _, width = x.shape
    return x.reshape(batch, K, T, width).permute(2, 1, 0, 3).contiguous()


def _from_steps(x: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of ``_to_steps``: ``[T, K, batch, X]`` -> ``[batch, X, L]`` (padding dropped)."""
    T, K, batch, width = x.shape
    x = x.permute(2, 1, 0, 3).reshape(batch, K * T, width)
    if length != K * T:
        x = x[:, :length]
    return _transpose(x.contiguous())


def _decay_floor(delta: torch.Tensor, A: torch.Tensor) -> float | None:
    """The floor for ``delta * A``, or ``None`` when no product can fall below it.

    Bounding the products by the extremes of delta and A costs two reductions and saves a
    clamp per step in the common case of moderate decays.
    """
    floor = _LOG_DECAY_FLOOR[delta.dtype]
    d_lo, d_hi = delta.aminmax()
    a_lo, a_hi = A.aminmax()
    lowest = torch.stack([d_lo * a_lo, d_lo * a_hi, d_hi * a_lo, d_hi * a_hi]).min()
    return None if lowest.item() >= floor else floor


def _decay(delta: torch.Tensor, A: torch.Tensor, floor: float | None) -> torch.Tensor:
    """``exp(max(delta * A, floor))`` for ``delta [..., dim, 1]`` -> ``[..., dim, N]``."""
    log_decay = delta * A
    if floor is not None:
        log_decay.clamp_(min=floor)
    return log_decay.exp_()


def _total_decay(dl: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Decay over whole chunks, ``[K, batch, dim, N]`` from ``dl [T, K, batch, dim]``.

    Chunk sums reach far lower than single steps, so these are always floored.
    """
    return _decay(dl.sum(0).unsqueeze(-1), A, _LOG_DECAY_FLOOR[dl.dtype])


class _Steps(NamedTuple):
    """Per-step views of the step-major inputs, shaped to broadcast against a state.

    ``x[j]`` of each field is one cheap ``select``; building the views once keeps the Python
    overhead of the ~100-step loops low.
    """

    dl: torch.Tensor  # delta          [T, K, batch, dim, 1]
    du: torch.Tensor  # delta * u      [T, K, batch, dim, 1]
    du_row: torch.Tensor  # delta * u  [T, K, batch, 1, dim]
    B: torch.Tensor  # [T, K, batch, 1, N]
    B_col: torch.Tensor  # [T, K, batch, N, 1]
    C: torch.Tensor  # [T, K, batch, 1, N]
    C_col: torch.Tensor  # [T, K, batch, N, 1]

    @classmethod
    def build(
        cls, dl: torch.Tensor, du: torch.Tensor, Bt: torch.Tensor, Ct: torch.Tensor
    ) -> _Steps:
        """Views of ``dl``, ``du`` ``[T, K, batch, dim]``, ``Bt``, ``Ct`` ``[T, K, batch, N]``."""
        col, row = (lambda x: x.unsqueeze(-1)), (lambda x: x.unsqueeze(-2))
        return cls(col(dl), col(du), row(du), row(Bt), col(Bt), row(Ct), col(Ct))

    def chunks(self, ks: slice) -> _Steps:
        """The same views restricted to the chunks ``ks``."""
        return _Steps(*(x[:, ks] for x in self))


def _chunk_initial_states(
    steps: _Steps, dl: torch.Tensor, A: torch.Tensor, floor: float | None
) -> torch.Tensor:
    """State entering each chunk, ``[K, batch, dim, N]``.

    Every chunk but the last is scanned from a zero state (all at once), then the end states
    are chained through the chunks' total decays: ``h_in[k] = P[k-1] h_in[k-1] + e[k-1]``.
    """
    T, K, batch, dim = dl.shape
    h_in = dl.new_zeros(K, batch, dim, A.shape[1])
    if K == 1:
        return h_in
    head = steps.chunks(slice(0, K - 1))
    end = torch.zeros_like(h_in[:-1])
    for j in range(T):
        end.mul_(_decay(head.dl[j], A, floor)).addcmul_(head.du[j], head.B[j])
    total = _total_decay(dl[:, :-1], A)
    for k in range(1, K):
        torch.addcmul(end[k - 1], total[k - 1], h_in[k - 1], out=h_in[k])
    return h_in


def _chunk_final_grads(
    steps: _Steps,
    dl: torch.Tensor,
    dyt: torch.Tensor,
    A: torch.Tensor,
    floor: float | None,
    dlast: torch.Tensor | None,
    decays: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Gradient reaching each chunk's last state from later tokens, ``[K, batch, dim, N]``.

    The adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` is the forward recurrence run backwards,
    so it is chunked the same way: every chunk but the first is reverse-scanned from zero,
    then the results are chained backwards through the chunks' total decays. ``decays``
    (per-step decays of all chunks), when given, saves recomputing them.
    """
    T, K, batch, dim = dl.shape
    g_end = dl.new_zeros(K, batch, dim, A.shape[1])
    if dlast is not None:
        g_end[-1] = dlast
    if K == 1:
        return g_end
    tail = steps.chunks(slice(1, K))
    dy = dyt[:, 1:].unsqueeze(-1)
    start = torch.zeros_like(g_end[1:])  # a_first * g_first of chunks 1..K-1
    for j in reversed(range(T)):
        start.addcmul_(dy[j], tail.C[j])
        start.mul_(decays[j][1:] if decays is not None else _decay(tail.dl[j], A, floor))
    total = _total_decay(dl[:, 1:], A)
    for k in reversed(range(K - 1)):
        torch.addcmul(start[k], total[k], g_end[k + 1], out=g_end[k])
    return g_end


def _recompute(
    steps: _Steps, h0: torch.Tensor, A: torch.Tensor, floor: float | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-step decays and states (``states[j]`` = state before step j) from ``h0``.

    Lists of per-step tensors rather than one buffer: blocks this size are recycled by the
    allocator across calls, while one huge block would be page-faulted in anew each time.
    """
    decays, states = [], [h0]
    for j in range(steps.dl.shape[0]):
        decays.append(_decay(steps.dl[j], A, floor))
        states.append(torch.mul(decays[j], states[j]).addcmul_(steps.du[j], steps.B[j]))
    return decays, states


class _ChunkedScanFn(torch.autograd.Function):
    """Core scan ``y_t = C_t . h_t`` on prepared inputs, with a recomputing backward.

    Inputs are in the compute dtype and delta is final (bias and softplus applied). Saves only
    the inputs and the K chunk-initial states; backward rebuilds states a group of chunks at a
    time.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        chunk_size: int,
        group_elements: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length = u.shape[-1]
        K = math.ceil(length / chunk_size)
        T = math.ceil(length / K)  # balance the chunks so padding stays below K tokens
        floor = _decay_floor(delta, A)
        dl, ut, Bt, Ct = (_to_steps(t, T, K) for t in (delta, u, B, C))
        steps = _Steps.build(dl, dl * ut, Bt, Ct)

        h_in = _chunk_initial_states(steps, dl, A, floor)  # [K, batch, dim, N]
        h = h_in.clone()
        y = torch.empty_like(dl).unsqueeze(-1)  # [T, K, batch, dim, 1]
        for j in range(T):
            h.mul_(_decay(steps.dl[j], A, floor)).addcmul_(steps.du[j], steps.B[j])
            torch.matmul(h, steps.C_col[j], out=y[j])  # sum_n C h

        ctx.save_for_backward(ut, dl, A, Bt, Ct, h_in)
        ctx.length = length
        ctx.floor = floor
        ctx.group_elements = group_elements
        ctx.set_materialize_grads(False)
        return _from_steps(y.squeeze(-1), length), h[-1].clone()  # padded steps: identities

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        dy: torch.Tensor | None,
        dlast: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors  # unpack once: checkpointing forbids a second unpack
        with no_autocast(saved[0].device):
            return _ChunkedScanFn._backward(ctx, saved, dy, dlast)

    @staticmethod
    def _backward(
        ctx: torch.autograd.function.FunctionCtx,
        saved: tuple[torch.Tensor, ...],
        dy: torch.Tensor | None,
        dlast: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        ut, dl, A, Bt, Ct, h_in = saved
        T, K, batch, dim = dl.shape
        floor, length = ctx.floor, ctx.length
        if dy is None and dlast is None:
            return (None,) * 7
        if dy is None:
            dy = ut.new_zeros(batch, dim, length)
        dyt = _to_steps(dy.to(ut.dtype), T, K)
        if dlast is not None:
            dlast = dlast.to(ut.dtype)
        du = dl * ut
        steps = _Steps.build(dl, du, Bt, Ct)

        gB = torch.empty_like(dl).unsqueeze(-1)  # sum_n g B        [T, K, batch, dim, 1]
        dd_decay = torch.empty_like(dl)  # d/d delta through the decay  [T, K, batch, dim]
        dB = torch.empty_like(Bt).unsqueeze(-2)  # [T, K, batch, 1, N]
        dC = torch.empty_like(Ct).unsqueeze(-2)  # [T, K, batch, 1, N]
        dA = torch.zeros_like(A)

        per_chunk = (2 * T + 1) * batch * dim * A.shape[1]
        group = max(1, ctx.group_elements // per_chunk)
        cached = None
        if group >= K:  # one group: recompute first and reuse its decays for the carries
            cached = _recompute(steps, h_in, A, floor)
        g_end = _chunk_final_grads(steps, dl, dyt, A, floor, dlast, cached[0] if cached else None)
        for k0 in range(0, K, group):
            ks = slice(k0, min(K, k0 + group))
            decays, states = cached or _recompute(steps.chunks(ks), h_in[ks], A, floor)
            cached = None
            s = steps.chunks(ks)
            dy_col, dy_row = dyt[:, ks].unsqueeze(-1), dyt[:, ks].unsqueeze(-2)
            g = g_end[ks].clone()  # dL/dh, carried backwards through the steps
            w = torch.empty_like(g)
            dA_acc = torch.zeros_like(g)
            for j in reversed(range(T)):
                g.addcmul_(dy_col[j], s.C[j])  # dL/dh_j
                torch.matmul(dy_row[j], states[j + 1], out=dC[j, ks])
                torch.matmul(g, s.B_col[j], out=gB[j, ks])
                torch.matmul(s.du_row[j], g, out=dB[j, ks])
                g.mul_(decays[j])  # a_j g_j: the adjoint carried into step j-1
                torch.mul(g, states[j], out=w)  # dL/d(log a_j) = a_j g_j h_{j-1}
                dA_acc.addcmul_(w, s.dl[j])
                torch.sum(w.mul_(A), dim=-1, out=dd_decay[j, ks])
                states[j + 1] = decays[j] = None  # free as we go
            dA += dA_acc.sum((0, 1))

        gB = gB.squeeze(-1)
        d_u = _from_steps(dl * gB, length)
        d_delta = _from_steps(torch.addcmul(dd_decay, ut, gB), length)
        d_B = _from_steps(dB.squeeze(-2), length)
        d_C = _from_steps(dC.squeeze(-2), length)
        return d_u, d_delta, dA, d_B, d_C, None, None


def selective_scan_chunked(
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
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, chunk-parallel; same semantics as ``selective_scan_ref``.

    Algorithm (the recurrence is linear, ``h_t = a_t h_{t-1} + x_t``): split L into K balanced
    chunks of T tokens and lay every input out step-major (``[T, K, batch, ...]``). (1) Scan
    all chunks but the last from a zero state, advancing in-chunk step j of every chunk with
    one tensor op, to get their end states; (2) chain these through the chunks' total decays
    (a K-step loop) to get each chunk's initial state; (3) scan all chunks again from their
    initial states, contracting with C at each step. Only products of decays <= 1 appear, so
    nothing overflows, and no [batch, dim, L, N] state is ever materialised. Backward runs the
    adjoint recurrence the same way in reverse, recomputing the states of a bounded group of
    chunks at a time from the saved chunk-initial states (peak extra memory about
    ``min(BACKWARD_GROUP_ELEMENTS, 2 L batch dim N)``). The masked, quadratic in-chunk form
    costs T times more exps and was 20-100x slower on CPU.

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
        chunk_size: maximum chunk length; chunks are balanced to ``ceil(L / ceil(L / size))``.

    Returns:
        ``y`` ``[batch, dim, L]`` in u's dtype, and with ``return_last_state`` the final state
        ``[batch, dim, N]`` in the compute dtype (fp32, or fp64 for fp64 inputs).

    Raises:
        ValueError: on malformed inputs or ``chunk_size < 1``.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with no_autocast(u.device):
        ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        uf, dt, Af, Bf, Cf = (t.to(ct) for t in (u, delta, A, B, C))
        if delta_bias is not None:
            dt = dt + delta_bias.to(ct)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)

        y, last = _ChunkedScanFn.apply(uf, dt, Af, Bf, Cf, chunk_size, BACKWARD_GROUP_ELEMENTS)
        if D is not None:
            y = y + D.to(ct)[:, None] * uf
        if z is not None:
            y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y
