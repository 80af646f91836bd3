"""Helpers shared by the backbone tests (as fixtures, so test files need not import each other)."""

from __future__ import annotations

import pytest
import torch


def _randomize_zero_init(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give the zero-initialised adaLN and final layers random values (outputs non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _fit(model: torch.nn.Module, steps: int = 20, lr: float = 3e-3, num_classes: int = 0):
    """Regress a fixed random target for ``steps`` AdamW steps; return the losses."""
    torch.manual_seed(0)
    cfg = model.config
    shape = (4, cfg.in_channels, *cfg.input_size)
    x, t, target = torch.randn(shape), torch.rand(4), torch.randn(shape)
    y = torch.arange(4) % num_classes if num_classes else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = (model(x, t, y=y) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def randomize_zero_init():
    return _randomize_zero_init


@pytest.fixture
def fit():
    return _fit
