"""Text conditioning: the text condition (projection, masked pooling, null text, caption dropout),
the cross-attention against a loop reference, ZigMa's and DiT's text blocks, guidance over text
and the recorded attention maps."""

from __future__ import annotations

import math

import pytest
import torch

from zigma.generate import AttentionMaps, generate
from zigma.models import (
    DiT,
    DiTConfig,
    TextCondition,
    UViTConfig,
    ZigMa,
    ZigMaConfig,
    from_pretrained,
    save_pretrained,
)
from zigma.models.layers import CrossAttention
from zigma.transport import TransportConfig, cfg_velocity

TEXT_DIM = 12


def _config(cls, **kw):
    base = dict(input_size=(8, 8), in_channels=3, patch_size=2, hidden_size=32, depth=2)
    base.update(text_dim=TEXT_DIM, cross_attn_heads=2, cross_attn_head_dim=8)
    if cls is DiTConfig:
        base["num_heads"] = 2
    base.update(kw)
    return cls(**base)


def _perturbed(model, seed=0):
    """The model with every parameter moved off its init (zero-init layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _text(batch=2, length=5, lengths=(3, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, TEXT_DIM, generator=g)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return tokens, mask


MODELS = [(ZigMa, ZigMaConfig), (DiT, DiTConfig)]


def reference_cross_attention(layer: CrossAttention, x, context, mask):
    """Loop over samples, heads and queries: softmax over the kept keys only."""
    b, length, _ = x.shape
    h = layer.num_heads
    q = layer.q(x).reshape(b, length, h, -1)
    k, v = layer.kv(context).reshape(b, context.shape[1], 2, h, -1).unbind(2)
    out = torch.zeros(b, length, h, q.shape[-1], dtype=x.dtype)
    for i in range(b):
        keep = mask[i].nonzero().flatten()
        for j in range(h):
            for n in range(length):
                scores = torch.stack([q[i, n, j] @ k[i, s, j] for s in keep])
                w = torch.softmax(scores / math.sqrt(q.shape[-1]), 0)
                out[i, n, j] = sum(w[a] * v[i, s, j] for a, s in enumerate(keep))
    return layer.proj(out.reshape(b, length, -1))


@pytest.mark.parametrize("record", [False, True])
def test_cross_attention_matches_a_loop_reference(record):
    torch.manual_seed(0)
    layer = CrossAttention(16, num_heads=2, head_dim=4).double()
    x, ctx = torch.randn(2, 6, 16).double(), torch.randn(2, 4, 16).double()
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    seen = []
    if record:
        layer.recorder = seen.append
    got = layer(x, ctx, mask)
    torch.testing.assert_close(got, reference_cross_attention(layer, x, ctx, mask))
    if record:  # weights [B, L, S]: rows sum to one, masked keys get nothing
        (w,) = seen
        assert w.shape == (2, 6, 4)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 6).double())
        assert torch.all(w[0, :, 2:] == 0)


def test_text_condition_pools_the_kept_tokens_and_leads_with_the_null_token():
    cond = TextCondition(TEXT_DIM, 16, dropout_prob=0.0)
    _perturbed(cond)
    tokens, mask = _text()
    vector, (context, keep) = cond.embed((tokens, mask))
    h = cond.proj(tokens)
    for i, n in enumerate((3, 5)):
        torch.testing.assert_close(vector[i], h[i, :n].mean(0))
    assert context.shape == (2, 6, 16) and keep.shape == (2, 6)
    assert keep[:, 0].all() and torch.equal(keep[:, 1:], mask)
    torch.testing.assert_close(context[:, 0], cond.null_token.expand(2, -1))
    # the null text: an all-False mask gives the null vector whatever the tokens hold
    vector, (context, keep) = cond.embed(cond.null_like((tokens, mask)))
    torch.testing.assert_close(vector, cond.null_vector.expand(2, -1))
    assert keep.sum().item() == 2  # the null token only


def test_zero_null_text_is_zero_and_not_trained():
    cond = TextCondition(TEXT_DIM, 16, dropout_prob=0.0, null="zero")
    assert "null_vector" not in dict(cond.named_parameters())
    vector, _ = cond.embed(cond.null_like(_text()))
    assert torch.equal(vector, torch.zeros(2, 16))


def test_caption_dropout_drops_whole_captions_at_its_rate():
    cond = TextCondition(TEXT_DIM, 16, dropout_prob=0.3)
    tokens, mask = torch.randn(4000, 3, TEXT_DIM), torch.ones(4000, 3, dtype=torch.bool)
    torch.manual_seed(0)
    _, dropped = cond.drop((tokens, mask))
    rows = dropped.any(1)
    assert torch.equal(dropped, rows[:, None].expand_as(dropped))  # all or nothing per caption
    assert abs((~rows).float().mean().item() - 0.3) < 0.03


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_padding_does_not_change_the_output(cls, cfg_cls):
    model = _perturbed(cls(_config(cfg_cls)))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    tokens, mask = _text(length=5, lengths=(3, 5))
    padded = torch.cat([tokens, 100 * torch.randn(2, 4, TEXT_DIM)], 1)
    pad_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        a = model(x, t, text=(tokens, mask))
        b = model(x, t, text=(padded, pad_mask))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_the_text_changes_the_output_and_the_null_text_ignores_token_values(cls, cfg_cls):
    model = _perturbed(cls(_config(cfg_cls)))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    a, b = _text(seed=1), _text(seed=2)
    with torch.no_grad():
        assert (model(x, t, text=a) - model(x, t, text=b)).abs().max() > 1e-4
        null_a, null_b = model.null_conditions({"text": a}), model.null_conditions({"text": b})
        torch.testing.assert_close(model(x, t, **null_a), model(x, t, **null_b))
        garbage = (torch.randn_like(a[0]), torch.zeros_like(a[1]))
        torch.testing.assert_close(model(x, t, text=garbage), model(x, t, **null_a))


def test_fresh_zigma_text_block_ignores_the_text():
    """adaLN-Zero: the cross-attention's gate starts at zero, so however the rest of a fresh
    block is trained, its output does not depend on the context."""
    model = ZigMa(_config(ZigMaConfig))
    block = model.blocks[0]
    d = model.config.hidden_size
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name != "adaLN.linear.weight" and name != "adaLN.linear.bias":
                p.add_(0.05 * torch.randn_like(p))
        block.adaLN.linear.weight[: 3 * d].normal_(std=0.05)  # the mixer's modulation only
    plan = model.plans(model.config.grid_shape, torch.device("cpu"))[0]
    x, c = torch.randn(2, 16, d), torch.randn(2, d)
    ctx = [torch.randn(2, 4, d) for _ in range(2)]
    mask = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        a = block(x, c, plan, model.config.grid_shape, ctx[0], mask)
        b = block(x, c, plan, model.config.grid_shape, ctx[1], mask)
    assert torch.equal(a, b)
    assert (a - x).abs().max() > 1e-3  # the mixer did act


def test_fresh_dit_text_block_ignores_the_text():
    model = DiT(_config(DiTConfig))
    assert torch.count_nonzero(model.blocks[0].cross_attn.proj.weight) == 0


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_class_and_text_together(cls, cfg_cls):
    model = _perturbed(cls(_config(cfg_cls, num_classes=3)))
    assert model.condition_names == ("y", "text")
    cond = {"y": torch.tensor([0, 2]), "text": _text()}
    null = model.null_conditions(cond)
    assert torch.equal(null["y"], torch.tensor([3, 3])) and not null["text"][1].any()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8), torch.rand(2), **cond).shape == (2, 3, 8, 8)


def test_guidance_over_text_is_two_separate_calls_combined():
    model = _perturbed(ZigMa(_config(ZigMaConfig)))
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    cond = {"text": _text()}
    null = model.null_conditions(cond)
    with torch.no_grad():
        want = model(x, t, **null) + 4.0 * (model(x, t, **cond) - model(x, t, **null))
        got = cfg_velocity(model, 4.0, cond, null)(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_generate_records_attention_maps_of_the_conditional_branch():
    model = _perturbed(ZigMa(_config(ZigMaConfig)))
    tokens, mask = _text(batch=3, lengths=(2, 5, 4))
    maps = AttentionMaps()
    out = generate(
        model, TransportConfig(), 3, cond={"text": (tokens, mask)}, steps=2, batch_size=2,
        guidance_scale=2.0, attention=maps,
    )  # fmt: skip
    assert out.shape == (3, 3, 8, 8)
    assert maps.maps.shape == (3, 16, 6) and maps.grid == (1, 4, 4)
    torch.testing.assert_close(maps.maps.sum(-1), torch.ones(3, 16))
    assert torch.all(maps.maps[0, :, 3:] == 0)  # past the first caption's two tokens
    with pytest.raises(ValueError, match="text model"):
        generate(_perturbed(ZigMa(_config(ZigMaConfig, text_dim=0))), TransportConfig(), 1,
                 steps=1, attention=AttentionMaps())  # fmt: skip


@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_text_model_round_trips_through_save_pretrained(tmp_path, cls, cfg_cls):
    cfg = _config(cfg_cls, text_null="zero", text_encoder="minilm", text_encoder_hash="ab" * 32)
    model = _perturbed(cls(cfg))
    save_pretrained(model, tmp_path / "m")
    back = from_pretrained(tmp_path / "m")
    assert back.config == model.config
    x, t, text = torch.randn(2, 3, 8, 8), torch.rand(2), _text()
    with torch.no_grad():
        assert torch.equal(back(x, t, text=text), model(x, t, text=text))


@pytest.mark.parametrize(
    "value,match",
    [
        (None, "missing condition"),
        ((torch.randn(2, 5, 7), None), "text tokens must be float"),
        ((torch.randn(3, 5, TEXT_DIM), None), "text tokens must be float"),
        ((torch.randn(2, 5, TEXT_DIM), torch.ones(2, 5)), "text mask must be bool"),
        ((torch.randn(2, 5, TEXT_DIM), torch.ones(2, 4, dtype=torch.bool)), "text mask"),
        ("a red circle", "text must be a pair"),
    ],
)
def test_bad_text_is_refused_naming_what_the_model_takes(value, match):
    model = ZigMa(_config(ZigMaConfig))
    with pytest.raises(ValueError, match=match):
        model(torch.randn(2, 3, 8, 8), torch.rand(2), text=value)


def test_bad_text_configs_are_refused():
    with pytest.raises(ValueError, match="U-ViT has no text"):
        UViTConfig(input_size=(8, 8), text_dim=16)
    with pytest.raises(ValueError, match="text_null"):
        _config(ZigMaConfig, text_null="mean")
    with pytest.raises(ValueError, match="cross_attn_heads"):
        _config(ZigMaConfig, cross_attn_heads=0)
    with pytest.raises(ValueError, match="text_dropout_prob"):
        _config(ZigMaConfig, text_dropout_prob=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls,cfg_cls", MODELS)
def test_text_model_runs_under_cuda_graphs_and_guided_generation(cls, cfg_cls):
    """Text conditions (a tuple of tokens and mask) are captured and replayed as a graph: the
    same outputs as eager, for new prompts copied into the buffers; guided generation through
    graphs matches eager generation."""
    from zigma.models import GraphedForward

    model = _perturbed(cls(_config(cfg_cls))).cuda()
    x, t = torch.randn(2, 3, 8, 8, device="cuda"), torch.rand(2, device="cuda")
    text = tuple(v.cuda() for v in _text(seed=1))
    graphed = GraphedForward(model, x, t, {"text": text})
    for seed in (2, 3):
        new = tuple(v.cuda() for v in _text(seed=seed, lengths=(5, 2)))
        with torch.no_grad():
            eager = model(x, t, text=new)
        torch.testing.assert_close(graphed(x, t, text=new), eager, rtol=1e-5, atol=1e-6)
    cond = {"text": _text(batch=3, lengths=(2, 5, 4))}
    args = dict(cond=cond, steps=3, guidance_scale=3.0, device="cuda")
    a = generate(model, TransportConfig(), 3, **args)
    b = generate(model, TransportConfig(), 3, cuda_graphs=True, **args)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
