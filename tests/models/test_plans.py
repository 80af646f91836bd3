"""Scan plans on a video: a toy ZigMa on [B, C, T, H, W] whose layers fold frames (spatial),
locations (temporal) or nothing (volume). Each fold is checked for its defining property by
perturbing one token, and each layer against a reference that loops over the folded sequences."""

from __future__ import annotations

import pytest
import torch

from zigma.models import GridShape, LayerPlan, ZigMa, ZigMaConfig, create_model
from zigma.models.plans import fold_tokens, unfold_tokens
from zigma.scan import inverse_orders, scan_orders

T, H, W = 3, 4, 4
SHAPE = GridShape(T, H, W)  # patch 1: tokens = pixels


def video_model(pattern="stv", **kw) -> ZigMa:
    cfg = dict(input_size=(T, H, W), in_channels=2, patch_size=1, hidden_size=16, depth=6)
    cfg.update(scan_pattern=pattern, **kw)
    model = create_model("ZigMa-S/1", **cfg)
    with torch.no_grad():  # non-trivial outputs: the zero-initialised layers get values
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def token(frame: int, row: int, col: int) -> int:
    return (frame * H + row) * W + col  # frame-major, row-major within a frame


def test_layers_follow_the_pattern():
    model = video_model("sst")
    folds = [plan.fold for plan in model.plans(SHAPE, torch.device("cpu"))]
    assert folds == ["frames", "frames", "locations"] * 2
    plans = model.plans(SHAPE, torch.device("cpu"))
    zigzag = scan_orders("zigzag", H, W)
    # spatial layers take the zigzag orders in turn; temporal ones alternate direction
    assert torch.equal(plans[0].order, zigzag[0]) and torch.equal(plans[1].order, zigzag[1])
    assert torch.equal(plans[3].order, zigzag[2]) and torch.equal(plans[4].order, zigzag[3])
    assert plans[2].order is None and torch.equal(plans[5].order, torch.arange(T - 1, -1, -1))
    volume = video_model("v").plans(SHAPE, torch.device("cpu"))
    assert torch.equal(volume[1].order, scan_orders("zigzag3d", H, W, T)[1])


def test_fold_and_unfold_are_inverse_and_group_the_right_tokens():
    x = torch.arange(T * H * W).float()[None, :, None]  # token ids as values
    frames = fold_tokens(x, "frames", SHAPE)  # [T, H*W, 1]
    assert frames.shape == (T, H * W, 1)
    assert frames[1, :, 0].tolist() == [token(1, r, c) for r in range(H) for c in range(W)]
    locations = fold_tokens(x, "locations", SHAPE)  # [H*W, T, 1]
    assert locations.shape == (H * W, T, 1)
    assert locations[token(0, 2, 3), :, 0].tolist() == [token(f, 2, 3) for f in range(T)]
    for fold in ("none", "frames", "locations"):
        assert torch.equal(unfold_tokens(fold_tokens(x, fold, SHAPE), fold, SHAPE), x)


def _changed_tokens(block, plan, x, c, where: int) -> set[int]:
    with torch.no_grad():
        base = block(x, c, plan, SHAPE)
        bumped = x.clone()
        # not a constant: the layer norm would remove a shift of every channel alike
        bumped[:, where] += torch.linspace(-1.0, 1.0, x.shape[-1])
        diff = (block(bumped, c, plan, SHAPE) - base).abs().amax(dim=(0, 2))
    return {i for i in range(diff.numel()) if diff[i] > 0}


@pytest.mark.parametrize("layer", range(6))
def test_each_fold_keeps_its_tokens_apart(layer):
    """Perturb one token: a spatial layer changes only its frame, a temporal layer only its
    spatial location, a volume layer may reach other frames."""
    model = video_model("stvstv")
    block, plan = model.blocks[layer], model.plans(SHAPE, torch.device("cpu"))[layer]
    torch.manual_seed(layer)
    x, c = torch.randn(2, T * H * W, 16), torch.randn(2, 16)
    where = token(1, 1, 2)
    changed = _changed_tokens(block, plan, x, c, where)
    assert where in changed
    frame_of = {token(f, r, q): f for f in range(T) for r in range(H) for q in range(W)}
    location_of = {token(f, r, q): (r, q) for f in range(T) for r in range(H) for q in range(W)}
    if plan.fold == "frames":
        assert {frame_of[i] for i in changed} == {1}
        assert len(changed) > 1  # it does mix within the frame
    elif plan.fold == "locations":
        assert {location_of[i] for i in changed} == {(1, 2)}
        assert len(changed) > 1
    else:  # a 3-D scan carries its state across frames
        assert len({frame_of[i] for i in changed}) > 1


