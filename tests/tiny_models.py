"""Helpers for the tiny random-weight models that tests build and save."""

from __future__ import annotations

import torch
from torch import nn


def wake_output_layers(model: nn.Module, scale: float = 0.05) -> nn.Module:
    """Give the zero-initialised adaLN and final layers random weights, so a fresh model's
    output (and its samples) depends on its weights instead of being identically zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.copy_(torch.randn_like(p) * scale)
    return model
