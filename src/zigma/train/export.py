"""What leaves the trainer besides checkpoints: periodic sample grids from the EMA weights and
the final ``model/`` folder (``save_pretrained`` of the EMA model plus ``transport.json``).

``zigma sample`` loads ``model/`` as it loads any pretrained folder.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from zigma.artifacts import TRANSPORT_NAME, write_text_atomic
from zigma.config import to_dict
from zigma.data import derive_seed
from zigma.models import ZigMaConfig, save_pretrained
from zigma.train.config import TrainConfig
from zigma.train.optim import TrainingDiverged
from zigma.transport import as_velocity, class_guided, sample

_SEED_SAMPLES = 3  # the sample noise is the same at every step, so grids are comparable


@torch.no_grad()
def sample_grid(
    model: nn.Module,
    cfg: TrainConfig,
    mcfg: ZigMaConfig,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> torch.Tensor:
    """``cfg.num_samples`` samples [N, C, H, W] in [-1, 1] with a fixed noise seed.

    Class-conditional models get labels 0, 1, 2, ... cycling through the classes, guided with
    ``cfg.cfg_scale`` (1 = no guidance).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, _SEED_SAMPLES))
    noise = torch.randn((cfg.num_samples, mcfg.in_channels, *mcfg.input_size), generator=g)
    noise = noise.to(device)
    velocity = as_velocity(model, cfg.transport.prediction, cfg.transport.path)
    y = None
    if mcfg.num_classes > 0:
        y = (torch.arange(cfg.num_samples) % mcfg.num_classes).to(device)
    fn, kwargs = class_guided(velocity, y, model.null_class, cfg.cfg_scale)
    t_start, t_end = cfg.transport.sample_interval()
    with autocast():
        x = sample(
            fn,
            noise,
            sampler=cfg.sample_sampler,
            steps=cfg.sample_steps,
            path=cfg.transport.path,
            model_kwargs=kwargs,
            t_start=t_start,
            t_end=t_end,
        )
    model.train(was_training)
    return x.float().clamp(-1, 1).cpu()


def export_model(ema_model: nn.Module, model: nn.Module, cfg: TrainConfig, directory: Path) -> Path:
    """``save_pretrained`` of the EMA weights (in ``cfg.export_dtype``) + transport.json.

    fp16 export keeps parameters tagged ``_keep_fp32`` (SSM A_log, D, dt bias) in fp32;
    ``from_pretrained`` loads either into an fp32 model.

    Raises:
        TrainingDiverged: a non-finite EMA weight; nothing is written.
    """
    bad = [
        n
        for n, v in ema_model.state_dict().items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:  # the step guard keeps this from happening; never hand sampling a broken model
        raise TrainingDiverged(
            f"the EMA weights are not finite ({len(bad)} tensors, e.g. {bad[0]}); "
            f"nothing was exported to {directory}"
        )
    keep32 = {n for n, p in model.named_parameters() if getattr(p, "_keep_fp32", False)}
    to_save = ema_model
    if cfg.export_dtype == "fp16":
        to_save = copy.deepcopy(ema_model)
        for name, p in to_save.named_parameters():
            if name not in keep32:
                p.data = p.data.half()
    save_pretrained(to_save, directory)
    text = json.dumps(to_dict(cfg.transport), indent=2, sort_keys=True) + "\n"
    write_text_atomic(directory / TRANSPORT_NAME, text)
    return directory
