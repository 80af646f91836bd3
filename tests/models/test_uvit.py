"""U-ViT baseline: shapes, time/class tokens, the long-skip wiring, parameter count, config
checks and a few training steps."""

import pytest
import torch

from zigma.models import UViT, UViTConfig, count_parameters
from zigma.models.layers import Attention


def tiny(**kw) -> UViT:
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=5, num_heads=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return UViT(UViTConfig(**cfg))


@pytest.mark.parametrize("num_classes", [0, 5])
@pytest.mark.parametrize("final_conv", [True, False])
def test_output_shape(num_classes, final_conv):
    model = tiny(num_classes=num_classes, final_conv=final_conv, out_channels=2)
    y = torch.tensor([0, 5]) if num_classes else None
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), y=y)
    assert out.shape == (2, 2, 8, 8) and torch.isfinite(out).all()
    assert model.extra_pos_embed.shape[1] == (2 if num_classes else 1)  # time (+ class)


def test_any_size_with_sincos_positions():
    model = tiny(pos_embed="sincos")
    for h, w in [(6, 10), (4, 12), (2, 2)]:
        assert model(torch.randn(1, 3, h, w), torch.rand(1)).shape == (1, 3, h, w)
    with pytest.raises(ValueError, match="learnable positional embedding was built for 8x8"):
        tiny()(torch.randn(1, 3, 6, 10), torch.rand(1))


def test_long_skips_join_mirrored_blocks():
    """Out-block i fuses the output of in-block (n - 1 - i): a U-shaped stack."""
    model = tiny(depth=7)
    assert (len(model.in_blocks), len(model.out_blocks)) == (3, 3)
    assert model.mid_block.skip_linear is None
    assert all(b.skip_linear is None for b in model.in_blocks)
    assert all(b.skip_linear.in_features == 64 for b in model.out_blocks)
    outs, skips = [], []
    for block in model.in_blocks:
        block.register_forward_hook(lambda m, args, out: outs.append(out))
    for block in model.out_blocks:
        block.register_forward_pre_hook(lambda m, args: skips.append(args[1]))
    model(torch.randn(2, 3, 8, 8), torch.rand(2))
    assert len(skips) == 3
    for i, skip in enumerate(skips):
        assert skip is outs[2 - i]


def test_time_and_class_are_tokens():
    model = tiny(num_classes=4).eval()
    assert not hasattr(model.in_blocks[0], "adaLN")  # conditioning enters only as tokens
    x = torch.randn(2, 3, 8, 8)
    a = model(x, torch.tensor([0.1, 0.1]), y=torch.tensor([0, 1]))
    assert not torch.allclose(a, model(x, torch.tensor([0.9, 0.9]), y=torch.tensor([0, 1])))
    b = model(x, torch.tensor([0.1, 0.1]), y=torch.tensor([0, 4]))  # 4 = null class
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    assert model.null_conditions({"y": torch.tensor([0])})["y"].item() == 4


def test_attention_is_the_shared_sdpa_module():
    block = tiny().in_blocks[0]
    assert isinstance(block.attn, Attention) and block.attn.qkv.bias is None  # U-ViT: no bias


def test_parameter_count_closed_form():
    d, depth, p, c, mlp, n_tok = 32, 5, 2, 3, 128, 16
    block = 4 * d + d * 3 * d + (d * d + d) + (d * mlp + mlp + mlp * d + d)  # 2 LN, qkv, proj, MLP
    skips = (depth // 2) * (2 * d * d + d)
    embed = c * p * p * d + d + (256 * d + d) + (d * d + d) + n_tok * d + 1 * d  # + time token pos
    head = 2 * d + d * p * p * c + p * p * c + (c * c * 9 + c)  # norm, decoder, 3x3 conv
    assert count_parameters(tiny()) == embed + depth * block + skips + head
    assert count_parameters(tiny(num_classes=10)) - count_parameters(tiny()) == 11 * d + d


def test_config_checks():
    with pytest.raises(ValueError, match="depth must be odd"):
        UViTConfig(depth=4)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        UViTConfig(hidden_size=32, num_heads=3)


def test_a_few_training_steps_reduce_the_loss(fit):
    model = tiny(num_classes=3)
    losses = fit(model, steps=20, num_classes=3)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())
