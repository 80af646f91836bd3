"""K-direction parallel Mamba (paper Fig. 6c/d): the mixer against K single-order mixers,
against the bidirectional mixer, its parameter growth, and ZigMa's parallel scan mode."""

import math
import os

import pytest
import torch

from zigma.models import ZigMa, ZigMaConfig, count_parameters
from zigma.scan import inverse_orders, scan_orders
from zigma.ssm import Mamba, ParallelMamba, last_backend

D_MODEL, H, W = 8, 3, 4


def _parallel(k: int, **kw) -> ParallelMamba:
    torch.manual_seed(0)
    mixer = ParallelMamba(D_MODEL, k, d_state=4, backend="reference", **kw).double()
    with torch.no_grad():  # distinct paths: a mix-up of paths cannot cancel out
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mixer


def _single_order_copies(mixer: ParallelMamba) -> list[Mamba]:
    """K plain Mamba mixers, mixer k holding the shared projections and path k's parameters."""
    paths = [""] + [f"extra_paths.{i}." for i in range(mixer.num_paths - 1)]
    state = mixer.state_dict()
    copies = []
    for prefix in paths:
        single = Mamba(D_MODEL, d_state=4, backend="reference", bias=mixer.in_proj.bias is not None)
        shared = ("in_proj.", "out_proj.")
        own = {n: state[n if n.startswith(shared) else prefix + n] for n in single.state_dict()}
        single.double().load_state_dict(own)
        copies.append(single)
    return copies


@pytest.mark.parametrize(("k", "kind"), [(1, "zigzag"), (4, "zigzag"), (3, "random")])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_mean_of_single_order_mixers(k, kind, bias):
    mixer = _parallel(k, bias=bias)
    orders = scan_orders(kind, H, W, num=8, seed=3)[[5, 0, 2, 7][:k]]
    x = torch.randn(2, H * W, D_MODEL, dtype=torch.float64)
    singles = _single_order_copies(mixer)
    expected = sum(m(x, order) for m, order in zip(singles, orders, strict=True)) / k
    torch.testing.assert_close(mixer(x, orders), expected)
    torch.testing.assert_close(mixer(x, orders, inverse_orders(orders)), expected)


