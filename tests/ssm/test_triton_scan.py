"""Triton selective scan in token layout (``selective_scan_tokens``) against the fp64 reference
(gather into scan order, ``selective_scan_ref`` on ``[batch, dim, L]``, scatter back): values,
last state and every gradient over orders, options, dtypes, tilings, group borders and strided
views; the ``[batch, dim, L]`` adapter and the "triton" backend; validation; the custom ops under
torch.compile and autocast. Runs on CPU under ``TRITON_INTERPRET=1`` (set in tests/conftest.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("triton", minversion="3.3", reason="the Triton kernels need triton >= 3.3")

import zigma.ssm.ops as ops  # noqa: E402
from zigma.scan import scan_orders  # noqa: E402
from zigma.ssm.ops import triton_scan  # noqa: E402
from zigma.ssm.ops.reference import selective_scan_ref  # noqa: E402
from zigma.ssm.ops.triton_scan import ScanConfig, selective_scan_tokens  # noqa: E402

pytestmark = pytest.mark.triton

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not ops.triton_available("cpu"):
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

H, W = 3, 5  # a 3x5 token grid: L = 15, not a multiple of the group of 4 steps
LENGTH = H * W
# Interpreter-sized tiles: 4 steps per group, 4 channels per program (dim 6 is not a multiple).
SMALL = ScanConfig(group=4, fwd_lanes=2, bwd_lanes=2, fwd_block_d=4, bwd_block_d=4)

# Kernel (inputs in `dtype`) vs the fp64 reference on the same rounded inputs; atol is relative
# to the largest reference value (gradients sum over many terms).
TOL = {
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 2e-2,
}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
OPTIONS = {  # (softplus, z, D, delta_bias)
    "all": (True, True, True, True),
    "none": (False, False, False, False),
    "z+bias": (False, True, False, True),
    "D+softplus": (True, False, True, False),
}


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_scan, "CONFIG", SMALL)


def _order(kind: str | None, length: int = LENGTH) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind == "zigzag":
        return scan_orders("zigzag", H, W)[3].to(DEVICE)
    if kind == "flip":
        return torch.arange(length - 1, -1, -1, device=DEVICE)
    g = torch.Generator().manual_seed(length)
    return torch.randperm(length, generator=g).to(DEVICE)


def _inputs(batch=2, length=LENGTH, dim=6, n_state=4, dtype=torch.float32, options="all",
            seed=0) -> dict[str, torch.Tensor | None]:  # fmt: skip
    """Token-layout leaves (A, D, delta_bias fp32); u and z are the halves of one [b, L, 2d]
    tensor, B and C views of one [b, L, 3 + 2N] tensor, like the Mamba projections."""
    softplus, with_z, with_d, with_bias = OPTIONS[options]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    xz = rnd(batch, length, 2 * dim).to(dtype).to(DEVICE).requires_grad_()
    x_dbl = rnd(batch, length, 3 + 2 * n_state).to(dtype).to(DEVICE).requires_grad_()
    a = -(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 3.9 + 0.1)
    leaf = {
        "xz": xz,
        "x_dbl": x_dbl,
        "delta": rnd(batch, length, dim, scale=0.5).to(dtype).to(DEVICE).requires_grad_(),
        "A": a.float().to(DEVICE).requires_grad_(),
        "D": rnd(dim).float().to(DEVICE).requires_grad_() if with_d else None,
        "delta_bias": rnd(dim, scale=0.5).float().to(DEVICE).requires_grad_()
        if with_bias
        else None,
    }
    leaf["softplus"] = softplus
    leaf["with_z"] = with_z
    return leaf


def _args(leaf: dict) -> dict:
    dim = leaf["delta"].shape[-1]
    n_state = leaf["A"].shape[-1]
    return {
        "u": leaf["xz"][..., :dim],
        "delta": leaf["delta"],
        "A": leaf["A"],
        "B": leaf["x_dbl"][..., 3 : 3 + n_state],
        "C": leaf["x_dbl"][..., 3 + n_state :],
        "D": leaf["D"],
        "z": leaf["xz"][..., dim:] if leaf["with_z"] else None,
        "delta_bias": leaf["delta_bias"],
    }


def _reference(args: dict, softplus: bool, order: torch.Tensor | None):
    """fp64 oracle: gather rows into scan order, [b, d, L] reference scan, scatter back."""
    idx = order.long() if order is not None else None

    def to_scan(t):
        if t is None or t.dim() != 3:
            return None if t is None else t.double()
        t = t.double() if idx is None else t.double()[:, idx]
        return t.transpose(1, 2)

    y, last = selective_scan_ref(
        *(to_scan(args[k]) for k in NAMES), delta_softplus=softplus, return_last_state=True
    )
    y = y.transpose(1, 2)
    if idx is not None:
        y = torch.zeros_like(y).index_copy(1, idx, y)
    return y, last


def _leaves(leaf: dict) -> list[torch.Tensor]:
    return [
        leaf[k] for k in ("xz", "x_dbl", "delta", "A", "D", "delta_bias") if leaf[k] is not None
    ]


def _run(fn, leaf: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """Output, last state and the gradients of every leaf for a fixed random cotangent."""
    y, last = fn(_args(leaf))
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEVICE)
    glast = torch.randn(last.shape, generator=g, dtype=torch.float64).to(DEVICE)
    loss = (y.double() * gy).sum() + (last.double() * glast).sum()
    leaves = _leaves(leaf)
    grads = torch.autograd.grad(loss, leaves)
    out = {"y": y.detach(), "last": last.detach()}
    out.update({f"d{i}": gr for i, gr in enumerate(grads)})
    return out


def _compare(leaf: dict, order: torch.Tensor | None, dtype: torch.dtype) -> None:
    softplus = leaf["softplus"]
    got = _run(lambda a: selective_scan_tokens(**a, delta_softplus=softplus, order=order,
                                               return_last_state=True), leaf)  # fmt: skip
    want = _run(lambda a: _reference(a, softplus, order), leaf)
    assert got["y"].dtype == leaf["xz"].dtype and got["last"].dtype == torch.float32
    for key in want:
        scale = want[key].abs().max().item() + 1e-30
        torch.testing.assert_close(
            got[key].double(), want[key].double(), rtol=TOL[dtype], atol=TOL[dtype] * scale, msg=key
        )


@pytest.mark.parametrize(
    ("kind", "options"),
    [(None, "all"), ("random", "all"), ("zigzag", "all"), ("zigzag", "none"),
     (None, "z+bias"), ("random", "D+softplus")],
)  # fmt: skip
def test_matches_reference(kind, options):
    _compare(_inputs(options=options, seed=len(options)), _order(kind), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    _compare(_inputs(dtype=dtype, seed=3), _order("zigzag"), dtype)


@pytest.mark.parametrize("length", [1, 4, 5])
def test_group_borders_and_batch_1(length):
    # L < group, L = group, L = group + 1; batch 1 (one program per channel tile).
    leaf = _inputs(batch=1, length=length, seed=length)
    _compare(leaf, _order("random", length), torch.float32)


@pytest.mark.parametrize(
    "config",
    [
        ScanConfig(group=4, fwd_lanes=1, bwd_lanes=1, fwd_block_d=8, bwd_block_d=8),
        ScanConfig(group=2, fwd_lanes=4, bwd_lanes=4, fwd_block_d=2, bwd_block_d=2),
        ScanConfig(group=8),  # default tiles: one program covers every channel
        # 2 group lanes >= 32: the warp reduce-scatter of dB/dC (emulated), over 2 "warps"
        ScanConfig(group=16, bwd_lanes=1, bwd_block_d=64),
        ScanConfig(group=16, bwd_lanes=2, bwd_block_d=32),
    ],
    ids=["lanes1", "lanes4", "default-tiles", "scatter-lanes1", "scatter-lanes2"],
)
def test_tilings(monkeypatch, config):
    monkeypatch.setattr(triton_scan, "CONFIG", config)
    _compare(_inputs(seed=5), _order("flip"), torch.float32)


@pytest.mark.parametrize("chunk", [4, 8, 12])
@pytest.mark.parametrize(
    ("kind", "options"), [(None, "all"), ("zigzag", "all"), ("random", "none"), ("flip", "z+bias")]
)
def test_chunked_steps(monkeypatch, chunk, kind, options):
    # Chunks of 1, 2 and 3 groups over L = 15 (a partial last chunk): a state pass per chunk,
    # then the outputs; the backward carries the gradient across chunks the same way.
    monkeypatch.setattr(triton_scan, "CONFIG", dataclasses.replace(SMALL, chunk=chunk))
    _compare(_inputs(options=options, seed=chunk), _order(kind), torch.float32)


def test_chunked_low_precision_batch_1(monkeypatch):
    monkeypatch.setattr(triton_scan, "CONFIG", dataclasses.replace(SMALL, chunk=4))
    _compare(_inputs(batch=1, dtype=torch.bfloat16, seed=9), _order("zigzag"), torch.bfloat16)


def test_automatic_chunks(monkeypatch):
    # Split only on CUDA and only until the launch has warps_per_sm warps per SM; chunks are
    # whole groups and at least min_chunk steps.
    monkeypatch.setattr(triton_scan, "_sm_count", lambda device: 100)
    cfg = ScanConfig(group=16, warps_per_sm=8, min_chunk=64)
    monkeypatch.setattr(triton_scan, "CONFIG", cfg)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert triton_scan._chunking(4096, 800, 1, cuda) == (4096, 1)  # already 8 warps per SM
    assert triton_scan._chunking(4096, 400, 1, cuda) == (2048, 2)
    assert triton_scan._chunking(4096, 48, 1, cuda) == (256, 16)  # 17 asked, whole groups
    assert triton_scan._chunking(4096, 1, 1, cuda) == (64, 64)  # min_chunk
    assert triton_scan._chunking(100, 1, 1, cuda) == (112, 1)  # shorter than two min_chunks
    assert triton_scan._chunking(4096, 1, 1, cpu) == (4096, 1)
    monkeypatch.setattr(triton_scan, "CONFIG", dataclasses.replace(cfg, chunk=32))
    assert triton_scan._chunking(100, 1, 1, cpu) == (32, 4)
    monkeypatch.setattr(triton_scan, "CONFIG", dataclasses.replace(cfg, warps_per_sm=0))
    assert triton_scan._chunking(4096, 1, 1, cuda) == (4096, 1)


def test_state_not_a_power_of_two():
    _compare(_inputs(n_state=3, seed=6), _order("zigzag"), torch.float32)


def test_strided_views_equal_contiguous_copies():
    leaf = _inputs(seed=7)
    order = _order("zigzag")
    args = _args(leaf)
    assert args["u"].stride(-1) == 1 and not args["u"].is_contiguous()
    y1, last1 = selective_scan_tokens(**args, delta_softplus=True, order=order,
                                      return_last_state=True)  # fmt: skip
    copies = {k: v.contiguous() if v is not None else None for k, v in args.items()}
    y2, last2 = selective_scan_tokens(**copies, delta_softplus=True, order=order,
                                      return_last_state=True)  # fmt: skip
    assert torch.equal(y1, y2) and torch.equal(last1, last2)


def test_without_last_state_and_order_dtypes():
    leaf = _inputs(seed=8)
    args = _args(leaf)
    order = _order("random")
    y = selective_scan_tokens(**args, delta_softplus=True, order=order)
    y32 = selective_scan_tokens(**args, delta_softplus=True, order=order.int())
    want, _ = _reference(args, True, order)
    assert torch.equal(y, y32)
    torch.testing.assert_close(y.double(), want, rtol=2e-5, atol=2e-5)
    y.sum().backward()  # the last state's gradient is absent: treated as zero
    assert leaf["xz"].grad is not None


def test_adapter_and_backend_in_mamba_layout():
    leaf = _inputs(seed=9)
    args = {k: v.transpose(1, 2) if v is not None and v.dim() == 3 else v
            for k, v in _args(leaf).items()}  # fmt: skip
    want, want_last = selective_scan_ref(
        *(args[k].double() if args[k] is not None else None for k in NAMES),
        delta_softplus=True, return_last_state=True,
    )  # fmt: skip
    got, last = ops.selective_scan(**args, delta_softplus=True, return_last_state=True,
                                   backend="triton")  # fmt: skip
    assert ops.last_backend() == "triton" and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(last.double(), want_last, rtol=2e-5, atol=2e-5)
    y2 = ops.selective_scan_triton(**args, delta_softplus=True)
    assert torch.equal(y2, got)
    y3 = ops.selective_scan_tokens(**_args(leaf), delta_softplus=True)
    assert torch.equal(y3, got.transpose(1, 2))


def test_autocast_does_not_touch_the_scan():
    args = _args(_inputs(seed=10))
    want = selective_scan_tokens(**args, delta_softplus=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = selective_scan_tokens(**args, delta_softplus=True)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_torch_compile_traces_without_graph_breaks():
    leaf = _inputs(seed=11)
    order = _order("zigzag")

    def f(xz, x_dbl, delta, A, D, delta_bias):
        u, z = xz.chunk(2, dim=-1)
        y = selective_scan_tokens(u, delta, A, x_dbl[..., 3:7], x_dbl[..., 7:], D, z,
                                  delta_bias, True, order)  # fmt: skip
        return (y * y).sum()

    leaves = _leaves(leaf)
    want = torch.autograd.grad(f(*leaves), leaves)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_custom_op_fake_impls():
    leaf = _inputs(seed=12)
    args = _args(leaf)
    order = _order("random").int()
    ins = [args[k] for k in NAMES] + [order, True, SMALL.group, True]
    ins = [t.detach() if isinstance(t, torch.Tensor) else t for t in ins]
    torch.library.opcheck(
        torch.ops.zigma.selective_scan_tokens.default, ins, test_utils=("test_faketensor",)
    )


BAD = {
    "u rank": ({"u": (2, 15)}, r"u must be \[batch, L, dim\]"),
    "delta": ({"delta": (2, 14, 6)}, r"delta must be \[batch, L, dim\] = \[2, 15, 6\]"),
    "B": ({"B": (2, 15, 5)}, r"B must be \[batch, L, N\] = \[2, 15, 4\]"),
    "A": ({"A": (5, 4)}, r"A must be \[dim, N\] with dim = 6"),
    "D": ({"D": (4,)}, r"D must be \[dim\] = \[6\]"),
    "z": ({"z": (1, 15, 6)}, r"z must be \[batch, L, dim\]"),
    "empty": ({"u": (2, 0, 6)}, r"L >= 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_shape_errors(case, monkeypatch):
    calls = []
    monkeypatch.setattr(triton_scan, "_fwd", lambda *a: calls.append(a))
    args = _args(_inputs())
    overrides, message = BAD[case]
    for name, shape in overrides.items():
        args[name] = torch.zeros(shape, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        selective_scan_tokens(**args)
    assert not calls


def test_order_stride_dtype_and_device_errors():
    args = _args(_inputs())
    with pytest.raises(ValueError, match=r"order must be a \[L\] = \[15\] index tensor"):
        selective_scan_tokens(**args, order=torch.arange(14, device=DEVICE))
    with pytest.raises(ValueError, match="order must be an integer tensor"):
        selective_scan_tokens(**args, order=torch.arange(15.0, device=DEVICE))
    with pytest.raises(ValueError, match="order is on meta"):
        selective_scan_tokens(**args, order=torch.arange(15, device="meta"))
    strided = dict(args, u=args["u"].transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match="u must be contiguous in its last dimension"):
        selective_scan_tokens(**strided)
    with pytest.raises(ValueError, match="delta is on meta"):
        selective_scan_tokens(**dict(args, delta=args["delta"].to("meta")))
    with pytest.raises(ValueError, match=r"u must be a real floating tensor \(float16/bfloat16"):
        selective_scan_tokens(**dict(args, u=args["u"].double()))
    with pytest.raises(ValueError, match="power of two"):
        ScanConfig(group=3)
    with pytest.raises(ValueError, match="multiple of group=16"):
        ScanConfig(chunk=24)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_full_size_against_chunked_on_gpu(monkeypatch):
    monkeypatch.setattr(triton_scan, "CONFIG", ScanConfig())
    batch, length, dim, n_state = 2, 4096, 768, 16
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device="cuda") * scale

    xz = rnd(batch, length, 2 * dim).bfloat16().requires_grad_()
    x_dbl = rnd(batch, length, 48 + 2 * n_state).bfloat16().requires_grad_()
    delta = rnd(batch, length, dim, scale=0.5).bfloat16().requires_grad_()
    A = (-torch.exp(torch.rand(dim, n_state, generator=g, device="cuda") * 2)).requires_grad_()
    D, bias = rnd(dim).requires_grad_(), rnd(dim, scale=0.5).requires_grad_()
    order = scan_orders("zigzag", 64, 64)[1].cuda()
    leaves = [xz, x_dbl, delta, A, D, bias]

    def run(tokens: bool):
        u, z = xz[..., :dim], xz[..., dim:]
        B, C = x_dbl[..., 48 : 48 + n_state], x_dbl[..., 48 + n_state :]
        if tokens:
            return selective_scan_tokens(u, delta, A, B, C, D, z, bias, True, order)
        t = lambda x: x[:, order].transpose(1, 2)  # noqa: E731
        y = ops.selective_scan_chunked(t(u), t(delta), A, t(B), t(C), D, t(z), bias, True)
        return torch.zeros_like(u).index_copy(1, order, y.transpose(1, 2))

    gy = rnd(batch, length, dim).bfloat16()
    results = []
    for tokens in (True, False):
        y = run(tokens)
        results.append((y.float(), *torch.autograd.grad(y, leaves, gy)))
    for got, want in zip(*results, strict=True):
        scale = want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * scale)


def _run_ptx(ptx: str, inputs: list[list[float]], n_out: int) -> list[list[float]]:
    """Execute the straight-line PTX of ``reduce_scatter_ptx`` on 32 simulated lanes."""
    regs = [{f"${n_out + i}": v for i, v in enumerate(lane)} for lane in inputs]
    for lane, r in enumerate(regs):
        r["%laneid"] = lane
    for stmt in (s.strip() for s in ptx.replace("\n", " ").split(";")):
        if not stmt or stmt[0] in "{}." or stmt.startswith("} "):
            continue
        op, args = stmt.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op == "shfl.sync.bfly.b32":
            sent = [r[a[1]] for r in regs]
            for lane, r in enumerate(regs):
                r[a[0]] = sent[lane ^ int(a[2])]
            continue
        for r in regs:
            val = lambda x, r=r: r[x] if x in r else int(x, 0)  # noqa: E731
            if op in ("mov.b32", "mov.u32"):
                r[a[0]] = val(a[1])
            elif op == "and.b32":
                r[a[0]] = val(a[1]) & val(a[2])
            elif op == "setp.ne.u32":
                r[a[0]] = val(a[1]) != val(a[2])
            elif op == "selp.f32":
                r[a[0]] = val(a[1]) if r[a[3]] else val(a[2])
            elif op == "add.f32":
                r[a[0]] = val(a[1]) + val(a[2])
            else:
                raise AssertionError(f"unexpected PTX op {op}")
    return [[r[f"${i}"] for i in range(n_out)] for r in regs]


@pytest.mark.parametrize(("n_vals", "lanes"), [(32, 1), (32, 2), (32, 4), (16, 2), (64, 1)])
def test_reduce_scatter_ptx_semantics(n_vals, lanes):
    from zigma.ssm.ops._triton_scan_kernels import reduce_scatter_ptx

    keep = n_vals * lanes // 32
    g = torch.Generator().manual_seed(n_vals + lanes)
    vals = torch.randint(-1000, 1000, (32, n_vals), generator=g).tolist()  # exact sums
    out = _run_ptx(reduce_scatter_ptx(n_vals, lanes), vals, keep)
    for lane in range(32):
        group, c = lane % lanes, lane // lanes  # lane = group + lanes * channel
        peers = range(group, 32, lanes)
        want = [sum(vals[p][c * keep + r] for p in peers) for r in range(keep)]
        assert out[lane] == want, lane
