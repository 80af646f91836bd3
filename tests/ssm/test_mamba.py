"""Mamba mixer: shapes, parameter count, init, scan orders, causality, the bidirectional
variant, autocast behaviour and backend agreement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zigma.ssm import Mamba, count_scan_flops, last_backend

D_MODEL, LENGTH = 16, 12


def _model(seed: int = 0, **kwargs) -> Mamba:
    torch.manual_seed(seed)
    return Mamba(D_MODEL, **kwargs)


def _x(batch: int = 2, length: int = LENGTH, seed: int = 1, **kw) -> torch.Tensor:
    return torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(seed), **kw)


def _expected_params(d_model, d_state, d_conv, expand, dt_rank, conv_bias, bias, bidirectional):
    d_inner = expand * d_model
    branch = (
        d_inner * d_conv  # depthwise conv weight
        + (d_inner if conv_bias else 0)
        + d_inner * (dt_rank + 2 * d_state)  # x_proj
        + dt_rank * d_inner  # dt_proj weight
        + d_inner  # dt_proj bias
        + d_inner * d_state  # A_log
        + d_inner  # D
    )
    shared = (
        d_model * 2 * d_inner  # in_proj
        + (2 * d_inner if bias else 0)
        + d_inner * d_model  # out_proj
        + (d_model if bias else 0)
    )
    return shared + branch * (2 if bidirectional else 1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"d_state": 8, "d_conv": 3, "expand": 3, "dt_rank": 5, "conv_bias": False, "bias": True},
    ],
)
def test_shape_and_parameter_count(bidirectional, kwargs):
    model = _model(bidirectional=bidirectional, **kwargs)
    full = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": math.ceil(D_MODEL / 16)}
    full |= {"conv_bias": True, "bias": False} | kwargs
    assert model.dt_rank == full["dt_rank"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _expected_params(D_MODEL, bidirectional=bidirectional, **full)
    x = _x()
    assert model(x).shape == x.shape
    assert model(x, order=torch.randperm(LENGTH)).shape == x.shape


def test_dt_rank_auto():
    assert Mamba(100).dt_rank == 7
    assert Mamba(64).dt_rank == 4


@pytest.mark.parametrize("bidirectional", [False, True])
def test_init(bidirectional):
    dt_min, dt_max, d_state = 2e-3, 0.05, 6
    model = _model(
        bidirectional=bidirectional, d_state=d_state, dt_min=dt_min, dt_max=dt_max, dt_scale=2.0
    )
    for _conv, _x_proj, dt_proj, A_log, D in model._branches():
        want = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand_as(A_log)
        torch.testing.assert_close(A_log.detach(), want)
        assert torch.equal(D.detach(), torch.ones(model.d_inner))
        step = F.softplus(dt_proj.bias.detach())
        assert step.min() >= dt_min * (1 - 1e-5) and step.max() <= dt_max * (1 + 1e-5)
        assert step.max() / step.min() > 3  # actually log-uniform, not constant
        assert dt_proj.weight.abs().max() <= 2.0 * model.dt_rank**-0.5
        for p in (A_log, D, dt_proj.bias):
            assert p.dtype == torch.float32
            assert p._no_weight_decay and p._keep_fp32
        assert dt_proj.bias._no_reinit
        assert not hasattr(A_log, "_no_reinit")


def test_low_precision_module_keeps_fp32_scan_parameters():
    model = Mamba(D_MODEL, bidirectional=True, dtype=torch.bfloat16)
    assert model.in_proj.weight.dtype == torch.bfloat16
    for _, _, dt_proj, A_log, D in model._branches():
        assert dt_proj.weight.dtype == torch.bfloat16
        assert A_log.dtype == D.dtype == dt_proj.bias.dtype == torch.float32
    y = model(_x(dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_order_equals_manual_permutation(bidirectional):
    model = _model(bidirectional=bidirectional).double()
    x = _x(dtype=torch.float64)
    order = torch.randperm(LENGTH, generator=torch.Generator().manual_seed(3))
    inverse = torch.argsort(order)
    want = model(x[:, order])[:, inverse]
    torch.testing.assert_close(model(x, order=order, inverse=inverse), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x, order=order), want, rtol=0, atol=1e-12)
    assert not torch.allclose(model(x), want)  # the order matters


def test_order_validation():
    model = _model()
    x = _x()
    with pytest.raises(ValueError, match=r"order must be a \[L\] = \[12\] index tensor"):
        model(x, order=torch.arange(LENGTH - 1))
    with pytest.raises(ValueError, match="order must be an integer tensor"):
        model(x, order=torch.arange(LENGTH, dtype=torch.float32))
    with pytest.raises(ValueError, match="inverse must be"):
        model(x, order=torch.arange(LENGTH), inverse=torch.arange(3))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, LENGTH, D_MODEL + 1))


def _token_influence(model: Mamba, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``infl[m, k]``: |d out[scan pos m] / d x[scan pos k]| summed over batch and channels."""
    x = x.clone().requires_grad_(True)
    out = model(x, order=order)
    infl = torch.zeros(LENGTH, LENGTH)
    for m in range(LENGTH):
        (grad,) = torch.autograd.grad(out[:, order[m]].sum(), x, retain_graph=True)
        infl[m] = grad[:, order].abs().sum(dim=(0, 2))
    return infl


