"""Mamba's Triton fast path (token layout, scan order folded into the kernels) against the
gather path with the reference scan: outputs, input and parameter gradients, zigzag orders,
the bidirectional flip, batch 1, FLOP counting and torch.compile."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
pytest.importorskip("triton", minversion="3.3", reason="the Triton kernels need triton >= 3.3")

import zigma.ssm.ops as ops  # noqa: E402
from zigma.scan import scan_orders  # noqa: E402
from zigma.ssm import Mamba, count_scan_flops, last_backend  # noqa: E402
from zigma.ssm.ops import tokens  # noqa: E402

pytestmark = pytest.mark.triton

D_MODEL, H, W = 8, 3, 4
LENGTH = H * W
needs_triton_scan = pytest.mark.skipif(
    "triton" not in ops.BACKENDS, reason='the Triton scan is not registered as backend "triton"'
)


@pytest.fixture
def triton_conv_reference_scan(monkeypatch):
    """Make "triton" resolvable and route its scan to the token-layout reference, so the fast
    path's structure (layout, folded order and flip, Triton conv) is tested on its own."""
    if "triton" not in ops.BACKENDS:
        backend = ops.Backend("triton", ops.selective_scan_ref, lambda device: True)
        monkeypatch.setitem(ops.BACKENDS, "triton", backend)

    def scan(*args):
        return tokens.selective_scan_tokens_ref(*args, backend="reference")

    monkeypatch.setattr(tokens, "_triton_scan", lambda: scan)


def _pair(bidirectional: bool, dtype: torch.dtype) -> tuple[Mamba, Mamba]:
    torch.manual_seed(0)
    ref = Mamba(D_MODEL, d_state=4, bidirectional=bidirectional, backend="reference")
    ref = ref.to(DEVICE, dtype)
    fast = Mamba(D_MODEL, d_state=4, bidirectional=bidirectional, backend="triton")
    fast = fast.to(DEVICE, dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _order(kind: str | None) -> torch.Tensor | None:
    return None if kind is None else scan_orders(kind, H, W)[2].to(DEVICE)


def _compare(bidirectional, order, batch, dtype, tol):
    ref, fast = _pair(bidirectional, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, LENGTH, D_MODEL, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    gy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = ref(x_ref, order=order)
    y_fast = fast(x_fast, order=order)
    assert last_backend() == "triton"
    torch.testing.assert_close(y_fast, y_ref, **tol)
    (y_ref * gy).sum().backward()
    (y_fast * gy).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, **tol)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(
            p_fast.grad, p_ref.grad, **tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize(
    ("bidirectional", "order_kind", "batch"),
    [(False, "zigzag", 2), (True, "zigzag", 1), (True, None, 2), (False, None, 1)],
)
def test_fast_path_with_reference_scan(
    triton_conv_reference_scan, bidirectional, order_kind, batch
):
    # fp64 end to end: any folding mistake (order, flip, scatter) shows up far above rounding.
    tol = {"rtol": 1e-10, "atol": 1e-12}
    _compare(bidirectional, _order(order_kind), batch, torch.float64, tol)


def test_fast_path_counts_scan_flops(triton_conv_reference_scan):
    _, fast = _pair(True, torch.float64)
    with count_scan_flops() as flops:
        fast(torch.randn(3, LENGTH, D_MODEL, dtype=torch.float64, device=DEVICE))
    assert last_backend() == "triton"
    assert flops.calls == 2
    assert flops.flops == 2 * 3 * fast.d_inner * LENGTH * (7 * fast.d_state + 10)


@needs_triton_scan
@pytest.mark.parametrize(
    ("bidirectional", "order_kind", "batch"),
    [(False, "zigzag", 2), (True, "zigzag", 1), (True, None, 1)],
)
def test_triton_matches_reference(bidirectional, order_kind, batch):
    _compare(bidirectional, _order(order_kind), batch, torch.float32, {"rtol": 2e-4, "atol": 2e-5})


@needs_triton_scan
def test_triton_fast_path_compiles_without_graph_breaks():
    _, fast = _pair(True, torch.float32)
    x = torch.randn(1, LENGTH, D_MODEL, device=DEVICE)
    order = _order("zigzag")
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, order=order), fast(x, order=order), rtol=0, atol=0)


@needs_triton_scan
@pytest.mark.parametrize("bidirectional", [False, True])
def test_triton_recomputed_branches_same_gradients(bidirectional):
    # recompute_branches reruns conv, projections and both scan kernels in the backward.
    _, plain = _pair(bidirectional, torch.float32)
    _, lean = _pair(bidirectional, torch.float32)
    lean.recompute_branches = True
    order = _order("zigzag")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, LENGTH, D_MODEL, generator=g).to(DEVICE)
    out = []
    for model in (plain, lean):
        xi = x.clone().requires_grad_()
        y = model(xi, order=order)
        y.square().sum().backward()
        out.append([y.detach(), xi.grad, *(p.grad for p in model.parameters())])
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