@pytest.mark.parametrize("layer", range(6))
def test_each_layer_equals_a_loop_over_its_sequences(layer):
    """Reference: cut the tokens into the layer's sequences by hand, gather each into the
    layer's order, run the mixer on it, put the outputs back where the tokens came from."""
    model = video_model("stvstv")
    block, plan = model.blocks[layer], model.plans(SHAPE, torch.device("cpu"))[layer]
    torch.manual_seed(10 + layer)
    x, c = torch.randn(2, T * H * W, 16), torch.randn(2, 16)
    shift, scale, gate = block.adaLN(c)
    h = block.norm(x) * (1 + scale[:, None]) + shift[:, None]
    if plan.fold == "frames":
        groups = [[token(f, r, q) for r in range(H) for q in range(W)] for f in range(T)]
    elif plan.fold == "locations":
        groups = [[token(f, r, q) for f in range(T)] for r in range(H) for q in range(W)]
    else:
        groups = [list(range(T * H * W))]
    mixed = torch.zeros_like(h)
    for ids in groups:
        ids = torch.tensor(ids)
        order = torch.arange(len(ids)) if plan.order is None else plan.order
        seq = h[:, ids[order]]  # this sequence in scan order
        out = block.mixer(seq)  # raster = scan order here
        mixed[:, ids[order]] = out
    ref = x + gate[:, None] * mixed
    with torch.no_grad():
        got = block(x, c, plan, SHAPE)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-6)


def test_video_model_trains_and_samples():
    from zigma.transport import TransportConfig, sample, training_loss

    torch.manual_seed(0)
    model = video_model("stv", num_classes=3)
    x = torch.randn(4, 2, T, H, W)
    y = torch.tensor([0, 1, 2, 0])
    tcfg = TransportConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = training_loss(model, x, tcfg, model_kwargs={"y": y}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = sample(model, torch.randn(2, 2, T, H, W), "euler", 4, tcfg.path,
                     model_kwargs={"y": torch.tensor([1, 2])})  # fmt: skip
    assert out.shape == (2, 2, T, H, W) and torch.isfinite(out).all()


def test_temporal_patch_and_separable_positions():
    model = create_model(
        "ZigMa-S/2", input_size=(4, 8, 8), temporal_patch=2, hidden_size=16, depth=3,
        in_channels=3,
    )  # fmt: skip
    assert model.grid.shape == GridShape(2, 4, 4)
    assert model.grid.pos_embed.shape == (1, 16, 16)
    assert model.grid.temporal_pos_embed.shape == (1, 2, 16)
    out = model(torch.randn(2, 3, 4, 8, 8), torch.rand(2))
    assert out.shape == (2, 3, 4, 8, 8)
    # the learnable tables start as the fixed separable sin-cos table
    table = model.grid._learnable_table(model.grid.shape)[0]
    torch.testing.assert_close(table, model.grid.fixed_table(model.grid.shape))


def test_unpatchify_inverts_the_token_layout():
    """A grid whose projection copies pixels into tokens: unpatchify(patchify(x)) == x."""
    from zigma.models.grid import TokenGrid

    grid = TokenGrid((4, 6, 6), 2, 2 * 2 * 3 * 3, 3, temporal_patch=2, pos_embed="none")
    with torch.no_grad():
        grid.proj.weight.zero_()
        grid.proj.bias.zero_()
        # output channel (r, p, q, c) of a token reads input pixel (c, r, p, q) of its patch
        for r in range(2):
            for p in range(3):
                for q in range(3):
                    for c in range(2):
                        grid.proj.weight[((r * 3 + p) * 3 + q) * 2 + c, c, r, p, q] = 1.0
    x = torch.randn(2, 2, 4, 6, 6)
    shape = grid.check(x)
    torch.testing.assert_close(grid.unpatchify(grid(x, shape), shape), x)


def test_bad_patterns_and_video_inputs():
    with pytest.raises(ValueError, match="letters s"):
        ZigMaConfig(input_size=(2, 4, 4), scan_pattern="sxt")
    with pytest.raises(ValueError, match="applies to video models"):
        ZigMaConfig(input_size=(4, 4), scan_pattern="s")
    with pytest.raises(ValueError, match="no 3-D orders"):
        ZigMaConfig(input_size=(2, 4, 4), scan="hilbert", scan_pattern="sv")
    with pytest.raises(ValueError, match="temporal_patch"):
        ZigMaConfig(input_size=(3, 4, 4), temporal_patch=2)
    model = video_model()
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model(torch.randn(1, 2, 4, 4), torch.rand(1))


def test_plan_tensors_stay_valid_permutations():
    model = video_model("sv", scan="random")
    for plan in model.plans(SHAPE, torch.device("cpu")):
        if plan.order is not None:
            assert torch.equal(plan.inverse, inverse_orders(plan.order))
    assert model.volume_orders.shape == (8, T * H * W)


def test_layer_plan_is_frozen():
    plan = LayerPlan("none")
    with pytest.raises(AttributeError):
        plan.fold = "frames"  # type: ignore[misc]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_video_model_runs_under_cuda_graphs():
    """The mixed plan (folds, gathers, temporal reversals) replays as one graph: the same
    outputs as the eager forward, for new inputs copied into the captured buffers."""
    from zigma.models import GraphedForward

    model = video_model("stv", num_classes=3).cuda().eval()
    x, t = torch.randn(2, 2, T, H, W, device="cuda"), torch.rand(2, device="cuda")
    cond = {"y": torch.tensor([0, 2], device="cuda")}
    graphed = GraphedForward(model, x, t, cond)
    for _ in range(2):
        x, t = torch.randn_like(x), torch.rand_like(t)
        with torch.no_grad():
            eager = model(x, t, **cond)
        torch.testing.assert_close(graphed(x, t, **cond), eager, rtol=1e-5, atol=1e-6)
