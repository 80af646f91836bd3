"""The optimizer step: weight-decay groups, the LR warm-up, and clipping BEFORE the step."""

from __future__ import annotations

import math

import pytest
import torch

from zigma.models import create_model
from zigma.train import get_lr, param_groups
from zigma.train.distributed import DistEnv
from zigma.train.optim import StepGuard, guarded_step

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _model():
    torch.manual_seed(0)
    return create_model("ZigMa-S/2", hidden_size=16, depth=1, input_size=8, in_channels=1)


def test_lr_warmup():
    assert get_lr(0, 1e-3, 10) == pytest.approx(1e-4)
    assert get_lr(9, 1e-3, 10) == pytest.approx(1e-3)
    assert get_lr(500, 1e-3, 10) == 1e-3
    assert get_lr(0, 1e-3, 0) == 1e-3


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_lr_decay_follows_its_closed_form(decay):
    lr, warm, total, floor = 1e-3, 10, 110, 0.1
    got = [get_lr(s, lr, warm, total, decay, floor) for s in range(total + 5)]
    assert got[:warm] == pytest.approx([lr * (s + 1) / warm for s in range(warm)])
    for s in range(warm, total + 5):
        p = min((s - warm) / (total - warm), 1.0)
        shape = (1 + math.cos(math.pi * p)) / 2 if decay == "cosine" else 1 - p
        assert got[s] == pytest.approx(lr * (floor + (1 - floor) * shape))
    assert got[warm] == pytest.approx(lr) and got[total] == pytest.approx(lr * floor)
    assert got[total + 4] == pytest.approx(lr * floor)  # past the end it stays at the floor
    assert get_lr(50, lr, warm, total, "constant", floor) == lr


def test_decay_only_on_matrices_without_the_tag():
    model = _model()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    tagged = [names[id(p)] for p in no_decay["params"] if getattr(p, "_no_weight_decay", False)]
    assert any("A_log" in n for n in tagged)  # a 2-D tensor, kept out of decay by its tag
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _loss(model, scale):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # an untrained ZigMa outputs 0: give the head a gradient path
        model.final_layer.linear.bias.fill_(0.1)
    return scale * (model(x, torch.full((2,), 0.5)) - x).pow(2).mean()


def test_clipping_happens_before_the_step():
    clip, lr = 2.0, 1e-2
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # the manual computation: the gradient, its global norm and the clipped gradient
    ref = _model()
    _loss(ref, 1e4).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert norm > 100 * clip  # a huge gradient
    clipped = [g * (clip / (norm + 1e-6)) for g in grads]

    loss = _loss(model, 1e4)
    before = [p.detach().clone() for p in model.parameters()]
    res = guarded_step(loss, model, opt, scaler, clip, ENV, StepGuard(opt))
    assert res.skipped is None and math.isfinite(res.loss)
    assert res.grad_norm == pytest.approx(norm, rel=1e-5)
    for p, p0, g in zip(model.parameters(), before, clipped, strict=True):
        st = opt.state[p]
        # the optimizer saw the clipped gradient: m = (1 - b1) g, v = (1 - b2) g^2
        torch.testing.assert_close(st["exp_avg"], 0.1 * g, rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(st["exp_avg_sq"], 0.001 * g * g, rtol=1e-4, atol=1e-16)
        # first AdamW step: p -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat = g, v_hat = g^2
        update = lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p0 - p.detach(), update, rtol=1e-3, atol=1e-7)
    # clipping after the step (the official code) would have left the raw gradient in m
    big = max(
        (opt.state[p]["exp_avg"] - 0.1 * g).abs().max().item()
        for p, g in zip(model.parameters(), grads, strict=True)
    )
    assert big > 1.0


def test_no_clip_leaves_gradients_alone():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ref = _model()
    _loss(ref, 1e4).backward()
    guarded_step(_loss(model, 1e4), model, opt, scaler, None, ENV, StepGuard(opt))
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * r.grad, rtol=1e-4, atol=1e-12)


def test_nonfinite_loss_skips_the_step():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = _loss(model, 1.0) * math.nan
    before = [p.detach().clone() for p in model.parameters()]
    res = guarded_step(loss, model, opt, scaler, 2.0, ENV, StepGuard(opt))
    assert math.isnan(res.loss) and math.isnan(res.grad_norm) and res.skipped == "non-finite loss"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not opt.state and all(p.grad is None for p in model.parameters())


def _state(model, opt):
    """Weights and every optimizer tensor, copied."""
    moments = [t.clone() for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in model.parameters()] + moments


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_an_update_that_would_overflow_is_skipped_before_it_changes_anything():
    # AdamW with b2 = 0 and eps = 1e-30: after a step with a huge gradient m is huge, and a
    # zero gradient then leaves v = 0, so the update m / (sqrt(v) + eps) overflows float32
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.0), eps=1e-30)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _loss(model, 1e15).backward()
    opt.step()  # taken outside the guard, which would already have refused it
    opt.zero_grad()
    guard = StepGuard(opt)
    assert guard.avg_max > 1e10 and math.isfinite(guard.weights_max)
    loss = _loss(model, 0.0)
    before = _state(model, opt)
    res = guarded_step(loss, model, opt, scaler, None, ENV, guard)
    assert res.skipped == "an update that could overflow the weights or optimizer state"
    assert math.isnan(res.loss) and _same(_state(model, opt), before)
    assert all(p.grad is None for p in model.parameters())
    # the same step taken without the guard: the weights really do overflow
    _loss(model, 0.0).backward()
    opt.step()
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_an_optimizer_that_breaks_its_arithmetic_stops_the_run():
    from zigma.train import TrainingDiverged

    class Broken(torch.optim.AdamW):
        def step(self, closure=None):
            super().step(closure)
            next(iter(self.param_groups[0]["params"])).data.fill_(math.inf)

    model = _model()
    opt = Broken(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(TrainingDiverged, match="left non-finite weights"):
        guarded_step(_loss(model, 1.0), model, opt, scaler, 2.0, ENV, StepGuard(opt))


def test_the_guard_measures_the_weights_and_bounds_the_moments():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    guard = StepGuard(opt)
    for scale in (1.0, 30.0, 0.1):
        res = guarded_step(_loss(model, scale), model, opt, scaler, 2.0, ENV, guard)
        assert res.skipped is None
        weights = max(p.abs().max().item() for p in model.parameters())
        avgs = max(st["exp_avg"].abs().max().item() for st in opt.state.values())
        sqs = max(st["exp_avg_sq"].max().item() for st in opt.state.values())
        assert guard.weights_max == weights
        assert avgs <= guard.avg_max <= 2.0 and sqs <= guard.sq_max <= 4.0
    fresh = StepGuard(opt)  # as after a resume: measured, not carried
    assert (fresh.weights_max, fresh.avg_max, fresh.sq_max) == (weights, avgs, sqs)
