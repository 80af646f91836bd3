"""Selective scan: chunked vs reference (values and every gradient), the reference vs closed
forms, dtypes, extreme inputs, and the dispatcher (backend resolution, validation, FLOPs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zigma.ssm.ops as ops
from zigma.ssm import (
    BACKENDS,
    available_backends,
    count_scan_flops,
    last_backend,
    register_backend,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from zigma.ssm.ops import DEFAULT_CHUNK_SIZE, chunked

from .conftest import TOL, make_scan_inputs, outputs_and_grads

# (delta_softplus, z, D, delta_bias): all on, all off, and two mixed combinations.
CONFIGS = {
    "all": (True, True, True, True),
    "none": (False, False, False, False),
    "z+bias": (False, True, False, True),
    "D+softplus": (True, False, True, False),
}


def _lengths(cs: int) -> list[int]:
    return sorted({1, 7, cs, cs + 1, 3 * cs - 5, 200})


CASES = [(cs, length) for cs in (16, DEFAULT_CHUNK_SIZE) for length in _lengths(cs)]


def _assert_all_close(got: dict, want: dict, dtype: torch.dtype, **tol) -> None:
    tol = tol or TOL[dtype]
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key].to(got[key].dtype), **tol, msg=key)


# --------------------------------------------------------------------------- chunked vs ref


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("chunk_size", "length"), CASES)
def test_chunked_matches_reference_fp64(chunk_size, length, batch, config):
    softplus, with_z, with_D, with_bias = CONFIGS[config]
    inputs = make_scan_inputs(
        batch, 3, 4, length, with_z=with_z, with_D=with_D, with_bias=with_bias, seed=length
    )
    want = outputs_and_grads(selective_scan_ref, inputs, delta_softplus=softplus)
    got = outputs_and_grads(
        selective_scan_chunked, inputs, delta_softplus=softplus, chunk_size=chunk_size
    )
    _assert_all_close(got, want, torch.float64)


@pytest.mark.parametrize("group_elements", [1, 3000])
def test_backward_in_chunk_groups_matches_reference(monkeypatch, group_elements):
    # 1 element forces one chunk per backward group; 3000 gives groups of a few chunks.
    monkeypatch.setattr(chunked, "BACKWARD_GROUP_ELEMENTS", group_elements)
    inputs = make_scan_inputs(2, 3, 4, 45)
    want = outputs_and_grads(selective_scan_ref, inputs, delta_softplus=True)
    got = outputs_and_grads(selective_scan_chunked, inputs, delta_softplus=True, chunk_size=4)
    _assert_all_close(got, want, torch.float64)


@pytest.mark.parametrize("shape", [(2, 16, 64), (1, 24, 40), (2, 7, 13), (1, 32, 96)])
def test_tiled_transpose(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(chunked._transpose(x), x.transpose(1, 2), rtol=0, atol=0)


def test_chunked_matches_reference_on_tiled_layout_and_strided_inputs():
    # dim and L divisible by the transpose tile, and u/delta/z given as channels-last views.
    inputs = make_scan_inputs(2, 16, 8, 64)
    want = outputs_and_grads(selective_scan_ref, inputs, delta_softplus=True)
    strided = dict(inputs)
    for k in ("u", "delta", "z"):
        strided[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)
    got = outputs_and_grads(selective_scan_chunked, strided, delta_softplus=True, chunk_size=16)
    _assert_all_close(got, want, torch.float64)


def test_chunked_gradcheck():
    inputs = make_scan_inputs(2, 2, 2, 5)
    names = list(inputs)

    def fn(*args):
        kwargs = dict(zip(names, args, strict=True))
        return selective_scan_chunked(
            **kwargs, delta_softplus=True, return_last_state=True, chunk_size=2
        )

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_fp32_chunked_matches_fp64_reference():
    ref_in = make_scan_inputs(2, 8, 16, 300, seed=3)
    f32_in = {k: v.detach().float().requires_grad_() for k, v in ref_in.items()}
    want = outputs_and_grads(selective_scan_ref, ref_in, delta_softplus=True)
    got = outputs_and_grads(selective_scan_chunked, f32_in, delta_softplus=True)
    assert got["y"].dtype == torch.float32 and got["last"].dtype == torch.float32
    for key in want:  # scale-relative: gradients accumulate over hundreds of terms
        scale = want[key].abs().max().item()
        torch.testing.assert_close(
            got[key].double(), want[key], rtol=1e-4, atol=1e-4 * scale, msg=key
        )


@pytest.mark.parametrize("fn", [selective_scan_chunked, selective_scan_ref])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(fn, dtype):
    low = make_scan_inputs(2, 8, 16, 70, dtype=dtype, seed=4)
    f32 = {k: v.detach().float() for k, v in low.items()}
    y = fn(**low, delta_softplus=True)
    assert y.dtype == dtype
    want = fn(**f32, delta_softplus=True)  # same (rounded) values, fp32 inputs
    assert want.dtype == torch.float32
    # Only the final rounding to the low-precision output differs.
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    y.float().sum().backward()
    assert all(t.grad.dtype == dtype for t in low.values())


def test_strong_decay_long_sequence_fp32():
    # delta ~ softplus(5), A down to -16 N = -256: log-decays reach about -1300 per step.
    batch, dim, n_state, length = 1, 4, 16, 2048
    g = torch.Generator().manual_seed(5)
    inputs64 = {
        "u": torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        "delta": 5 + torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        "A": -torch.logspace(0, math.log10(16 * n_state), n_state, dtype=torch.float64)
        .repeat(dim, 1)
        .contiguous(),
        "B": torch.randn(batch, n_state, length, generator=g, dtype=torch.float64),
        "C": torch.randn(batch, n_state, length, generator=g, dtype=torch.float64),
    }
    inputs64["A"][0] = -16.0  # one channel uniformly at A = -16
    for t in inputs64.values():
        t.requires_grad_(True)
    inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
    want = outputs_and_grads(selective_scan_ref, inputs64, delta_softplus=True)
    got = outputs_and_grads(selective_scan_chunked, inputs32, delta_softplus=True)
    for key in want:
        assert torch.isfinite(got[key]).all(), key
        scale = want[key].abs().max().item()
        torch.testing.assert_close(
            got[key].double(), want[key], rtol=1e-4, atol=1e-5 * scale, msg=key
        )


def test_gradient_through_last_state_only():
    inputs = make_scan_inputs(2, 3, 4, 37)
    leaves = [v for v in inputs.values() if v is not None]
    grads = {}
    for fn in (selective_scan_ref, selective_scan_chunked):
        kwargs = {"chunk_size": 8} if fn is selective_scan_chunked else {}
        _, last = fn(**inputs, delta_softplus=True, return_last_state=True, **kwargs)
        grads[fn] = torch.autograd.grad(last.square().sum(), leaves, allow_unused=True)
    for name, want, got in zip(inputs, *grads.values(), strict=True):
        if want is None:  # z and D do not reach the state
            assert got is None or not got.any(), name
        else:
            torch.testing.assert_close(got, want, **TOL[torch.float64], msg=name)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_scan_math_ignores_autocast(backend):
    inputs = make_scan_inputs(2, 8, 16, 40, dtype=torch.float32)
    want = selective_scan(**inputs, delta_softplus=True, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_chunked_under_activation_checkpointing(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    inputs = make_scan_inputs(2, 3, 4, 30)
    names = list(inputs)
    leaves = list(inputs.values())

    def fn(*args):
        return selective_scan_chunked(
            **dict(zip(names, args, strict=True)), delta_softplus=True, chunk_size=8
        )

    want = torch.autograd.grad(fn(*leaves).square().sum(), leaves)
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    checkpoint(fn, *copies, use_reentrant=use_reentrant).square().sum().backward()
    for name, t, w in zip(names, copies, want, strict=True):
        torch.testing.assert_close(t.grad, w, rtol=1e-12, atol=1e-12, msg=name)


def test_chunked_rejects_bad_chunk_size():
    inputs = make_scan_inputs(1, 2, 2, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(**inputs, chunk_size=0)


# --------------------------------------------------------------- reference vs closed forms


def test_reference_geometric_series():
    # N = dim = 1, constant u = 1, delta, B, C: h_t = delta*b * (1 - r^(t+1)) / (1 - r).
    length, delta, a, b, c, d = 30, 0.3, -0.7, 1.5, -2.0, 0.25
    r = math.exp(delta * a)
    t = np.arange(length)
    want = c * delta * b * (1 - r ** (t + 1)) / (1 - r) + d
    y = selective_scan_ref(
        torch.ones(1, 1, length, dtype=torch.float64),
        torch.full((1, 1, length), delta, dtype=torch.float64),
        torch.tensor([[a]], dtype=torch.float64),
        torch.full((1, 1, length), b, dtype=torch.float64),
        torch.full((1, 1, length), c, dtype=torch.float64),
        D=torch.tensor([d], dtype=torch.float64),
    )
    np.testing.assert_allclose(y[0, 0].numpy(), want, rtol=1e-12, atol=1e-12)


def test_reference_lti_convolution():
    # Time-invariant delta, B, C: y = K * u with K_k[d] = sum_n C_n B_n dt_d exp(dt_d A_dn k).
    batch, dim, n_state, length = 2, 3, 4, 25
    rng = np.random.default_rng(0)
    u = rng.standard_normal((batch, dim, length))
    bias = rng.standard_normal(dim)
    A = -rng.uniform(0.1, 2.0, (dim, n_state))
    B, C = rng.standard_normal((batch, n_state)), rng.standard_normal((batch, n_state))
    z = rng.standard_normal((batch, dim, length))
    dt = np.log1p(np.exp(bias))  # softplus(0 + bias)
    want = np.zeros((batch, dim, length))
    for b in range(batch):
        for d in range(dim):
            kernel = [np.sum(C[b] * B[b] * dt[d] * np.exp(dt[d] * A[d] * k)) for k in range(length)]
            for t in range(length):
                want[b, d, t] = sum(kernel[t - s] * u[b, d, s] for s in range(t + 1))
    want = want * z / (1 + np.exp(-z))
    t64 = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    y = selective_scan_ref(
        t64(u),
        torch.zeros(batch, dim, length, dtype=torch.float64),
        t64(A),
        t64(np.repeat(B[:, :, None], length, axis=2)),
        t64(np.repeat(C[:, :, None], length, axis=2)),
        z=t64(z),
        delta_bias=t64(bias),
        delta_softplus=True,
    )
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-12)


def test_reference_unrolled_time_varying():
    # y_t = sum_{s<=t} sum_n C_tn exp(A_n sum_{k=s+1..t} dt_k) dt_s B_sn u_s, no recursion.
    dim, n_state, length = 2, 3, 9
    rng = np.random.default_rng(1)
    u = rng.standard_normal((1, dim, length))
    dt = rng.uniform(0.05, 1.0, (1, dim, length))
    A = -rng.uniform(0.1, 3.0, (dim, n_state))
    B = rng.standard_normal((1, n_state, length))
    C = rng.standard_normal((1, n_state, length))
    want = np.zeros((dim, length))
    for d in range(dim):
        for t in range(length):
            for s in range(t + 1):
                decay = np.exp(A[d] * dt[0, d, s + 1 : t + 1].sum())
                want[d, t] += np.sum(C[0, :, t] * decay * dt[0, d, s] * B[0, :, s]) * u[0, d, s]
    y = selective_scan_ref(*(torch.from_numpy(x) for x in (u, dt, A, B, C)))
    np.testing.assert_allclose(y[0].numpy(), want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ dispatcher


@pytest.fixture
def temp_backend():
    """Register throw-away backends; removed (and ``last_backend`` kept sane) afterwards."""
    added: list[str] = []

    def add(name, fn, is_available, **kwargs):
        register_backend(name, fn, is_available, **kwargs)
        added.append(name)

    yield add
    for name in added:
        BACKENDS.pop(name, None)


def test_auto_resolves_to_chunked_on_cpu():
    assert resolve_backend("auto", "cpu") == "chunked"
    assert {"chunked", "reference"} <= set(available_backends("cpu"))
    inputs = make_scan_inputs(1, 2, 2, 5)
    selective_scan(**inputs)
    assert last_backend() == "chunked"
    selective_scan(**inputs, backend="reference")
    assert last_backend() == "reference"


def test_dispatch_matches_backend_function():
    inputs = make_scan_inputs(2, 3, 4, 20)
    for name, fn in (("chunked", selective_scan_chunked), ("reference", selective_scan_ref)):
        y, last = selective_scan(
            **inputs, delta_softplus=True, return_last_state=True, backend=name
        )
        y2, last2 = fn(**inputs, delta_softplus=True, return_last_state=True)
        torch.testing.assert_close(y, y2)
        torch.testing.assert_close(last, last2)


def test_unknown_backend_raises_value_error_with_choices():
    inputs = make_scan_inputs(1, 2, 2, 5)
    with pytest.raises(ValueError, match="unknown selective_scan backend 'cuda'.*'chunked'"):
        selective_scan(**inputs, backend="cuda")


def test_unavailable_backend_raises_runtime_error(temp_backend):
    calls = []
    temp_backend(
        "never", lambda *a: calls.append(a), lambda device: False, requires="a flux capacitor"
    )
    assert "never" not in available_backends("cpu")
    inputs = make_scan_inputs(1, 2, 2, 5)
    with pytest.raises(RuntimeError, match="'never' is registered but not available.*flux"):
        selective_scan(**inputs, backend="never")
    assert not calls


def test_auto_prefers_the_cuda_backend_only_on_cuda(monkeypatch):
    calls = []

    def fake(*args):
        calls.append(args)
        return selective_scan_ref(*args)

    monkeypatch.setitem(BACKENDS, "triton", ops.Backend("triton", fake, lambda device: True))
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    # Where triton is missing, CUDA falls back to the PyTorch path.
    monkeypatch.setitem(BACKENDS, "triton", ops.Backend("triton", fake, lambda device: False))
    assert resolve_backend("auto", torch.device("cuda")) == "chunked"
    monkeypatch.setitem(BACKENDS, "triton", ops.Backend("triton", fake, lambda device: True))
    # Never the (slow) interpreter on CPU, even where it is available.
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert resolve_backend("auto", "meta") == "chunked"
    assert resolve_backend("triton", "cpu") == "triton"
    selective_scan(**make_scan_inputs(1, 2, 2, 5))
    assert last_backend() == "chunked" and not calls
    selective_scan(**make_scan_inputs(1, 2, 2, 5), backend="triton")
    assert last_backend() == "triton" and len(calls) == 1


def test_triton_backend_is_registered_lazily():
    assert "triton" in BACKENDS
    assert ops.triton_available("cuda") == (ops._triton_installed())
    assert not ops.triton_available("meta")


@pytest.mark.parametrize(
    ("version", "usable"),
    [("3.3.0", True), ("3.6.0", True), ("3.9.0", True), ("3.10.1+git1a2b3c", True),
     ("4.0.0", True), ("", True), ("3.2.0", False), ("3.0.0", False), ("2.3.1", False)],
)  # fmt: skip
def test_triton_older_than_the_kernels_need_counts_as_absent(version, usable):
    # an older triton (one an older torch brings) lacks tl.gather: "auto" must not pick it
    assert ops._triton_version_ok(version) is usable


def test_register_backend_guards(temp_backend):
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", selective_scan_ref, lambda d: True)
    with pytest.raises(ValueError, match="already registered"):
        register_backend("chunked", selective_scan_ref, lambda d: True)


BAD_SHAPES = {
    "u rank": ({"u": (2, 3)}, r"u must be \[batch, dim, L\]"),
    "A dim": ({"A": (4, 4)}, r"A must be \[dim, N\] with dim = 3, got \[4, 4\]"),
    "delta": ({"delta": (2, 3, 9)}, r"delta must be \[batch, dim, L\] = \[2, 3, 10\]"),
    "B": ({"B": (2, 5, 10)}, r"B must be \[batch, N, L\] = \[2, 4, 10\], got \[2, 5, 10\]"),
    "C": ({"C": (1, 4, 10)}, r"C must be \[batch, N, L\] = \[2, 4, 10\], got \[1, 4, 10\]"),
    "D": ({"D": (4,)}, r"D must be \[dim\] = \[3\], got \[4\]"),
    "z": ({"z": (2, 3, 11)}, r"z must be \[batch, dim, L\] = \[2, 3, 10\]"),
    "bias": ({"delta_bias": (3, 1)}, r"delta_bias must be \[dim\] = \[3\]"),
    "empty": ({"u": (2, 3, 0)}, r"L >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_shape_errors_raise_before_compute(case, temp_backend):
    calls = []
    temp_backend("spy", lambda *a: calls.append(a), lambda device: True)
    overrides, message = BAD_SHAPES[case]
    inputs = make_scan_inputs(2, 3, 4, 10)
    for name, shape in overrides.items():
        inputs[name] = torch.zeros(shape, dtype=torch.float64)
    for fn in (
        lambda: selective_scan(**inputs, backend="spy"),
        lambda: selective_scan_ref(**inputs),
        lambda: selective_scan_chunked(**inputs),
    ):
        with pytest.raises(ValueError, match=message):
            fn()
    assert not calls


@pytest.mark.parametrize(
    ("name", "dtype"), [("A", torch.complex64), ("u", torch.int64), ("D", torch.bool)]
)
def test_dtype_errors(name, dtype):
    inputs = make_scan_inputs(1, 2, 2, 4)
    inputs[name] = inputs[name].detach().to(dtype)
    with pytest.raises(ValueError, match=f"{name} must be a real floating tensor"):
        selective_scan(**inputs)


def test_count_scan_flops():
    batch, dim, n_state, length = 2, 3, 4, 10
    inputs = make_scan_inputs(batch, dim, n_state, length)
    per_call = batch * dim * length * (7 * n_state + 10)
    selective_scan(**inputs)  # outside: not counted anywhere
    with count_scan_flops() as outer:
        selective_scan(**inputs)
        with count_scan_flops() as inner:
            selective_scan(**inputs, backend="reference")
            selective_scan_chunked(**inputs)  # direct backend calls bypass the counter
        selective_scan(**make_scan_inputs(1, 5, 2, 7))
    assert inner.flops == per_call and inner.calls == 1
    assert outer.flops == 2 * per_call + 1 * 5 * 7 * (7 * 2 + 10) and outer.calls == 3
    assert isinstance(outer.flops, int)
    assert ops.scan_flops(batch, dim, length, n_state) == per_call
    assert not ops._counters
