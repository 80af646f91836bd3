"""The trainer's step as the training benchmarks time it, and the official DiT in our denoiser
contract: shared by ``latent_1024.py`` and ``train_throughput.py``.

Not a script: those scripts import it (a script's folder is on its import path).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from peers import load
from zigma.bench.runner import time_ms
from zigma.bench.suites import TINY_DEPTH, TINY_WIDTH, tiny_overrides
from zigma.models import create_model
from zigma.train.config import TrainConfig, build_config
from zigma.train.distributed import DistEnv
from zigma.train.ema import EMA
from zigma.train.optim import StepGuard, build_optimizer, guarded_step
from zigma.transport import sample_time, training_loss

# facebookresearch/DiT's sizes (its models.py: DiT_B_2, DiT_XL_2, ...) by our preset's name
OFFICIAL_SIZES = {
    "DiT-B/2": dict(depth=12, hidden_size=768, num_heads=12),
    "DiT-XL/2": dict(depth=28, hidden_size=1152, num_heads=16),
}


class OfficialDiT(nn.Module):
    """facebookresearch/DiT's DiT in our denoiser contract: ``model(x, t, y=None)`` with t in
    [0, 1]; without labels every sample gets class 0 (one class: unconditional)."""

    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        if y is None:
            y = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return self.dit(x, t * 1000, y)  # DiT embeds diffusion step indices 0..999


def official_dit(folder: Path, preset: str, side: int, num_classes: int, tiny: bool) -> nn.Module:
    """The official DiT of our ``preset``'s size (TINY_WIDTH / TINY_DEPTH with ``tiny``) on a
    side x side x 4 latent, patch 2, ``learn_sigma=False`` as our models predict no variance;
    class dropout 0.1 (its train.py) when class-conditional, none with one class."""
    dit = load("official_dit", folder / "models.py")
    kw = OFFICIAL_SIZES[preset]
    if tiny:
        kw = dict(depth=TINY_DEPTH, hidden_size=TINY_WIDTH, num_heads=4)
    drop = 0.1 if num_classes > 1 else 0.0
    net = dit.DiT(input_size=side, patch_size=2, in_channels=4, num_classes=num_classes,
                  class_dropout_prob=drop, learn_sigma=False, **kw)  # fmt: skip
    return OfficialDiT(net)


def train_config(preset: str, train_preset: str, side: int, batch: int, tiny: bool,
                 **model: object) -> TrainConfig:  # fmt: skip
    """The config ``zigma train --preset train_preset`` builds for model ``preset`` on
    side x side latents (shrunk with ``tiny``); ``model`` overrides the model's fields."""
    model_over = {"preset": preset, "input_size": [side, side], **model}
    if tiny:
        model_over |= tiny_overrides(preset, TINY_WIDTH, TINY_DEPTH)
    base = {"model": model_over, "data": {"resolution": side}}
    return build_config(train_preset, base=base, batch_size=batch)


def our_model(cfg: TrainConfig) -> nn.Module:
    return create_model(cfg.model.preset, **dataclasses.asdict(cfg.model_config()))


def train_step(net: nn.Module, cfg: TrainConfig, x: torch.Tensor, model_kwargs: dict,
               warmup: int, repeats: int) -> dict:  # fmt: skip
    """Median ms and images/s of the trainer's step (``zigma.train``) on the batch ``x``: the
    transport loss under bf16 autocast over fp32 weights (fp32 on CPU), the guarded fused-AdamW
    step with gradient clipping, the EMA update. Noise and times are fixed, so the data
    loader is not timed. The optimizer and EMA are freed on return."""
    device, batch = x.device, len(x)
    env = DistEnv(0, 0, 1, device)
    ema = EMA(net, cfg.ema.decay, cfg.ema.warmup)
    opt = build_optimizer(net, cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    guard = StepGuard(opt)
    noise = torch.randn_like(x)
    t = sample_time(batch, cfg.transport, torch.Generator().manual_seed(0)).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    step_no = [0]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = training_loss(net, x, cfg.transport, noise=noise, t=t, model_kwargs=model_kwargs)
        res = guarded_step(loss.mean(), net, opt, scaler, cfg.optim.grad_clip, env, guard)
        if res.skipped is None:
            ema.update(net, step_no[0])
        step_no[0] += 1

    net.train()
    ms = time_ms(step, str(device), warmup, repeats)
    return {"ms": ms, "img_s": batch * 1e3 / ms}


def peak_memory(device: torch.device) -> dict:
    """Peak allocated and reserved CUDA memory (GiB) since the last reset; nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {
        "peak_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }
