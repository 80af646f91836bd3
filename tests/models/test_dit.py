"""DiT baseline: shapes, adaLN-Zero start, attention and block against hand-written maths,
parameter count, conditioning, input checks and a few training steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from zigma.models import DiT, DiTConfig, count_parameters
from zigma.models.layers import Attention


def tiny(**kw) -> DiT:
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return DiT(DiTConfig(**cfg))


@pytest.mark.parametrize("num_classes", [0, 5])
def test_untrained_model_outputs_exact_zero(num_classes):
    model = tiny(num_classes=num_classes)
    x = torch.randn(2, 3, 8, 8)
    y = torch.tensor([0, 5]) if num_classes else None
    out = model(x, torch.rand(2), y=y)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0


def test_any_size_with_sincos_positions(randomize_zero_init):
    model = randomize_zero_init(tiny(out_channels=5))  # sincos is DiT's default
    for h, w in [(8, 8), (6, 10), (4, 12), (2, 2)]:
        out = model(torch.randn(2, 3, h, w), torch.rand(2))
        assert out.shape == (2, 5, h, w) and torch.isfinite(out).all()
    learnable = tiny(pos_embed="learnable")
    with pytest.raises(ValueError, match="learnable positional embedding was built for 8x8"):
        learnable(torch.randn(1, 3, 6, 10), torch.rand(1))


def _softmax_attention(x, attn: Attention):
    """Multi-head attention written out: per head softmax(q k^T / sqrt(e)) v, then proj."""
    b, length, d = x.shape
    h = attn.num_heads
    e = d // h
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    heads = []
    for i in range(h):
        qi, ki, vi = (m[..., i * e : (i + 1) * e] for m in (q, k, v))
        weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(e), dim=-1)  # [B, L, L]
        heads.append(weights @ vi)
    return torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias


def test_attention_matches_handwritten_softmax():
    torch.manual_seed(0)
    attn = Attention(32, 4).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _softmax_attention(x, attn))


def test_block_matches_handwritten_formula(randomize_zero_init):
    model = randomize_zero_init(tiny().double())
    block = model.blocks[0]
    x, c = torch.randn(2, 16, 32, dtype=torch.float64), torch.randn(2, 32, dtype=torch.float64)
    mods = (F.silu(c) @ block.adaLN.linear.weight.T + block.adaLN.linear.bias).chunk(6, dim=-1)
    shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None] for m in mods)

    def ln(v):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + 1e-6
        )

    def gelu_tanh(v):
        return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))

    h = x + gate1 * _softmax_attention(ln(x) * (1 + scale1) + shift1, block.attn)
    u = ln(h) * (1 + scale2) + shift2
    mlp = gelu_tanh(u @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    expected = h + gate2 * (mlp @ block.mlp.fc2.weight.T + block.mlp.fc2.bias)
    torch.testing.assert_close(block(x, c), expected)


def test_parameter_count_closed_form():
    d, depth, p, c, mlp = 32, 2, 2, 3, 128
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp + mlp * d + d) + (d * 6 * d + 6 * d)
    embed = c * p * p * d + d + (256 * d + d) + (d * d + d)  # patch, t-MLP; sincos: no table
    final = d * 2 * d + 2 * d + d * p * p * c + p * p * c
    assert count_parameters(tiny()) == embed + depth * block + final
    assert count_parameters(tiny(num_classes=10)) - count_parameters(tiny()) == 11 * d
    assert count_parameters(tiny(pos_embed="learnable")) - count_parameters(tiny()) == 16 * d


def test_class_conditioning_and_null_class(randomize_zero_init):
    model = randomize_zero_init(tiny(num_classes=5)).eval()
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3)
    assert model.null_conditions({"y": torch.tensor([0])})["y"].item() == 5
    a = model(x, t, y=torch.tensor([0, 1, 2]))
    b = model(x, t, y=torch.tensor([0, 1, 5]))
    assert torch.allclose(a[:2], b[:2]) and not torch.allclose(a[2], b[2])
    assert not torch.allclose(model(x, torch.zeros(3), y=torch.tensor([0, 1, 2])), a)
    with pytest.raises(ValueError, match="missing condition.*y=class labels"):
        model(x, t)
    with pytest.raises(ValueError, match=r"labels must be in 0..5"):
        model(x, t, y=torch.tensor([0, 1, 6]))


def test_bad_inputs_and_config():
    model = tiny()
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 4, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), y=torch.tensor([1]))
    with pytest.raises(ValueError, match="not divisible by num_heads 5"):
        DiTConfig(hidden_size=32, num_heads=5)
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        DiTConfig(pos_embed="rope")
    assert not hasattr(model, "set_scan_backend")  # no scan to configure


def test_gradient_checkpointing_gives_same_gradients(randomize_zero_init):
    m1, m2 = randomize_zero_init(tiny()), randomize_zero_init(tiny())
    m2.grad_checkpointing = True
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    for m in (m1, m2):
        m(x, t).square().mean().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, msg=n)


def test_a_few_training_steps_reduce_the_loss(fit):
    model = tiny(num_classes=3)
    losses = fit(model, steps=20, num_classes=3)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())
