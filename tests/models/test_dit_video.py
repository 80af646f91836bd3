"""Factorised video DiT (``attn_pattern``, Latte / STDiT): shapes, the fold property of each
layer kind by perturbing one token, a block against a loop that runs attention per frame / per
location by hand, save/load, text cross-attention, and image/video batch mix-ups."""

from __future__ import annotations

import pytest
import torch

from zigma.models import DiT, DiTConfig, GridShape, ZigMa, ZigMaConfig, create_model

T, H, W = 3, 4, 4
SHAPE = GridShape(T, H, W)  # patch 1: tokens = pixels
D = 16


def video_dit(pattern: str | None = "stv", depth: int = 3, **kw) -> DiT:
    cfg = dict(input_size=(T, H, W), in_channels=2, patch_size=1, hidden_size=D, depth=depth)
    cfg.update(num_heads=2, attn_pattern=pattern, **kw)
    torch.manual_seed(0)
    model = DiT(DiTConfig(**cfg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter off its init: zero-init layers would hide bugs
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def token(frame: int, row: int, col: int) -> int:
    return (frame * H + row) * W + col  # frame-major, row-major within a frame


@pytest.mark.parametrize("pattern", [None, "s", "t", "v", "st", "sst", "stv"])
@pytest.mark.parametrize("temporal_patch", [1, 2])
def test_shapes_for_every_pattern(pattern, temporal_patch):
    model = create_model(
        "DiT-S/2", input_size=(4, 8, 8), in_channels=3, hidden_size=16, depth=3, num_heads=2,
        temporal_patch=temporal_patch, attn_pattern=pattern,
    )  # fmt: skip
    letters = {"s": "frames", "t": "locations", "v": "none"}
    want = [letters[(pattern or "v")[i % len(pattern or "v")]] for i in range(3)]
    assert model.folds == want
    x = torch.randn(2, 3, 4, 8, 8)
    out = model(x, torch.rand(2))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_image_dit_attends_over_the_whole_grid():
    assert create_model("DiT-S/2", input_size=(8, 8), depth=2).folds == ["none", "none"]


def _changed_tokens(block, fold, x, c, where: int) -> set[int]:
    with torch.no_grad():
        base = block(x, c, fold, SHAPE)
        bumped = x.clone()
        # not a constant: the layer norm would remove a shift of every channel alike
        bumped[:, where] += torch.linspace(-1.0, 1.0, x.shape[-1])
        diff = (block(bumped, c, fold, SHAPE) - base).abs().amax(dim=(0, 2))
    return {i for i in range(diff.numel()) if diff[i] > 0}


@pytest.mark.parametrize("layer", range(3))
def test_each_layer_attends_only_within_its_fold(layer):
    """Perturb one token: an ``s`` layer moves exactly its frame, a ``t`` layer exactly its
    spatial location's tokens through time, a ``v`` layer every token of the clip."""
    model = video_dit("stv")
    block, fold = model.blocks[layer], model.folds[layer]
    torch.manual_seed(layer)
    x, c = torch.randn(2, T * H * W, D), torch.randn(2, D)
    changed = _changed_tokens(block, fold, x, c, token(1, 1, 2))
    if fold == "frames":
        assert changed == {token(1, r, q) for r in range(H) for q in range(W)}
    elif fold == "locations":
        assert changed == {token(f, 1, 2) for f in range(T)}
    else:
        assert changed == set(range(T * H * W))


def _loop_reference(block, fold: str, x, c):
    """The block written out: attention run on each frame (or each location) on its own,
    outputs put back where the tokens came from, then the gated MLP."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN(c)
    h = block.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
    if fold == "frames":
        groups = [[token(f, r, q) for r in range(H) for q in range(W)] for f in range(T)]
    else:
        groups = [[token(f, r, q) for f in range(T)] for r in range(H) for q in range(W)]
    attended = torch.zeros_like(h)
    for ids in groups:
        attended[:, ids] = block.attn(h[:, ids])
    x = x + gate1[:, None] * attended
    h = block.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
    return x + gate2[:, None] * block.mlp(h)


@pytest.mark.parametrize("pattern", ["s", "t"])
def test_one_factorised_layer_equals_a_loop_over_frames_or_locations(pattern):
    model = video_dit(pattern, depth=1)
    block, fold = model.blocks[0], model.folds[0]
    torch.manual_seed(3)
    x, c = torch.randn(2, T * H * W, D), torch.randn(2, D)
    with torch.no_grad():
        got, ref = block(x, c, fold, SHAPE), _loop_reference(block, fold, x, c)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_one_frame_or_one_location_is_full_attention():
    """Attention within the only frame, or across frames at the only location, is attention
    over the whole clip: the same outputs as the unfactorised DiT with the same weights."""
    full = video_dit(None, depth=2)
    t = torch.rand(2)
    for pattern, x in [("s", torch.randn(2, 2, 1, H, W)), ("t", torch.randn(2, 2, T, 1, 1))]:
        factorised = video_dit(pattern, depth=2)  # same seeds: the same weights
        with torch.no_grad():
            torch.testing.assert_close(factorised(x, t), full(x, t), rtol=1e-5, atol=1e-6)


def test_video_dit_round_trips_with_its_pattern(tmp_path):
    model = video_dit("ts", depth=2, num_classes=3)
    model.save_pretrained(tmp_path / "m")
    back = DiT.from_pretrained(tmp_path / "m")
    assert back.config.attn_pattern == "ts" and back.folds == ["locations", "frames"]
    x, t, y = torch.randn(2, 2, T, H, W), torch.rand(2), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(back(x, t, y=y), model(x, t, y=y))
        # the pattern matters: the same weights with full attention compute something else
        full = DiT(DiTConfig(**{**vars(model.config), "attn_pattern": None}))
        full.load_state_dict(model.state_dict())
        assert (full(x, t, y=y) - model(x, t, y=y)).abs().max() > 1e-4


def test_text_cross_attention_on_a_factorised_video_dit():
    model = video_dit("st", depth=2, text_dim=12, cross_attn_heads=2, cross_attn_head_dim=8)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 5, 12, generator=g)
    mask = torch.arange(5)[None] < torch.tensor([3, 5])[:, None]
    other = torch.randn(2, 5, 12, generator=g)
    x, t = torch.randn(2, 2, T, H, W), torch.rand(2)
    with torch.no_grad():
        a = model(x, t, text=(tokens, mask))
        b = model(x, t, text=(other, mask))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-4  # the text reaches the output


def test_factorised_video_dit_trains(fit):
    model = create_model(
        "DiT-S/1", input_size=(2, 4, 4), in_channels=2, hidden_size=32, depth=2, num_heads=2,
        attn_pattern="st",
    )  # fmt: skip
    losses = fit(model, steps=30)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_bad_attn_patterns():
    with pytest.raises(ValueError, match="attn_pattern must be letters s"):
        DiTConfig(input_size=(2, 4, 4), attn_pattern="sxt")
    with pytest.raises(ValueError, match="attn_pattern must be letters s"):
        DiTConfig(input_size=(2, 4, 4), attn_pattern="")
    with pytest.raises(ValueError, match="attn_pattern applies to video models"):
        DiTConfig(input_size=(4, 4), attn_pattern="st")


@pytest.mark.parametrize("cls,cfg_cls", [(ZigMa, ZigMaConfig), (DiT, DiTConfig)])
def test_image_and_video_batches_are_not_mixed_up(cls, cfg_cls):
    """A video model given an image batch, and the reverse: one line naming the shape."""
    kw = dict(in_channels=2, patch_size=1, hidden_size=16, depth=1)
    if cfg_cls is DiTConfig:
        kw["num_heads"] = 2
    video = cls(cfg_cls(input_size=(T, H, W), **kw))
    image = cls(cfg_cls(input_size=(H, W), **kw))
    with pytest.raises(ValueError) as err:
        video(torch.randn(1, 2, H, W), torch.rand(1))
    msg = str(err.value)
    assert "\n" not in msg and "video" in msg and "[B, C, T, H, W]" in msg and "4-D" in msg
    with pytest.raises(ValueError) as err:
        image(torch.randn(1, 2, T, H, W), torch.rand(1))
    msg = str(err.value)
    assert "\n" not in msg and "image" in msg and "[B, C, H, W]" in msg and "5-D" in msg
