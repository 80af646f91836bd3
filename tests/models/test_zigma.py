"""ZigMa backbone: shapes, zero-init, the layer-wise scan schedule, parameter counts."""

import math

import pytest
import torch

from zigma.models import GridShape, LayerPlan, ZigMa, ZigMaConfig, count_parameters
from zigma.scan import inverse_orders, scan_orders


def tiny(**kw) -> ZigMa:
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=3)
    cfg.update(kw)
    torch.manual_seed(0)
    return ZigMa(ZigMaConfig(**cfg))


def randomize_zero_init(model: ZigMa, seed: int = 1) -> ZigMa:
    """Give the zero-initialised adaLN and final layers random values so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


ALL_SCHEDULES = [
    dict(scan="zigzag", num_orders=1),
    dict(scan="zigzag", num_orders=2),
    dict(scan="zigzag", num_orders=4),
    dict(scan="zigzag", num_orders=8),
    dict(scan="sweep"),
    dict(scan="hilbert"),
    dict(scan="random"),
    dict(scan="bidirectional"),
]


@pytest.mark.parametrize(
    "sched", ALL_SCHEDULES, ids=lambda s: f"{s['scan']}{s.get('num_orders', '')}"
)
def test_untrained_model_outputs_exact_zero(sched):
    model = tiny(**sched)
    x = torch.randn(2, 3, 8, 8)
    out = model(x, torch.rand(2))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0


def test_zero_parameter_claim():
    """Zigzag-1..8, sweep, hilbert and random have exactly the same parameter count."""
    counts = {
        f"{s['scan']}{s.get('num_orders', '')}": count_parameters(tiny(**s))
        for s in ALL_SCHEDULES
        if s["scan"] != "bidirectional"
    }
    assert len(set(counts.values())) == 1, counts
    # the bidirectional (Vision-Mamba) baseline pays a second set of SSM parameters per block
    bi = count_parameters(tiny(scan="bidirectional"))
    d_inner, n, dt_rank, k = 64, 16, math.ceil(32 / 16), 4
    per_block = (
        d_inner * k
        + d_inner
        + d_inner * (dt_rank + 2 * n)
        + dt_rank * d_inner
        + d_inner
        + d_inner * n
        + d_inner
    )
    assert bi - counts["zigzag8"] == 3 * per_block


def test_parameter_count_closed_form():
    d, depth, p, c, n, k = 32, 3, 2, 3, 16, 4
    di, r = 2 * d, math.ceil(d / 16)
    mamba = d * 2 * di + di * k + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d
    block = mamba + d * 3 * d + 3 * d
    embed = c * p * p * d + d + (256 * d + d) + (d * d + d) + 16 * d  # patch, t-MLP, learnable PE
    final = d * 2 * d + 2 * d + d * p * p * c + p * p * c
    assert count_parameters(tiny()) == embed + depth * block + final
    labels = count_parameters(tiny(num_classes=10)) - count_parameters(tiny())
    assert labels == 11 * d  # 10 classes + the null class


def test_layer_i_uses_order_i_mod_k():
    model = tiny(scan="zigzag", num_orders=4, depth=9, pos_embed="none")
    seen = []
    for block in model.blocks:
        block.mixer.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    model(torch.randn(1, 3, 8, 8), torch.rand(1))
    expected = scan_orders("zigzag", 4, 4)
    assert len(seen) == 9
    for i, order in enumerate(seen):
        assert torch.equal(order, expected[i % 4]), i


def test_scan_order_changes_the_function_but_not_the_weights():
    """Same weights, different schedules -> different outputs; the order is the only change."""
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    sweep = randomize_zero_init(tiny(scan="sweep"))
    outs = {}
    for sched in ("sweep", "zigzag", "hilbert"):
        m = tiny(scan=sched)
        missing = m.load_state_dict(sweep.state_dict(), strict=False)
        assert missing.unexpected_keys == [] and set(missing.missing_keys) <= {"scan_orders"}
        outs[sched] = m(x, t)
    assert not torch.allclose(outs["sweep"], outs["zigzag"])
    assert not torch.allclose(outs["zigzag"], outs["hilbert"])


def test_zigzag_block_equals_permuted_sweep_block():
    """One zigzag layer == permute tokens, run the raster (sweep) layer, un-permute."""
    zz = randomize_zero_init(tiny(scan="zigzag", num_orders=8, depth=1, pos_embed="none"))
    block = zz.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    order = scan_orders("zigzag", 4, 4)[0]
    inv = inverse_orders(order)
    shape = GridShape(1, 4, 4)
    got = block(x, c, LayerPlan("none", order, inv), shape)
    ref = block(x[:, order], c, LayerPlan("none"), shape)[:, inv]
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("pos_embed", ["none", "sincos"])
def test_any_size_divisible_by_patch(pos_embed):
    model = randomize_zero_init(tiny(pos_embed=pos_embed, scan="zigzag"))
    for h, w in [(8, 8), (6, 10), (4, 12), (2, 2)]:
        out = model(torch.randn(1, 3, h, w), torch.rand(1))
        assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 4, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="not divisible by patch_size 2"):
        model(torch.randn(1, 3, 7, 8), torch.rand(1))
    with pytest.raises(ValueError, match="learnable positional embedding was built for 8x8"):
        model(torch.randn(1, 3, 12, 8), torch.rand(1))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.randn(3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="t must be"):
        model(torch.randn(2, 3, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), y=torch.tensor([1]))


def test_config_validation():
    with pytest.raises(ValueError, match="num_orders for scan='zigzag' must be 1, 2, 4 or 8"):
        ZigMaConfig(num_orders=3)
    with pytest.raises(ValueError, match="single order"):
        ZigMaConfig(scan="sweep", num_orders=8)
    with pytest.raises(ValueError, match="scan must be one of"):
        ZigMaConfig(scan="spiral")
    with pytest.raises(ValueError, match="not a positive multiple of patch_size"):
        ZigMaConfig(input_size=30, patch_size=4)
    assert ZigMaConfig(input_size=(16, 24)).grid_size == (8, 12)


def test_class_conditioning_and_null_class():
    model = randomize_zero_init(tiny(num_classes=5, class_dropout_prob=0.5)).eval()
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3)
    assert model.null_conditions({"y": torch.tensor([0])})["y"].item() == 5
    a = model(x, t, y=torch.tensor([0, 1, 2]))
    b = model(x, t, y=torch.tensor([0, 1, 3]))
    assert torch.allclose(a[:2], b[:2]) and not torch.allclose(a[2], b[2])
    null = model.null_conditions({"y": torch.zeros(3, dtype=torch.long)})
    model(x, t, **null)  # the null label is a valid input
    with pytest.raises(ValueError, match="missing condition.*y=class labels"):
        model(x, t)
    with pytest.raises(ValueError, match=r"labels must be in 0..5"):
        model(x, t, y=torch.tensor([0, 1, 6]))
    # label dropout acts in training only: in train mode the null class shows up
    model.train()
    torch.manual_seed(0)
    labels = torch.zeros(2000, dtype=torch.long)
    emb = model.conditioner(torch.zeros(2000), {"y": labels}).vectors["y"]
    null_row = model.conditioner.conditions["y"].embedding.weight[5]
    dropped = (emb == null_row).all(dim=1).float().mean()
    assert 0.45 < dropped < 0.55


def test_time_conditioning_matters():
    model = randomize_zero_init(tiny()).eval()
    x = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(model(x, torch.tensor([0.1])), model(x, torch.tensor([0.9])))
    torch.testing.assert_close(model(x, 0.3), model(x, torch.tensor([0.3])))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    m1 = randomize_zero_init(tiny())
    m2 = randomize_zero_init(tiny())
    m2.load_state_dict(m1.state_dict())
    m2.grad_checkpointing = True
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    for m in (m1, m2):
        m.train()
        m(x, t).square().mean().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, msg=n)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny(scan="zigzag", hidden_size=32, depth=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    target = torch.randn(4, 3, 8, 8)
    losses = []
    for _ in range(30):
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_ssm_parameters_stay_fp32_under_autocast():
    model = randomize_zero_init(tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 8, 8), torch.rand(2))
    assert torch.isfinite(out.float()).all()
    mixer = model.blocks[0].mixer
    for p in (mixer.A_log, mixer.D, mixer.dt_proj.bias):
        assert p.dtype == torch.float32 and getattr(p, "_keep_fp32", False)


def test_random_schedule_is_seeded():
    a, b, c = tiny(scan="random"), tiny(scan="random"), tiny(scan="random", scan_seed=1)
    assert torch.equal(a.scan_orders, b.scan_orders)
    assert not torch.equal(a.scan_orders, c.scan_orders)
