"""Triton kernels of the token-layout selective scan (Mamba-1, Gu & Dao 2023, Alg. 2).

A program owns one batch row and ``BLOCK_D`` channels and walks the scan steps in order; step
``m`` reads and writes token row ``order[m]``, so each access is a row of contiguous channels
whatever the order. Tensors are ``[LN, BLOCK_D]`` (lane group x channel): a thread owns ``NR =
N / LN`` states of one channel, held as tuples, so sums over states stay in registers (plus a
shuffle across the LN lanes). The forward does one step per loop iteration, prefetching the
next, and saves the state every ``T`` steps. The backward goes back a group of T steps at a
time and, inside a group, one state at a time: it recomputes that state's T values from the
group's checkpoint, keeps them in registers, walks them back, and sums the state's dB/dC terms
over the tile's channels once per group (a warp reduce-scatter in PTX). Loop bodies are kept
small on purpose: unrolling whole groups of steps and states made them tens of kilobytes of
machine code and the kernels several times slower (BENCHMARKS.md).
fp32 math, ``exp2`` on a pre-scaled ``A``.
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    if FAST:  # one MUFU op; tl.log2 is a software polynomial
        y = tl.inline_asm_elementwise(
            "lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        y = tl.log2(x)
    return y


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    # log(1 + e^x) as one ex2 and one lg2; x above 20 passes through (torch's threshold) and
    # below -15, where 1 + e^x rounds to 1 in fp32, e^x is the value to 1e-7 relative.
    e = tl.exp2(x * _LOG2E)
    sp = _log2(1.0 + e, FAST) * _LN2
    return tl.where(x > 20.0, x, tl.where(x < -15.0, e, sp))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(-x * _LOG2E))


@triton.jit
def _grid(pid_d, one, LN: tl.constexpr, BLOCK_D: tl.constexpr, S: tl.constexpr):
    """Channel ``[LN, BLOCK_D, 1]``, lane group ``[LN, BLOCK_D, 1]`` and third index
    ``[1, 1, S]`` of an ``[LN, BLOCK_D, S]`` tile (size-1 axes: one register per thread).

    All three go through ``one``, a runtime 1: with no provably contiguous axis, load
    coalescing keeps the first axis fastest, so a channel's LN lane groups sit in adjacent
    lanes of one warp (sums over states are shuffles) and the S axis stays in registers.
    Contiguous channels would instead spread a channel's lane groups over warps.
    """
    d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :, None]) * one
    j = tl.arange(0, LN)[:, None, None] * one
    s = tl.arange(0, S)[None, None, :] * one
    return d + j * 0, j + d * 0, s


@triton.jit
def _unstack(x, LN: tl.constexpr, BLOCK_D: tl.constexpr, S: tl.constexpr, LOG_S: tl.constexpr):
    """The S slices ``x[:, :, i]`` of an ``[LN, BLOCK_D, S]`` tile, in order (register moves:
    the S axis is held by each thread)."""
    vals = (x,)
    for lvl in tl.static_range(LOG_S):
        new = ()
        for q in tl.static_range(1 << lvl):
            v = tl.reshape(vals[q], [LN, BLOCK_D, 2, S >> (lvl + 1)])
            lo, hi = tl.split(tl.permute(v, (0, 1, 3, 2)))
            new = new + (lo, hi)
        vals = new
    out = ()
    for q in tl.static_range(S):
        out = out + (tl.reshape(vals[q], [LN, BLOCK_D]),)
    return out


@triton.jit
def _stack(vals, LN: tl.constexpr, BLOCK_D: tl.constexpr, S: tl.constexpr, LOG_S: tl.constexpr):
    """Inverse of ``_unstack``: S ``[LN, BLOCK_D]`` tensors into an ``[LN, BLOCK_D, S]`` tile."""
    cur = ()
    for q in tl.static_range(S):
        cur = cur + (tl.reshape(vals[q], [LN, BLOCK_D, 1]),)
    for lvl in tl.static_range(LOG_S):
        new = ()
        for q in tl.static_range(S >> (lvl + 1)):
            v = tl.permute(tl.join(cur[2 * q], cur[2 * q + 1]), (0, 1, 3, 2))
            new = new + (tl.reshape(v, [LN, BLOCK_D, 2 << lvl]),)
        cur = new
    return cur[0]


@triton.jit
def _load_states(ptr, NR: tl.constexpr, FAST: tl.constexpr):
    """``ptr[0:NR]`` (fp32, 16-byte aligned) as a tuple of NR tensors: 128-bit loads through
    inline PTX on GPU, where Triton would issue one scalar load per value."""
    vals = ()
    if FAST and NR % 4 == 0:
        for q in tl.static_range(NR // 4):
            vals = vals + tl.inline_asm_elementwise(
                "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,l", [ptr + 4 * q],
                dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1,
            )  # fmt: skip
    else:
        for k in tl.static_range(NR):
            vals = vals + (tl.load(ptr + k),)
    return vals


@triton.jit
def _both(block_ok, ok):
    """``block_ok & ok`` for a scalar condition ``ok``, as a select that folds to that ``and``
    when compiled. The interpreter splats a scalar comparison as int32, so ``&`` would make an
    int32 mask, which Triton 3.9's interpreter refuses; the select keeps it boolean (its false
    branch is ``block_ok != block_ok``: a literal False fails in Triton 3.2's interpreter)."""
    return tl.where(ok, block_ok, block_ok != block_ok)


