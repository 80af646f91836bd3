"""Exponential moving average of model weights, with the usual warm-up of the decay.

decay_t = min(decay, (1 + t) / (10 + t)) at optimizer step t, so early averages forget the
random init fast (a fixed 0.9999 from step 0 is still mostly the init after 10k steps).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """The decay used for the update after optimizer step ``step`` (0-based)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """A frozen fp32 copy of a model, updated as ema <- d·ema + (1 - d)·param.

    Buffers (e.g. stored scan orders) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Average ``model`` (the raw module, not a DDP/compiled wrapper) in; returns decay_t."""
        d = ema_decay(step, self.decay, self.warmup)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA and model have different parameter lists")
        # lerp(e, p, w) = e + w (p - e) = d e + (1 - d) p with w = 1 - d
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        return d

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)
