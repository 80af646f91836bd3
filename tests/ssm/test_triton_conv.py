"""Triton causal conv1d in token layout (``causal_conv1d_tokens``) against the gather + F.conv1d
reference and against ``nn.Conv1d`` on the gathered sequence: values and gradients of x, weight
and bias over widths, orders, dtypes, options, strided views, tile borders; validation, the
custom-op registration and torch.compile."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
pytest.importorskip("triton", minversion="3.3", reason="the Triton kernels need triton >= 3.3")

from zigma.scan import scan_orders  # noqa: E402
from zigma.ssm.ops import triton_conv  # noqa: E402
from zigma.ssm.ops.tokens import causal_conv1d_tokens_ref, conv_tokens  # noqa: E402
from zigma.ssm.ops.triton_conv import causal_conv1d_tokens  # noqa: E402

pytestmark = pytest.mark.triton

H, W = 5, 7  # a 5x7 token grid: L = 35, not a multiple of any tile height
LENGTH, DIM = H * W, 24

# Kernel (inputs in `dtype`) vs the fp64 reference on the same (rounded) inputs.
TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}


def _order(kind: str | None, length: int = LENGTH, seed: int = 0) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind == "random":
        order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
    else:  # "zigzag": one of the official zigzag paths over the H x W grid
        assert length == H * W
        order = scan_orders("zigzag", H, W)[3]
    return order.to(DEVICE)


def _inputs(batch=2, length=LENGTH, dim=DIM, width=4, dtype=torch.float32, wdtype=None, bias=True):
    g = torch.Generator().manual_seed(0)
    wdtype = wdtype or dtype

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    x = rnd(batch, length, dim).to(dtype)
    weight = rnd(dim, width, scale=width**-0.5).to(wdtype)
    b = rnd(dim).to(wdtype) if bias else None
    gy = rnd(batch, length, dim).to(dtype)
    return x, weight, b, gy


def _run(fn, x, weight, bias, order, activation, gy) -> dict[str, torch.Tensor]:
    """Output and the gradients of ``sum(y * gy)`` with respect to x, weight and bias (leaves
    are detached aliases, so strided views reach ``fn`` as they are)."""
    leaves = {"x": x, "weight": weight, "bias": bias}
    leaves = {k: v.detach().requires_grad_(True) for k, v in leaves.items() if v is not None}
    y = fn(leaves["x"], leaves["weight"], leaves.get("bias"), order, activation)
    grads = torch.autograd.grad((y.double() * gy.double()).sum(), list(leaves.values()))
    return {"y": y.detach(), **{f"d{k}": gr for k, gr in zip(leaves, grads, strict=True)}}


def _compare(x, weight, bias, order, activation, gy, tol):
    got = _run(causal_conv1d_tokens, x, weight, bias, order, activation, gy)
    as64 = [None if t is None else t.double() for t in (x, weight, bias)]
    want = _run(causal_conv1d_tokens_ref, *as64, order, activation, gy)
    for key, value in want.items():
        ref = {"y": x, "dx": x, "dweight": weight, "dbias": bias}[key]
        assert got[key].dtype == ref.dtype and got[key].shape == ref.shape, key
        torch.testing.assert_close(
            got[key].double(), value, **tol, msg=lambda m, k=key: f"{k}: {m}"
        )


def _nn_conv1d(x, weight, bias, order, activation):
    """Independent oracle: nn.Conv1d (padding W - 1, first L outputs) on the gathered tokens."""
    dim, width = weight.shape
    conv = torch.nn.Conv1d(dim, dim, width, groups=dim, padding=width - 1, bias=bias is not None)
    params = {"weight": weight[:, None]} | ({} if bias is None else {"bias": bias})
    xs = x if order is None else x[:, order]
    y = torch.func.functional_call(conv.to(x.device, x.dtype), params, (xs.transpose(1, 2),))
    y = y[..., : x.shape[1]].transpose(1, 2)
    y = F.silu(y) if activation == "silu" else y
    return y if order is None else y[:, torch.argsort(order)]


@pytest.mark.parametrize("order_kind", [None, "random", "zigzag"])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_matches_reference(width, order_kind):
    x, weight, bias, gy = _inputs(width=width)
    _compare(x, weight, bias, _order(order_kind), "silu", gy, TOL[torch.float32])


@pytest.mark.parametrize(("bias", "activation"), [(False, "silu"), (True, None), (False, None)])
def test_without_bias_or_activation(bias, activation):
    x, weight, b, gy = _inputs(batch=1, bias=bias)
    _compare(x, weight, b, _order("random"), activation, gy, TOL[torch.float32])


@pytest.mark.parametrize(
    ("dtype", "wdtype"),
    [
        (torch.bfloat16, None),
        (torch.float16, None),
        (torch.bfloat16, torch.float32),  # what autocast hands over: bf16 activations, fp32 weights
    ],
)
def test_low_precision(dtype, wdtype):
    x, weight, bias, gy = _inputs(dtype=dtype, wdtype=wdtype)
    _compare(x, weight, bias, _order("zigzag"), "silu", gy, TOL[dtype])


@pytest.mark.parametrize("order_kind", [None, "zigzag"])
def test_matches_nn_conv1d_on_gathered_tokens(order_kind):
    x, weight, bias, gy = _inputs(batch=1, dtype=torch.float64)
    order = _order(order_kind)
    got = _run(causal_conv1d_tokens, x, weight, bias, order, "silu", gy)
    want = _run(_nn_conv1d, x, weight, bias, order, "silu", gy)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
    ref = _run(causal_conv1d_tokens_ref, x, weight, bias, order, "silu", gy)
    for key in want:
        torch.testing.assert_close(ref[key], want[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("batch", [1, 2])
def test_tile_and_chunk_borders(monkeypatch, batch):
    # Tiles of 8 positions x 16 channels, two backward tiles (of 5 owned positions) per
    # program: L = 35 and dim = 40 end mid-tile, and the window reaches across every border.
    monkeypatch.setattr(triton_conv, "_fwd_blocks", lambda x: (8, 16))
    monkeypatch.setattr(triton_conv, "_bwd_blocks", lambda x: (8, 16, 2, 4))
    x, weight, bias, gy = _inputs(batch=batch, dim=40)
    _compare(x, weight, bias, _order("random"), "silu", gy, TOL[torch.float32])


def test_strided_views():
    # x is the first half of an in_proj output; every other tensor has non-unit strides too.
    x, weight, bias, gy = _inputs()
    xz = torch.cat([x, torch.randn_like(x)], dim=-1)  # [b, L, 2 dim]
    weight_t = weight.t().contiguous().t()  # [dim, W] with strides (1, dim)
    gy_t = gy.transpose(0, 1).contiguous().transpose(0, 1)
    order = _order("zigzag").to(torch.int32)
    order_t = torch.stack([order, order]).t()[:, 1]  # stride 2
    bias_t = torch.stack([bias, bias]).t()[:, 0]
    assert xz[..., :DIM].stride() == (LENGTH * 2 * DIM, 2 * DIM, 1) and weight_t.stride(0) == 1
    got = _run(causal_conv1d_tokens, xz[..., :DIM], weight_t, bias_t, order_t, "silu", gy_t)
    want = _run(causal_conv1d_tokens, x, weight, bias, order.long(), "silu", gy)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    every_other = _run(causal_conv1d_tokens, xz[..., ::2], weight, bias, order, "silu", gy)
    want = _run(causal_conv1d_tokens_ref, xz[..., ::2], weight, bias, order, "silu", gy)
    for key in want:
        torch.testing.assert_close(every_other[key], want[key], **TOL[torch.float32], msg=key)


def test_empty_batch():
    x, weight, bias, gy = _inputs(batch=0)
    got = _run(causal_conv1d_tokens, x, weight, bias, _order("random"), "silu", gy)
    assert got["y"].shape == x.shape
    assert torch.equal(got["dweight"], torch.zeros_like(weight))
    assert torch.equal(got["dbias"], torch.zeros_like(bias))


def test_validation():
    x, weight, bias, _ = _inputs(batch=1)
    order = _order("random")
    cases = [
        ((x[0], weight, bias, order, "silu"), r"x must be \[batch, L, dim\]"),
        ((x, weight[:-1], bias, order, "silu"), r"weight must be \[dim, width\] with dim = 24"),
        ((x, weight[:, :0], bias, order, "silu"), "width >= 1"),
        ((x, weight, bias[:-1], order, "silu"), r"bias must be \[dim\] = \[24\]"),
        ((x, weight, bias, order[:-1], "silu"), r"order must be a \[L\] = \[35\] index tensor"),
        ((x, weight, bias, order.float(), "silu"), "order must be an integer tensor"),
        ((x, weight, bias, order, "gelu"), "activation must be 'silu' or None"),
        ((x.int(), weight, bias, order, "silu"), "x must be fp16/bf16/fp32/fp64"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            causal_conv1d_tokens(*args)
        if "activation" not in match:  # the reference checks the same things
            with pytest.raises(ValueError, match=match):
                causal_conv1d_tokens_ref(*args)


def test_custom_op_registration():
    x, weight, bias, _ = _inputs(batch=1, length=10, dim=6, width=3)
    order = _order("random", length=10)
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), order, True)
    torch.library.opcheck(torch.ops.zigma.causal_conv1d_tokens.default, args)


def test_torch_compile_fullgraph():
    x, weight, bias, gy = _inputs(batch=1)
    order = _order("zigzag")

    def fn(x, weight, bias, order, activation):
        return causal_conv1d_tokens(x, weight, bias, order, activation) * 2.0

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = _run(compiled, x, weight, bias, order, "silu", gy)
    want = _run(fn, x, weight, bias, order, "silu", gy)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_conv_tokens_dispatch():
    x, weight, bias, _ = _inputs(batch=1)
    order = _order("zigzag")
    want_ref = causal_conv1d_tokens_ref(x, weight, bias, order)
    assert torch.equal(conv_tokens(x, weight, bias, order, backend="chunked"), want_ref)
    want_kernel = causal_conv1d_tokens(x, weight, bias, order)
    assert torch.equal(conv_tokens(x, weight, bias, order, backend="triton"), want_kernel)