@triton.jit
def _step_row(order_ptr, m, end, length, HAS_ORDER: tl.constexpr, ROW64: tl.constexpr):
    """Token row of scan step ``m`` (always a valid row) and whether the step is real: steps
    at or past ``end`` and rows outside ``[0, length)`` (a malformed order) are identity
    steps."""
    ok = m < end
    if HAS_ORDER:
        row = tl.load(order_ptr + m, mask=ok, other=0)
        ok = ok & (row >= 0) & (row < length)
        row = tl.where(ok, row, 0)
    else:
        row = tl.where(ok, m, 0)
    if ROW64:  # offsets within a batch row may pass 2**31
        row = row.to(tl.int64)
    return row, ok


@triton.jit
def _group_inputs(u_b, dt_b, order_ptr, m, d, d_ok, bias, length, s_ul, s_dl,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr,
                  ROW64: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """Rows, masks, u, delta (processed) and raw delta of the scan steps ``m`` of a group.

    Steps past the end, padded channels and rows outside ``[0, length)`` (a malformed order)
    get delta = 0: decay 1 and no drive, an identity step. Rows are always valid rows.
    """
    row, ok = _step_row(order_ptr, m, length, length, HAS_ORDER, ROW64)
    mask = d_ok & ok
    u = tl.load(u_b + row * s_ul + d, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(dt_b + row * s_dl + d, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += bias
    dt = x
    if SOFTPLUS:
        dt = _softplus(x, FAST)
    dt = tl.where(mask, dt, 0.0)
    return row, mask, u, dt, x


@triton.jit
def _row_loads(pa, sa, pb, sb, pc, sc, bc, s_bcl, row, ok, d, d_ok, NP: tl.constexpr,
               NR: tl.constexpr, HAS_C: tl.constexpr, TWO: tl.constexpr,
               VEC: tl.constexpr):  # fmt: skip
    """The loads of one scan step at token ``row``: the rows of ``a``, ``b`` and (HAS_C)
    ``c`` at channels ``d``, and this lane group's NR states of ``bc`` (and, with TWO, of the
    NP entries after them). Missing ones repeat the first of their kind."""
    mask = _both(d_ok, ok)
    a = tl.load(pa + row * sa + d, mask=mask, other=0.0)
    b = tl.load(pb + row * sb + d, mask=mask, other=0.0)
    c = a
    if HAS_C:
        c = tl.load(pc + row * sc + d, mask=mask, other=0.0)
    first = _load_states(bc + row * s_bcl, NR, VEC)
    second = first
    if TWO:
        second = _load_states(bc + row * s_bcl + NP, NR, VEC)
    return a, b, c, first, second


@triton.jit
def _channel_tile(pid_d, one, a_ptr, bias_ptr, dim, N: tl.constexpr, LN: tl.constexpr,
                  NR: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """A step-at-a-time program's ``[LN, BLOCK_D]`` channel and lane-group indices, channel
    mask, its states' ``A log2(e)`` (NR-tuple), NR zero states and delta's bias."""
    d, j, _ = _grid(pid_d, one, LN, BLOCK_D, 1)
    d = tl.reshape(d, [LN, BLOCK_D])
    j = tl.reshape(j, [LN, BLOCK_D])
    d_ok = d < dim
    a2 = ()
    zero = ()
    for k in tl.static_range(NR):
        n = k * LN + j  # thread (j, d) holds states j, j + LN, ...
        a2 = a2 + (tl.load(a_ptr + d * N + n, mask=d_ok & (n < N), other=0.0) * _LOG2E,)
        zero = zero + (tl.zeros([LN, BLOCK_D], tl.float32),)
    bias = tl.zeros([LN, BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0)
    return d, j, d_ok, a2, zero, bias


@triton.jit(do_not_specialize=["one"])
def _scan_fwd_kernel(u_ptr, dt_ptr, z_ptr, bc_ptr, a_ptr, dskip_ptr, bias_ptr, order_ptr,
                     y_ptr, ypre_ptr, last_ptr, ck_ptr, hloc_ptr, sdt_ptr,
                     length, dim, n_groups, chunk_len, n_chunks, one,
                     s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bcb, s_bcl,
                     N: tl.constexpr, NP: tl.constexpr, LN: tl.constexpr, NR: tl.constexpr,
                     BLOCK_D: tl.constexpr, T: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr, ROW64: tl.constexpr,
                     FAST: tl.constexpr, SAVE: tl.constexpr, LOCAL: tl.constexpr):  # fmt: skip
    """One scan step per iteration (a small loop body), the next step's inputs loaded one
    iteration ahead and its row two ahead. With SAVE (a backward will follow), the state
    after every T steps and the pre-gate output are saved.

    The steps are split into chunks of ``chunk_len``, one program per chunk (program id 2),
    so that short batches still fill the GPU. With LOCAL (pass 1), a program runs its chunk
    from a zero state and stores only the end state (``hloc``) and the chunk's sum of delta
    (``sdt``). Otherwise it first composes the earlier chunks' pass-1 results into its start
    state: a state decays by ``exp(A sum(delta))`` across a chunk, whatever the inputs.
    """
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    d, j, d_ok, a2, h, bias = _channel_tile(tl.program_id(0), one, a_ptr, bias_ptr, dim, N, LN,
                                            NR, BLOCK_D, HAS_BIAS)  # fmt: skip
    if not LOCAL:
        cc = 0
        while cc < c:  # the state entering chunk c, from chunks 0 .. c - 1
            s = tl.load(sdt_ptr + (b * n_chunks + cc) * dim + d, mask=d_ok, other=0.0)
            h_in = ()
            for k in tl.static_range(NR):
                n = k * LN + j
                off = ((b * n_chunks + cc) * N + n) * dim + d
                hl = tl.load(hloc_ptr + off, mask=d_ok & (n < N), other=0.0)
                h_in = h_in + (tl.exp2(s * a2[k]) * h[k] + hl,)
            h = h_in
            cc += 1
    if HAS_D:
        dskip = tl.load(dskip_ptr + d, mask=d_ok, other=0.0)
    u_b, dt_b, z_b = u_ptr + b * s_ub, dt_ptr + b * s_db, z_ptr + b * s_zb
    bc_b = bc_ptr + b * s_bcb + j * NR  # this lane group's states in a row of bc
    y_b = y_ptr + b * length * dim
    ypre_b = ypre_ptr + b * length * dim
    ck_b = ck_ptr + b * (n_groups - 1) * N * dim  # [batch, groups - 1, N, dim]
    dt_sum = tl.zeros([LN, BLOCK_D], tl.float32)
    GATE: tl.constexpr = HAS_Z and not LOCAL

    m = c * chunk_len
    end = tl.minimum(length, m + chunk_len)
    # Vector loads through inline PTX keep the default layout, which differs from the loads'
    # one when LN > 1 (a layout conversion per step): plain loads there.
    VEC: tl.constexpr = FAST and LN == 1
    row, ok = _step_row(order_ptr, m, end, length, HAS_ORDER, ROW64)
    u, x, zz, bt, ct = _row_loads(u_b, s_ul, dt_b, s_dl, z_b, s_zl, bc_b, s_bcl, row, ok, d,
                                  d_ok, NP, NR, GATE, not LOCAL, VEC)  # fmt: skip
    row_1, ok_1 = _step_row(order_ptr, m + 1, end, length, HAS_ORDER, ROW64)
    while m < end:  # a while loop: range() over a runtime bound breaks the interpreter
        # Prefetch step m + 1 and the row of step m + 2.
        u_1, x_1, zz_1, bt_1, ct_1 = _row_loads(u_b, s_ul, dt_b, s_dl, z_b, s_zl, bc_b, s_bcl,
                                                row_1, ok_1, d, d_ok, NP, NR, GATE, not LOCAL,
                                                VEC)  # fmt: skip
        row_2, ok_2 = _step_row(order_ptr, m + 2, end, length, HAS_ORDER, ROW64)
        # Step m.
        mask = _both(d_ok, ok)  # recomputed, not carried: keeps the loop free of layout conversions
        uf = u.to(tl.float32)
        dt = x.to(tl.float32) + bias
        if SOFTPLUS:
            dt = _softplus(dt, FAST)
        dt = tl.where(mask, dt, 0.0)
        dtu = dt * uf
        if LOCAL:
            dt_sum += dt
            h_new = ()
            for k in tl.static_range(NR):
                h_new = h_new + (tl.exp2(dt * a2[k]) * h[k] + dtu * bt[k],)
            h = h_new
        else:
            y = tl.zeros([LN, BLOCK_D], tl.float32)
            h_new = ()
            for k in tl.static_range(NR):
                hk = tl.exp2(dt * a2[k]) * h[k] + dtu * bt[k]
                y += hk * ct[k]
                h_new = h_new + (hk,)
            h = h_new
            if LN > 1:
                y = tl.broadcast_to(tl.sum(y, axis=0)[None, :], [LN, BLOCK_D])
            if HAS_D:
                y += dskip * uf
            out = mask & (j == 0)
            if HAS_Z:
                if SAVE:  # the backward needs the pre-gate output for dz
                    tl.store(ypre_b + row * dim + d, y.to(ypre_ptr.dtype.element_ty), mask=out)
                zf = zz.to(tl.float32)
                y *= zf * _sigmoid(zf)
            tl.store(y_b + row * dim + d, y.to(y_ptr.dtype.element_ty), mask=out)
            if SAVE:  # noqa: SIM102 (a compile-time branch around a runtime one)
                if (m % T == T - 1) & (m < length - 1):
                    for k in tl.static_range(NR):
                        n = k * LN + j
                        tl.store(ck_b + ((m // T) * N + n) * dim + d, h[k], mask=d_ok & (n < N))
        row, ok, u, x, zz, bt, ct = row_1, ok_1, u_1, x_1, zz_1, bt_1, ct_1
        row_1, ok_1 = row_2, ok_2
        m += 1
    if LOCAL:
        tl.store(sdt_ptr + (b * n_chunks + c) * dim + d, dt_sum, mask=d_ok & (j == 0))
        for k in tl.static_range(NR):
            n = k * LN + j
            off = ((b * n_chunks + c) * N + n) * dim + d
            tl.store(hloc_ptr + off, h[k], mask=d_ok & (n < N))
    else:
        last = _both(d_ok, c == n_chunks - 1)
        for k in tl.static_range(NR):
            n = k * LN + j
            tl.store(last_ptr + (b * dim + d) * N + n, h[k], mask=last & (n < N))


@triton.jit(do_not_specialize=["one"])
def _scan_bwd_local_kernel(dt_ptr, z_ptr, bc_ptr, a_ptr, bias_ptr, order_ptr, dy_ptr,
                           gloc_ptr, sdt_ptr, length, dim, chunk_len, n_chunks, one,
                           s_db, s_dl, s_zb, s_zl, s_bcb, s_bcl, s_yb, s_yl,
                           N: tl.constexpr, NP: tl.constexpr, LN: tl.constexpr,
                           NR: tl.constexpr, BLOCK_D: tl.constexpr,
                           HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                           HAS_ORDER: tl.constexpr, ROW64: tl.constexpr,
                           FAST: tl.constexpr):  # fmt: skip
    """Pass 1 of a chunked backward: the gradient that chunk ``c`` (program id 2, from 1) sends
    to the state before it from its own outputs (``gloc``), and its sum of delta (``sdt``).
    Walks the chunk's steps back from a zero carry: ``dh_m = C_m dy_m + carry``, then
    ``carry = exp(delta_m A) dh_m``; the forward's one-step-ahead loads, in reverse."""
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2) + 1
    d, j, d_ok, a2, g, bias = _channel_tile(tl.program_id(0), one, a_ptr, bias_ptr, dim, N, LN,
                                            NR, BLOCK_D, HAS_BIAS)  # fmt: skip
    dt_b, z_b, dy_b = dt_ptr + b * s_db, z_ptr + b * s_zb, dy_ptr + b * s_yb
    bc_b = bc_ptr + b * s_bcb + j * NR + NP  # C of this lane group's states
    VEC: tl.constexpr = FAST and LN == 1
    dt_sum = tl.zeros([LN, BLOCK_D], tl.float32)

    start = c * chunk_len
    end = tl.minimum(length, start + chunk_len)
    m = end - 1
    row, ok = _step_row(order_ptr, m, end, length, HAS_ORDER, ROW64)
    x, dy, zz, ct, _ = _row_loads(dt_b, s_dl, dy_b, s_yl, z_b, s_zl, bc_b, s_bcl, row, ok, d,
                                  d_ok, NP, NR, HAS_Z, False, VEC)  # fmt: skip
    row_1, ok_1 = _step_row(order_ptr, m - 1, end, length, HAS_ORDER, ROW64)
    while m >= start:
        ok_1 = ok_1 & (m - 1 >= start)
        x_1, dy_1, zz_1, ct_1, _ = _row_loads(dt_b, s_dl, dy_b, s_yl, z_b, s_zl, bc_b, s_bcl,
                                              row_1, ok_1, d, d_ok, NP, NR, HAS_Z, False,
                                              VEC)  # fmt: skip
        row_2, ok_2 = _step_row(order_ptr, tl.maximum(m - 2, 0), end, length, HAS_ORDER, ROW64)
        mask = _both(d_ok, ok)
        dt = x.to(tl.float32) + bias
        if SOFTPLUS:
            dt = _softplus(dt, FAST)
        dt = tl.where(mask, dt, 0.0)
        dt_sum += dt
        dyp = tl.where(mask, dy.to(tl.float32), 0.0)
        if HAS_Z:
            zf = zz.to(tl.float32)
            dyp = dyp * zf * _sigmoid(zf)
        g_new = ()
        for k in tl.static_range(NR):
            g_new = g_new + (tl.exp2(dt * a2[k]) * (ct[k] * dyp + g[k]),)
        g = g_new
        row, ok, x, dy, zz, ct = row_1, ok_1, x_1, dy_1, zz_1, ct_1
        row_1, ok_1 = row_2, ok_2
        m -= 1
    tl.store(sdt_ptr + (b * n_chunks + c) * dim + d, dt_sum, mask=d_ok & (j == 0))
    for k in tl.static_range(NR):
        n = k * LN + j
        tl.store(gloc_ptr + ((b * n_chunks + c) * N + n) * dim + d, g[k], mask=d_ok & (n < N))


def reduce_scatter_ptx(n_vals: int, lanes: int) -> str:
    """PTX summing ``n_vals`` fp32 registers over the lanes of a warp that differ in the bits
    at and above ``log2(lanes)``; lane ``l`` keeps values ``[c R, c R + R)`` of the sum, with
    ``c = l // lanes`` and ``R = n_vals * lanes / 32`` (operands: R outputs, then the inputs).

    A reduce-scatter moves each value once per level where a butterfly all-reduce moves all of
    them at every level: about 4 instructions per value instead of 10 for 32 lanes.
    """
    keep = n_vals
    lines = ["{", ".reg .pred p;", ".reg .b32 lane;", f".reg .f32 v<{n_vals}>, snd, kp, rcv;"]
    lines += [f"mov.b32 v{i}, ${n_vals * lanes // 32 + i};" for i in range(n_vals)]
    lines.append("mov.u32 lane, %laneid;")
    mask = 16
    while mask >= lanes:
        half = keep // 2
        lines.append(f"and.b32 lane, lane, {mask}; setp.ne.u32 p, lane, 0; mov.u32 lane, %laneid;")
        for i in range(half):
            lines += [
                f"selp.f32 snd, v{i}, v{i + half}, p;",
                f"selp.f32 kp, v{i + half}, v{i}, p;",
                f"shfl.sync.bfly.b32 rcv, snd, {mask}, 0x1f, 0xffffffff;",
                f"add.f32 v{i}, kp, rcv;",
            ]
        keep = half
        mask //= 2
    lines += [f"mov.b32 ${r}, v{r};" for r in range(keep)]
    lines.append("}")
    return "\n".join(lines)


@triton.jit(do_not_specialize=["one"])
def _scan_bwd_kernel(u_ptr, dt_ptr, z_ptr, bcs_ptr, at_ptr, dskip_ptr, bias_ptr, order_ptr,
                     ck_ptr, ypre_ptr, dy_ptr, dlast_ptr, gloc_ptr, sdt_ptr, carry_ptr,
                     du_ptr, ddt_ptr, dz_ptr, dbc_ptr, da_ptr, dd_ptr, dbias_ptr,
                     length, dim, n_groups, batch, chunk_len, n_chunks, one,
                     s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_yb, s_yl,
                     N: tl.constexpr, NP: tl.constexpr, LN: tl.constexpr, NR: tl.constexpr,
                     BLOCK_D: tl.constexpr, T: tl.constexpr, LOG_T: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, HAS_ORDER: tl.constexpr, ROW64: tl.constexpr,
                     FAST: tl.constexpr, RS: tl.constexpr, RS_PTX: tl.constexpr,
                     RS_CONS: tl.constexpr, RS_KEEP: tl.constexpr,
                     LOG_KEEP: tl.constexpr):  # fmt: skip
    """Backward, a group of T steps at a time from the last; inside a group, one state at a
    time (a runtime loop, so the unrolled body is one state's T steps): recompute its T values
    from the group's checkpoint, walk them back, and sum its dB/dC terms over the tile's
    channels once for the group. A state's carried gradient (``carry``) and dA accumulator
    (``da``) live in ``[chunks, batch, NP, dim]`` fp32 buffers, rewritten by their own thread.

    Chunk ``c`` (program id 2) covers the groups of steps ``[c chunk_len, (c + 1) chunk_len)``;
    its carry starts as the last state's gradient (``dlast``) brought back through the later
    chunks by their pass-1 results (``_scan_bwd_local_kernel``)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    d, j, t = _grid(pid_d, one, LN, BLOCK_D, T)  # [LN, BLOCK_D, 1] x2, [1, 1, T]: a group
    d_ok = d < dim
    d2 = tl.reshape(d, [LN, BLOCK_D])
    j2 = tl.reshape(j, [LN, BLOCK_D])
    d2_ok = d2 < dim
    bias = tl.zeros([LN, BLOCK_D, 1], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0)
    if HAS_D:
        dskip = tl.load(dskip_ptr + d, mask=d_ok, other=0.0)
    u_b, dt_b, z_b = u_ptr + b * s_ub, dt_ptr + b * s_db, z_ptr + b * s_zb
    dy_b = dy_ptr + b * s_yb
    out_b = b * length * dim  # du, ddelta, dz, y_pre: contiguous [batch, L, dim]
    ck_b = ck_ptr + b * (n_groups - 1) * N * dim  # [batch, groups - 1, N, dim]
    state_b = (c * batch + b) * NP * dim + d2  # carry, da: [chunks, batch, NP, dim]
    bcs_b = bcs_ptr + b * n_groups * 2 * NP * T  # [batch, groups, 2, NP, T]: B, C by state
    dbc_b = dbc_ptr + (pid_d * batch + b) * n_groups * T * 2 * NP  # [tiles, batch, G T, 2, NP]
    dd_acc = tl.zeros([LN, BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([LN, BLOCK_D], tl.float32)

    k = 0
    while k < NR:  # the carry entering chunk c from its end
        n = k * LN + j2
        n_ok = d2_ok & (n < N)
        a2 = tl.load(at_ptr + n * dim + d2, mask=n_ok, other=0.0) * _LOG2E
        grad = tl.load(dlast_ptr + (b * NP + n) * dim + d2, mask=d2_ok, other=0.0)
        cc = n_chunks - 1
        while cc > c:
            s = tl.load(sdt_ptr + (b * n_chunks + cc) * dim + d2, mask=d2_ok, other=0.0)
            off = ((b * n_chunks + cc) * N + n) * dim + d2
            grad = tl.exp2(s * a2) * grad + tl.load(gloc_ptr + off, mask=n_ok, other=0.0)
            cc -= 1
        tl.store(carry_ptr + state_b + n * dim, grad, mask=d2_ok)
        k += 1

    g_first = c * (chunk_len // T)
    g = tl.minimum(n_groups, g_first + chunk_len // T) - 1
    while g >= g_first:
        row, mask, u, dt, x = _group_inputs(
            u_b, dt_b, order_ptr, g * T + t + d * 0, d, d_ok, bias, length, s_ul, s_dl,
            HAS_BIAS, SOFTPLUS, HAS_ORDER, ROW64, FAST)  # fmt: skip
        dyp = tl.load(dy_b + row * s_yl + d, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:  # gradient of the pre-gate output
            zz = tl.load(z_b + row * s_zl + d, mask=mask, other=0.0).to(tl.float32)
            dyp = dyp * zz * _sigmoid(zz)
        if HAS_D:
            dd_acc += tl.sum(dyp * u, axis=2)
        dts = _unstack(dt, LN, BLOCK_D, T, LOG_T)
        dtus = _unstack(dt * u, LN, BLOCK_D, T, LOG_T)
        dyps = _unstack(dyp, LN, BLOCK_D, T, LOG_T)
        s_b = ()  # per step: sum_n dh B
        s_a = ()  # per step: sum_n dh A decay h_prev (decay h_prev is the A-path of h)
        for _i in tl.static_range(T):
            s_b = s_b + (tl.zeros([LN, BLOCK_D], tl.float32),)
            s_a = s_a + (tl.zeros([LN, BLOCK_D], tl.float32),)
        k = 0
        while k < NR:
            n = k * LN + j2
            n_ok = d2_ok & (n < N)
            a_k = tl.load(at_ptr + n * dim + d2, mask=n_ok, other=0.0)
            h0 = tl.load(ck_b + ((g - 1) * N + n) * dim + d2, mask=_both(n_ok, g > 0), other=0.0)
            grad = tl.load(carry_ptr + state_b + n * dim, mask=d2_ok, other=0.0)
            da = tl.load(da_ptr + state_b + n * dim, mask=d2_ok, other=0.0)
            bc_k = bcs_b + g * 2 * NP * T + n * T
            bt = _load_states(bc_k, T, FAST)
            ct = _load_states(bc_k + NP * T, T, FAST)
            a2 = a_k * _LOG2E
            h = h0
            hs = ()
            decays = ()
            for i in tl.static_range(T):
                decay = tl.exp2(dts[i] * a2)
                h = decay * h + dtus[i] * bt[i]
                hs = hs + (h,)
                decays = decays + (decay,)
            sb_new = ()
            sa_new = ()
            parts_b = ()
            parts_c = ()
            for i in tl.static_range(T - 1, -1, -1):
                dh = ct[i] * dyps[i] + grad
                grad = decays[i] * dh
                if i > 0:  # noqa: SIM108 (a static branch: hs[-1] must not be traced)
                    h_prev = hs[i - 1]
                else:
                    h_prev = h0
                w = dh * (decays[i] * h_prev)
                da += w * dts[i]
                sb_new = (s_b[i] + dh * bt[i],) + sb_new
                sa_new = (s_a[i] + w * a_k,) + sa_new
                parts_b = (dh * dtus[i],) + parts_b
                parts_c = (hs[i] * dyps[i],) + parts_c
            s_b = sb_new
            s_a = sa_new
            tl.store(carry_ptr + state_b + n * dim, grad, mask=d2_ok)
            tl.store(da_ptr + state_b + n * dim, da, mask=d2_ok)
            if RS:
                if FAST:
                    kept = _reduce_scatter(parts_b + parts_c, RS_PTX, RS_CONS, RS_KEEP)
                else:
                    kept = _reduce_scatter_emulated(parts_b + parts_c, LN, BLOCK_D, T, LOG_T,
                                                    RS_KEEP, LOG_KEEP)  # fmt: skip
                _store_bc_kept(kept, dbc_b, g, k, N, NP, LN, BLOCK_D, T, RS_KEEP, LOG_KEEP)
            else:
                _store_bc_sums(parts_b + parts_c, dbc_b, g, k, N, NP, LN, BLOCK_D, T, LOG_T)
            k += 1
        # Per channel and step: sums over the LN lane groups, then du, ddelta, dz (reloading
        # the inputs not needed above: registers are the limit here).
        row, mask, u, dt, x = _group_inputs(
            u_b, dt_b, order_ptr, g * T + t + d * 0, d, d_ok, bias, length, s_ul, s_dl,
            HAS_BIAS, SOFTPLUS, HAS_ORDER, ROW64, FAST)  # fmt: skip
        sb = _stack(s_b, LN, BLOCK_D, T, LOG_T)
        sa = _stack(s_a, LN, BLOCK_D, T, LOG_T)
        if LN > 1:
            sb = tl.broadcast_to(tl.sum(sb, axis=0)[None, :, :], [LN, BLOCK_D, T])
            sa = tl.broadcast_to(tl.sum(sa, axis=0)[None, :, :], [LN, BLOCK_D, T])
        du = dt * sb
        if HAS_D:
            du += dskip * _stack(dyps, LN, BLOCK_D, T, LOG_T)
        ddt = sa + u * sb
        if SOFTPLUS:
            ddt *= _sigmoid(x)
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=2)
        lane0 = mask & (j == 0)
        tl.store(du_ptr + out_b + row * dim + d, du.to(du_ptr.dtype.element_ty), mask=lane0)
        tl.store(ddt_ptr + out_b + row * dim + d, ddt.to(ddt_ptr.dtype.element_ty), mask=lane0)
        if HAS_Z:
            y = tl.load(ypre_ptr + out_b + row * dim + d, mask=mask, other=0.0).to(tl.float32)
            zz = tl.load(z_b + row * s_zl + d, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_b + row * s_yl + d, mask=mask, other=0.0).to(tl.float32)
            sg = _sigmoid(zz)
            dz = dy * y * sg * (1.0 + zz * (1.0 - sg))
            tl.store(dz_ptr + out_b + row * dim + d, dz.to(dz_ptr.dtype.element_ty), mask=lane0)
        g -= 1
    if HAS_D:
        tl.store(dd_ptr + (c * batch + b) * dim + d2, dd_acc, mask=d2_ok & (j2 == 0))
    if HAS_BIAS:
        tl.store(dbias_ptr + (c * batch + b) * dim + d2, dbias_acc, mask=d2_ok & (j2 == 0))


@triton.jit
def _reduce_scatter(parts, RS_PTX: tl.constexpr, RS_CONS: tl.constexpr, RS_KEEP: tl.constexpr):
    """Sum 2T per-channel terms over the channels of a warp (``reduce_scatter_ptx``)."""
    f = tl.float32
    if RS_KEEP == 1:
        kept = tl.inline_asm_elementwise(RS_PTX, RS_CONS, parts, (f,), True, 1)
    elif RS_KEEP == 2:
        kept = tl.inline_asm_elementwise(RS_PTX, RS_CONS, parts, (f, f), True, 1)
    elif RS_KEEP == 4:
        kept = tl.inline_asm_elementwise(RS_PTX, RS_CONS, parts, (f, f, f, f), True, 1)
    else:
        tl.static_assert(RS_KEEP == 8, "2 T LN / 32 must be 1, 2, 4 or 8")
        kept = tl.inline_asm_elementwise(RS_PTX, RS_CONS, parts, (f, f, f, f, f, f, f, f),
                                         True, 1)  # fmt: skip
    return kept


@triton.jit
def _reduce_scatter_emulated(parts, LN: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
                             LOG_T: tl.constexpr, RS_KEEP: tl.constexpr,
                             LOG_KEEP: tl.constexpr):  # fmt: skip
    """What ``_reduce_scatter`` returns, with tensor ops (for the interpreter, which runs no
    PTX): channel lane c of each warp gets terms ``c RS_KEEP + r`` summed over the warp."""
    C_LANES: tl.constexpr = 32 // LN
    WARPS: tl.constexpr = BLOCK_D // C_LANES
    x = _stack(parts, LN, BLOCK_D, 2 * T, LOG_T + 1)  # [LN, BLOCK_D, 2T]
    x = tl.sum(tl.reshape(x, [LN, WARPS, C_LANES, 2 * T]), axis=2)  # [LN, WARPS, 2T]
    x = tl.reshape(x, [LN, WARPS, C_LANES, RS_KEEP])  # term c RS_KEEP + r at [.., c, r]
    x = tl.reshape(x, [LN, BLOCK_D, RS_KEEP])
    return _unstack(x, LN, BLOCK_D, RS_KEEP, LOG_KEEP)


@triton.jit
def _store_bc_kept(kept, dbc_b, g, k, N: tl.constexpr, NP: tl.constexpr, LN: tl.constexpr,
                   BLOCK_D: tl.constexpr, T: tl.constexpr, RS_KEEP: tl.constexpr,
                   LOG_KEEP: tl.constexpr):  # fmt: skip
    """Sum the warps' reduce-scattered dB/dC terms of states ``k LN + j`` and store them
    (scan-ordered partials ``[.., step, B/C, state]``). ``kept[r]`` of channel lane c is term
    ``c RS_KEEP + r`` (terms: B of steps 0..T-1, then C)."""
    C_LANES: tl.constexpr = 32 // LN  # channels of a warp
    WARPS: tl.constexpr = BLOCK_D // C_LANES
    x = _stack(kept, LN, BLOCK_D, RS_KEEP, LOG_KEEP)  # [LN, BLOCK_D, RS_KEEP]
    x = tl.sum(tl.reshape(x, [LN, WARPS, C_LANES, RS_KEEP]), axis=1)  # over the warps
    zero = tl.zeros([LN, C_LANES, RS_KEEP], tl.int32)
    jj = tl.arange(0, LN)[:, None, None] + zero
    term = tl.arange(0, C_LANES)[None, :, None] * RS_KEEP + tl.arange(0, RS_KEEP)[None, None, :]
    n = k * LN + jj
    off = ((g * T + term % T) * 2 + term // T) * NP + n
    tl.store(dbc_b + off, x, mask=n < N)


@triton.jit
def _store_bc_sums(parts, dbc_b, g, k, N: tl.constexpr, NP: tl.constexpr, LN: tl.constexpr,
                   BLOCK_D: tl.constexpr, T: tl.constexpr, LOG_T: tl.constexpr):  # fmt: skip
    """Portable path of the dB/dC sums (the interpreter, 2 T LN < 32): ``tl.sum``."""
    x = tl.sum(_stack(parts, LN, BLOCK_D, 2 * T, LOG_T + 1), axis=1)  # [LN, 2T]
    jj = tl.arange(0, LN)[:, None]
    term = tl.arange(0, 2 * T)[None, :]
    n = k * LN + jj
    off = ((g * T + term % T) * 2 + term // T) * NP + n
    tl.store(dbc_b + off, x, mask=n < N)
