"""The fused Mamba branch op (``mamba_branches``) against its plain reference: values and every
gradient (xz and each weight), one and two directions, with and without an order, odd lengths;
fp64 on CPU through the PyTorch scans, and the Triton kernels at small sizes (interpreter on
CPU, or a GPU)."""

from __future__ import annotations

import os

import pytest
import torch

import zigma.ssm.ops as ops
from zigma.ssm.ops.branch import BranchWeights, mamba_branches, mamba_branches_ref

DIM, RANK, N_STATE, WIDTH, D_MODEL = 6, 2, 3, 4, 5
NAMES = ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log",
         "D")  # fmt: skip


def _make(k: int, length: int, dtype, device="cpu", seed=0, conv_bias=True):
    """xz, K branches, out_proj weight and bias: leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return t.to(device, dtype).requires_grad_()

    branches = []
    for _ in range(k):
        a_log = torch.rand(DIM, N_STATE, generator=g, dtype=torch.float64) * 1.5 - 1.0
        branches.append(
            BranchWeights(
                conv_weight=rnd(DIM, WIDTH, scale=0.5),
                conv_bias=rnd(DIM, scale=0.3) if conv_bias else None,
                x_proj_weight=rnd(RANK + 2 * N_STATE, DIM, scale=0.5),
                dt_proj_weight=rnd(DIM, RANK, scale=0.5),
                dt_proj_bias=rnd(DIM, scale=0.5),
                A_log=a_log.to(device, dtype).requires_grad_(),
                D=rnd(DIM),
            )
        )
    xz = rnd(2, length, 2 * DIM)
    return xz, branches, rnd(D_MODEL, DIM, scale=0.4), rnd(D_MODEL, scale=0.1)


def _run(fn, xz, branches, orders, out_w, out_b, seed=5, **kw):
    y = fn(xz, branches, orders, out_w, out_b, **kw)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    leaves = {"xz": xz, "out_weight": out_w, "out_bias": out_b}
    for i, w in enumerate(branches):
        leaves.update({f"{i}.{n}": t for n, t in zip(NAMES, w.tensors(), strict=True)})
    leaves = {n: t for n, t in leaves.items() if t is not None}
    grads = torch.autograd.grad((y * dy).sum(), list(leaves.values()))
    return {"y": y.detach(), **dict(zip(leaves, grads, strict=True))}


def _orders(k: int, length: int, with_order: bool, device="cpu"):
    if not with_order:
        return [None] * k
    g = torch.Generator().manual_seed(length)
    first = torch.randperm(length, generator=g).to(device)
    return [first, first.flip(0), torch.randperm(length, generator=g).to(device)][:k]


def _compare(got, want, **tol):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize(
    ("k", "length", "with_order", "conv_bias"),
    [(1, 7, False, True), (1, 9, True, True), (2, 11, True, True), (2, 5, False, False),
     (3, 6, True, True)],
)  # fmt: skip
def test_fused_matches_reference_fp64(backend, k, length, with_order, conv_bias):
    inputs = _make(k, length, torch.float64, conv_bias=conv_bias)
    orders = _orders(k, length, with_order)
    scale = 1.0 / k
    want = _run(mamba_branches_ref, *inputs[:2], orders, *inputs[2:], scale=scale)
    got = _run(mamba_branches, *inputs[:2], orders, *inputs[2:], scale=scale, backend=backend)
    _compare(got, want, rtol=1e-10, atol=1e-12)


def test_reference_is_the_sum_of_single_branches():
    # The sum over branches against K one-branch calls: the op adds branches, nothing else.
    xz, branches, out_w, out_b = _make(2, 8, torch.float64)
    orders = _orders(2, 8, True)
    both = mamba_branches(xz, branches, orders, out_w, None, backend="chunked")
    each = sum(
        mamba_branches(xz, [w], [o], out_w, None, backend="chunked")
        for w, o in zip(branches, orders, strict=True)
    )
    torch.testing.assert_close(both, each, rtol=1e-12, atol=1e-12)


def test_records_one_scan_per_branch():
    xz, branches, out_w, out_b = _make(3, 4, torch.float64)
    with ops.count_scan_flops() as counted:
        mamba_branches(xz, branches, _orders(3, 4, True), out_w, out_b, backend="chunked")
    assert counted.calls == 3
    assert counted.flops == 3 * ops.scan_flops(2, DIM, 4, N_STATE)


def test_bad_inputs_are_refused_before_compute():
    xz, branches, out_w, out_b = _make(1, 4, torch.float64)
    with pytest.raises(ValueError, match="xz must be"):
        mamba_branches(xz[..., :-1], branches, [None], out_w)
    with pytest.raises(ValueError, match="one order"):
        mamba_branches(xz, branches, [None, None], out_w)
    with pytest.raises(ValueError, match=r"orders\[0\]"):
        mamba_branches(xz, branches, [torch.arange(3)], out_w)
    with pytest.raises(ValueError, match="out_weight"):
        mamba_branches(xz, branches, [None], out_w[:, :-1])
    bad = BranchWeights(**{**branches[0].__dict__, "D": branches[0].D[:-1]})
    with pytest.raises(ValueError, match="branch 0: D"):
        mamba_branches(xz, [bad], [None], out_w)


# -- Triton kernels: small sizes (the interpreter on CPU is slow per step) --------------------


def _triton_ready() -> bool:
    if "triton" not in ops.BACKENDS:
        return False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return ops.BACKENDS["triton"].is_available(torch.device(device))


@pytest.mark.triton
@pytest.mark.skipif(not _triton_ready(), reason="no GPU and TRITON_INTERPRET is not 1")
@pytest.mark.parametrize(
    ("k", "length", "with_order"), [(1, 9, False), (2, 11, True), (3, 6, True)]
)
def test_triton_kernels_match_reference(monkeypatch, k, length, with_order):
    from zigma.ssm.ops import triton_scan

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1")
    # Small groups and tiles: several checkpoints and channel tiles even at these lengths.
    small = triton_scan.ScanConfig(group=4, fwd_lanes=2, bwd_lanes=2, fwd_block_d=4, bwd_block_d=4)
    monkeypatch.setattr(triton_scan, "CONFIG", small)
    want_in = _make(k, length, torch.float64)
    got_in = _make(k, length, torch.float32, device=device)
    orders = _orders(k, length, with_order, device)
    cpu_orders = [None if o is None else o.cpu() for o in orders]
    want = _run(mamba_branches_ref, *want_in[:2], cpu_orders, *want_in[2:], scale=0.5)
    got = _run(mamba_branches, *got_in[:2], orders, *got_in[2:], scale=0.5, backend="triton")
    assert ops.last_backend() == "triton"
    _compare({n: t.double().cpu() for n, t in got.items()}, want, rtol=2e-4, atol=2e-5)


@pytest.mark.triton
@pytest.mark.skipif(not _triton_ready(), reason="no GPU and TRITON_INTERPRET is not 1")
def test_compiled_mamba_trains_like_eager():
    # The op traces whole (forward and backward) under torch.compile: no graph break, same
    # numbers as eager.
    from zigma.ssm import Mamba

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4, bidirectional=True, backend="triton").to(device)
    x = torch.randn(2, 12, 8, device=device, requires_grad=True)
    order = torch.randperm(12).to(device)
    results = []
    for model in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        y = model(x, order=order)
        y.square().sum().backward()
        results.append([y.detach(), x.grad, *(p.grad for p in layer.parameters())])
        x.grad = None
        layer.zero_grad(set_to_none=True)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
