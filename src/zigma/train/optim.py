"""The optimizer side of a step: AdamW parameter groups, the warm-up LR schedule, and the
guarded update (all ranks agree on skipping non-finite steps; clip before the step).

The official ZigMa trainer calls ``clip_grad_norm_`` after ``opt.step()``, where it changes
nothing; here the global norm is clipped on the unscaled gradients before the update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from zigma.train import distributed as D
from zigma.train.config import OptimConfig


def get_lr(
    step: int,
    lr: float,
    warmup_steps: int,
    total_steps: int | None = None,
    decay: str = "constant",
    min_lr_ratio: float = 0.0,
) -> float:
    """LR of 0-based step ``step``: linear warm-up from lr/warmup_steps to lr, then ``decay``.

    "constant" keeps lr; "cosine" and "linear" go from lr after the warm-up down to
    ``min_lr_ratio * lr`` at ``total_steps`` (a short run ends much cleaner when the LR
    anneals: the last weights average out the step noise of a constant LR).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or total_steps is None:
        return lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * shape)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only >= 2-D weights not tagged ``_no_weight_decay`` (nanoGPT's rule): biases,
    embeddings' 1-D parts and the SSM's A_log, D and dt bias are left alone, since pulling them
    toward 0 changes the dynamics rather than limiting capacity."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        tagged = getattr(p, "_no_weight_decay", False)
        (decay if p.ndim >= 2 and not tagged else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW only on CUDA, where it exists and is fastest; on CPU the default for-each path
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def guarded_step(
    loss: torch.Tensor,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip: float | None,
    env: D.DistEnv,
) -> tuple[float, float]:
    """Backward, clip and step, unless some rank's loss or the gradient is non-finite.

    ``model`` is the raw module (DDP has already averaged its gradients in backward), so the
    clipped norm is the global one and identical on every rank.

    Returns:
        (loss averaged over the ranks, gradient norm before clipping); the loss is NaN when
        the step was skipped. Under fp16 a step the GradScaler skips for overflowing
        gradients is normal loss scaling, not a skipped step.
    """
    finite = bool(torch.isfinite(loss))
    stats = torch.tensor(
        [loss.item() if finite else 0.0, 0.0 if finite else 1.0],
        dtype=torch.float64,
        device=loss.device,
    )
    # one all-reduce decides for everyone: a rank that skipped backward alone would hang DDP
    D.all_reduce_sum(stats, env)
    if stats[1].item() > 0:
        opt.zero_grad(set_to_none=True)
        return math.nan, math.nan
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf))
    stepped = True
    if scaler.is_enabled():
        scaler.step(opt)  # skips by itself on inf gradients, then lowers the scale
        scaler.update()
    elif math.isfinite(gnorm):
        opt.step()
    else:
        stepped = False
    opt.zero_grad(set_to_none=True)
    return (stats[0].item() / env.world_size if stepped else math.nan), gnorm