def test_unidirectional_is_causal_in_scan_order():
    model = _model().double()
    order = torch.randperm(LENGTH, generator=torch.Generator().manual_seed(4))
    infl = _token_influence(model, _x(dtype=torch.float64), order)
    future = torch.triu(torch.ones(LENGTH, LENGTH, dtype=torch.bool), diagonal=1)
    assert torch.all(infl[future] == 0)
    assert torch.all(infl[~future] > 0)  # and every past token does contribute


def test_bidirectional_is_not_causal():
    model = _model(bidirectional=True).double()
    infl = _token_influence(model, _x(dtype=torch.float64), torch.arange(LENGTH))
    assert torch.all(infl > 0)


def test_bidirectional_flip_equivariance():
    # Swapping the two branches' parameters and flipping the sequence flips the output.
    model = _model(bidirectional=True).double()
    swapped = _model(bidirectional=True).double()
    state = model.state_dict()
    swap = {"conv1d": "conv1d_b", "x_proj": "x_proj_b", "dt_proj": "dt_proj_b"}
    swap |= {"A_log": "A_b_log", "D": "D_b"}
    swap |= {v: k for k, v in swap.items()}
    new_state = {}
    for key, value in state.items():
        head, _, tail = key.partition(".")
        new_key = f"{swap[head]}.{tail}" if head in swap and tail else swap.get(key, key)
        new_state[new_key] = value
    swapped.load_state_dict(new_state)
    x = _x(dtype=torch.float64)
    torch.testing.assert_close(swapped(x.flip(1)), model(x).flip(1), rtol=0, atol=1e-12)
    assert not torch.allclose(model(x.flip(1)), model(x).flip(1))


def test_autocast_bf16_keeps_scan_parameters_fp32():
    model = _model(bidirectional=True)
    x = _x()
    want = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, order=torch.randperm(LENGTH).sort().values)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())
    y.float().sum().backward()
    for _, _, dt_proj, A_log, D in model._branches():
        for p in (A_log, D, dt_proj.bias):
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_reference_and_chunked_backends_agree(bidirectional):
    ref = _model(bidirectional=bidirectional, backend="reference", dtype=torch.float64)
    fast = _model(bidirectional=bidirectional, backend="chunked", dtype=torch.float64)
    fast.load_state_dict(ref.state_dict())
    assert ref.A_log.dtype == torch.float64
    order = torch.randperm(LENGTH)
    x_ref = _x(length=LENGTH, dtype=torch.float64).requires_grad_(True)
    x_fast = x_ref.detach().clone().requires_grad_(True)
    y_ref = ref(x_ref, order=order)
    assert last_backend() == "reference"
    y_fast = fast(x_fast, order=order)
    assert last_backend() == "chunked"
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    y_ref.square().sum().backward()
    y_fast.square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_flops_counted(bidirectional):
    model = _model(bidirectional=bidirectional)
    with count_scan_flops() as flops:
        model(_x(batch=3))
    per_scan = 3 * model.d_inner * LENGTH * (7 * model.d_state + 10)
    assert flops.flops == per_scan * (2 if bidirectional else 1)


def test_causal_conv_matches_padded_form():
    # Left padding equals mamba_ssm's conv with padding d_conv - 1 cut to the first L outputs.
    model = _model(d_conv=3).double()
    x = torch.randn(2, model.d_inner, LENGTH, dtype=torch.float64)
    conv = model.conv1d
    want = F.conv1d(x, conv.weight, conv.bias, padding=2, groups=model.d_inner)[..., :LENGTH]
    torch.testing.assert_close(conv(F.pad(x, (2, 0))), want, rtol=0, atol=1e-14)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``fn()`` runs (distinct
    storages, so views of one tensor count once)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recomputed_branches_same_gradients_less_memory(bidirectional):
    # Rerunning each branch in the backward changes nothing but what is kept in between.
    plain = _model(bidirectional=bidirectional, backend="chunked", dtype=torch.float64)
    lean = _model(bidirectional=bidirectional, backend="chunked", dtype=torch.float64)
    lean.load_state_dict(plain.state_dict())
    lean.recompute_branches = True
    order = torch.randperm(LENGTH)
    results = []
    for model in (plain, lean):
        x = _x(length=LENGTH, dtype=torch.float64).requires_grad_(True)
        y, saved = _saved_bytes(lambda m=model, x=x: m(x, order=order))
        y.square().sum().backward()
        grads = [x.grad] + [p.grad for p in model.parameters()]
        results.append((y.detach(), grads, saved))
    (y0, g0, saved0), (y1, g1, saved1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert saved1 < 0.6 * saved0, (saved1, saved0)
    with torch.no_grad():  # no graph, nothing to recompute: the plain forward
        torch.testing.assert_close(lean(x.detach(), order=order), y0, rtol=0, atol=0)