def test_two_opposite_orders_are_the_bidirectional_mixer_halved():
    mixer = _parallel(2)
    bi = Mamba(D_MODEL, d_state=4, bidirectional=True, backend="reference").double()
    rename = {"conv1d_b": "conv1d", "x_proj_b": "x_proj", "dt_proj_b": "dt_proj"}
    rename.update({"A_b_log": "A_log", "D_b": "D"})
    state = {}
    for name in bi.state_dict():
        head, _, rest = name.partition(".")
        source = f"extra_paths.0.{rename[head]}" if head in rename else head
        state[name] = mixer.state_dict()[f"{source}.{rest}" if rest else source]
    state["out_proj.weight"] = state["out_proj.weight"] / 2  # the mean of two paths
    bi.load_state_dict(state)
    order = scan_orders("zigzag", H, W)[1]
    x = torch.randn(2, H * W, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(mixer(x, torch.stack([order, order.flip(0)])), bi(x, order))


def test_parameters_grow_linearly_with_k():
    d_inner, n, r, d_conv = 2 * D_MODEL, 4, math.ceil(D_MODEL / 16), 4
    per_path = (
        d_inner * (d_conv + 1)  # depthwise conv + bias
        + d_inner * (r + 2 * n)  # x_proj
        + r * d_inner + d_inner  # dt_proj + bias
        + d_inner * n + d_inner  # A_log, D
    )  # fmt: skip
    shared = D_MODEL * 2 * d_inner + d_inner * D_MODEL  # in_proj, out_proj
    for k in (1, 2, 8):
        assert count_parameters(ParallelMamba(D_MODEL, k, d_state=4)) == shared + k * per_path
    assert count_parameters(ParallelMamba(D_MODEL, 1)) == count_parameters(Mamba(D_MODEL))


def test_every_path_gets_gradients_and_its_own_init():
    mixer = ParallelMamba(D_MODEL, 3, d_state=4)
    assert not torch.equal(mixer.dt_proj.bias, mixer.extra_paths[0].dt_proj.bias)
    assert torch.equal(mixer.extra_paths[1].D, torch.ones(2 * D_MODEL))
    assert mixer.extra_paths[1].A_log._keep_fp32  # tagged like Mamba's own
    orders = scan_orders("zigzag", H, W, num=4)[:3]
    mixer(torch.randn(2, H * W, D_MODEL), orders).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    mixer = ParallelMamba(D_MODEL, 2)
    x = torch.randn(1, H * W, D_MODEL)
    with pytest.raises(ValueError, match=r"orders must be \[K, L\] = \[2, 12\]"):
        mixer(x, scan_orders("zigzag", H, W)[:3])
    with pytest.raises(ValueError, match="num_paths must be >= 1"):
        ParallelMamba(D_MODEL, 0)
    with pytest.raises(ValueError, match="as orders"):
        ParallelMamba(D_MODEL, 2, bidirectional=True)


@pytest.mark.triton
def test_triton_token_path_matches_the_gather_path(monkeypatch):
    """The fast path (orders folded into the Triton conv, token-layout scan) against the
    gather path; the scan itself is routed to the token-layout reference, as in
    tests/ssm/test_mamba_triton.py, so this runs under the Triton interpreter on CPU."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":  # CPU tensors: the interpreter's test
        pytest.skip("runs on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1)")
    import zigma.ssm.ops as ops
    from zigma.ssm.ops import tokens

    if "triton" not in ops.BACKENDS:
        backend = ops.Backend("triton", ops.selective_scan_ref, lambda device: True)
        monkeypatch.setitem(ops.BACKENDS, "triton", backend)
    scan = lambda *args: tokens.selective_scan_tokens_ref(*args, backend="reference")  # noqa: E731
    monkeypatch.setattr(tokens, "_triton_scan", lambda: scan)

    ref = _parallel(3)
    fast = ParallelMamba(D_MODEL, 3, d_state=4, backend="triton").double()
    fast.load_state_dict(ref.state_dict())
    orders = scan_orders("zigzag", H, W)[[1, 6, 3]]
    x = torch.randn(2, H * W, D_MODEL, dtype=torch.float64)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_fast = ref(x_ref, orders), fast(x_fast, orders)
    assert last_backend() == "triton"
    torch.testing.assert_close(y_fast, y_ref)
    y_ref.square().sum().backward()
    y_fast.square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, msg=lambda m, n=name: f"{n}: {m}")


# -- ZigMa with scan_mode="parallel" ----------------------------------------------------------


def tiny(**kw) -> ZigMa:
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2)
    cfg.update(scan="zigzag", scan_mode="parallel", num_orders=4, **kw)
    torch.manual_seed(0)
    return ZigMa(ZigMaConfig(**cfg))


@pytest.mark.parametrize("num_classes", [0, 3])
def test_untrained_model_outputs_exact_zero(num_classes):
    model = tiny(num_classes=num_classes)
    y = torch.tensor([0, 3]) if num_classes else None
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), y=y)
    assert out.shape == (2, 3, 8, 8) and torch.count_nonzero(out) == 0


def test_every_layer_scans_all_orders(randomize_zero_init):
    model = randomize_zero_init(tiny(depth=3, pos_embed="sincos"))
    seen = []
    for block in model.blocks:
        assert isinstance(block.mixer, ParallelMamba) and block.mixer.num_paths == 4
        block.mixer.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    model(torch.randn(1, 3, 8, 8), torch.rand(1))
    assert len(seen) == 3
    assert all(torch.equal(orders, scan_orders("zigzag", 4, 4, num=4)) for orders in seen)
    out = model(torch.randn(1, 3, 6, 10), torch.rand(1))  # other grids get their own orders
    assert out.shape == (1, 3, 6, 10) and seen[-1].shape == (4, 15)


def test_layerwise_weights_are_path_zero_of_the_parallel_model():
    layerwise = ZigMa(
        ZigMaConfig(input_size=8, in_channels=3, hidden_size=32, depth=2, num_orders=4)
    )
    parallel = tiny()
    result = parallel.load_state_dict(layerwise.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(".extra_paths." in k for k in result.missing_keys)


def test_config_checks():
    with pytest.raises(ValueError, match="needs a multi-order scan"):
        ZigMaConfig(scan="sweep", scan_mode="parallel")
    with pytest.raises(ValueError, match="scan_mode must be one of"):
        ZigMaConfig(scan_mode="alternating")


def test_a_few_training_steps_reduce_the_loss(fit):
    model = tiny()
    losses = fit(model, steps=20)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())
