"""EMA: the decay warm-up formula and the update against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zigma.models import create_model
from zigma.train import EMA, ema_decay


def test_decay_warmup():
    assert ema_decay(0, 0.9999) == pytest.approx(1 / 10)
    assert ema_decay(90, 0.9999) == pytest.approx(91 / 100)
    assert ema_decay(10**7, 0.9999) == 0.9999
    assert ema_decay(0, 0.9999, warmup=False) == 0.9999


def test_update_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.register_buffer("counter", torch.zeros(()))
    ema = EMA(model, decay=0.99)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.double().clone() for k, v in start.items()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.counter += 1
        d = ema.update(model, step)
        assert d == min(0.99, (1 + step) / (10 + step))
        for name, p in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach().double()
    got = ema.model.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(got[name].double(), expected[name], rtol=1e-6, atol=1e-6)
    assert got["counter"].item() == 5  # buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_of_constant_weights_is_exact():
    model = create_model("ZigMa-S/2", hidden_size=16, depth=1, input_size=8, in_channels=1)
    ema = EMA(model, decay=0.9999)
    for step in range(3):
        ema.update(model, step)
    for a, b in zip(ema.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
