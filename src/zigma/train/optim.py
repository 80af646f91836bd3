"""The optimizer side of a step: AdamW parameter groups, the warm-up LR schedule, and the
guarded update (all ranks agree on skipping non-finite steps). The global gradient norm is
clipped on the unscaled gradients before the update, where clipping has an effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zigma.train import distributed
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


def param_groups(
    model: nn.Module, weight_decay: float, order: list[str] | None = None
) -> list[dict[str, Any]]:
    """Decay only >= 2-D weights not tagged ``_no_weight_decay`` (nanoGPT's rule): biases,
    embeddings' 1-D parts and the SSM's A_log, D and dt bias are left alone, since pulling them
    toward 0 changes the dynamics rather than limiting capacity. ``order``: parameter names
    in the order to list them (default: the model's)."""
    named = dict(model.named_parameters())
    decay, no_decay = [], []
    for p in (named[n] for n in order) if order is not None else model.parameters():
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


class TrainingDiverged(RuntimeError):
    """Training cannot go on: ``max_nonfinite`` skipped steps in a row, or weights that are
    not finite. Nothing from the bad steps is saved; the newest checkpoint is intact."""


# Updates are proven to stay below half the float32 maximum, leaving room for rounding.
_LIMIT = torch.finfo(torch.float32).max / 2


def _max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| over ``tensors`` (NaN if any is NaN), without a host sync."""
    if tensors[0].is_cuda:  # one multi-tensor kernel, no temporaries
        return torch.stack(torch._foreach_norm(tensors, math.inf)).max()
    return torch.stack([t.abs().amax() for t in tensors]).max()  # CPU: 5x faster than that


class StepGuard:
    """Proves an AdamW update finite before it is applied, and checks the weights after.

    Skipping a bad step needs the weights and optimizer state as they were before it; keeping
    a copy every step costs 3x the weights in memory (as much again as AdamW itself) and a
    copy's time. Instead the update is bounded from a few maxima: with G >= max |g| (the
    clipped gradient norm), v' <= max(v, G^2) and |m'| <= max(|m|, G), and since
    m' / (1 - b1^t) averages gradients and the denominator is at least eps,
    |w'| <= |w| |1 - lr wd| + lr / (1 - b1) * max(|m|, G) / eps. A step whose bound leaves
    the float32 range is skipped before anything changes. The bound is loose (eps instead of
    sqrt(v)), but at the config's ranges it only refuses steps of absurd size.

    Cost per step: one max |w| over the weights (the bounds on m and v are carried on the
    host), a small fraction of AdamW's own step. The check after the step can only fail if
    the optimizer breaks its own arithmetic; the run stops then, before the EMA or a
    checkpoint sees the weights.
    """

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            if not {"lr", "weight_decay", "betas", "eps"} <= group.keys():
                raise ValueError("StepGuard bounds AdamW updates; this optimizer is not AdamW")
        self.opt = opt
        self.weights_max = self.avg_max = self.sq_max = 0.0
        self.measure()

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach() for p in self._params()]

    def measure(self) -> bool:
        """Take the maxima from the weights and moments themselves (at the start, or after a
        resume); False if any is not finite."""
        states = [self.opt.state.get(p, {}) for p in self._params()]
        maxima = [_max_abs(self._weights())]
        for key in ("exp_avg", "exp_avg_sq"):
            moments = [s[key] for s in states if key in s]
            maxima.append(_max_abs(moments) if moments else torch.zeros_like(maxima[0]))
        self.weights_max, self.avg_max, self.sq_max = torch.stack(maxima).tolist()  # one sync
        return all(map(math.isfinite, (self.weights_max, self.avg_max, self.sq_max)))

    def update_is_safe(self, grad_bound: float) -> bool:
        """Whether the next ``opt.step()`` provably leaves weights and moments finite, given
        that no gradient entry exceeds ``grad_bound`` in absolute value."""
        if not max(grad_bound**2, self.sq_max) < _LIMIT:
            return False
        for g in self.opt.param_groups:
            lr, wd, eps, beta1 = float(g["lr"]), g["weight_decay"], g["eps"], g["betas"][0]
            step = lr / (1 - beta1) * max(self.avg_max, grad_bound) / eps
            if not self.weights_max * abs(1 - lr * wd) + step < _LIMIT:
                return False
        return True

    def stepped(self, grad_bound: float) -> bool:
        """After a step with gradients bounded by ``grad_bound``: measure the weights, carry
        the moments' bounds; False if a weight is not finite."""
        self.avg_max = max(self.avg_max, grad_bound)
        self.sq_max = max(self.sq_max, grad_bound**2)
        self.weights_max = _max_abs(self._weights()).item()
        return math.isfinite(self.weights_max)


@dataclass
class StepResult:
    loss: float  # averaged over the ranks; NaN when the step was skipped
    grad_norm: float  # before clipping; NaN when the loss was already non-finite
    skipped: str | None  # why the step was skipped, for the log; None when it was taken
    stop: bool  # some rank was asked to stop (SIGTERM / SIGUSR1) before this step


def guarded_step(
    loss: torch.Tensor,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip: float | None,
    env: distributed.DistEnv,
    guard: StepGuard,
    stop: bool = False,
) -> StepResult:
    """Backward, clip and step, unless some rank's loss, the gradient or the update would
    be non-finite; ``stop`` (this rank's stop request) rides on the same all-reduce.

    ``model`` is the raw module (DDP has already averaged its gradients in backward), so the
    clipped norm and the guard's decision are the same on every rank.

    Under fp16 a step the GradScaler skips for overflowing gradients is normal loss scaling,
    not a skipped step.

    Raises:
        TrainingDiverged: the step left non-finite weights although its update was bounded
            (only an optimizer that breaks AdamW's arithmetic can do that).
    """
    finite = bool(torch.isfinite(loss))
    stats = torch.tensor(
        [loss.item() if finite else 0.0, 0.0 if finite else 1.0, float(stop)],
        dtype=torch.float64,
        device=loss.device,
    )
    # one all-reduce decides for everyone: a rank that skipped backward alone would hang DDP
    distributed.all_reduce_sum(stats, env)
    mean_loss, bad_ranks, stop_ranks = stats.tolist()
    stop = stop_ranks > 0
    if bad_ranks > 0:
        opt.zero_grad(set_to_none=True)
        return StepResult(math.nan, math.nan, "non-finite loss", stop)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf))
    # clipping scales the gradient to norm <= clip, and the norm bounds every entry
    bound = min(gnorm, clip) if clip else gnorm
    skipped = None
    if not math.isfinite(gnorm) and not scaler.is_enabled():
        skipped = "non-finite gradient"
    elif math.isfinite(gnorm) and not guard.update_is_safe(bound):
        skipped = "an update that could overflow the weights or optimizer state"
    if skipped is None:
        if scaler.is_enabled():
            scaler.step(opt)  # skips by itself on inf gradients, then lowers the scale
        else:
            opt.step()
        if math.isfinite(gnorm) and not guard.stepped(bound):
            opt.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                "the optimizer step left non-finite weights although its update was bounded; "
                "nothing from this step was saved"
            )
    if scaler.is_enabled():
        scaler.update()
    opt.zero_grad(set_to_none=True)
    if skipped is not None:
        return StepResult(math.nan, gnorm, skipped, stop)
    return StepResult(mean_loss / env.world_size, gnorm, None, stop)
