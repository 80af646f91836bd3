"""What leaves the trainer besides checkpoints: periodic sample grids from the EMA weights and
the final ``model/`` folder (``save_pretrained`` of the EMA model plus ``transport.json``).

``zigma sample`` loads ``model/`` as it loads any pretrained folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from zigma.artifacts import TRANSPORT_NAME, write_text_atomic
from zigma.config import to_dict
from zigma.data import derive_seed
from zigma.generate import generate, grid_conditions
from zigma.models import save_pretrained
from zigma.train.config import TrainConfig
from zigma.train.optim import TrainingDiverged

_SEED_SAMPLES = 3  # the sample noise is the same at every step, so grids are comparable


def preview_grid(
    model: nn.Module, cfg: TrainConfig, device: torch.device, autocast: torch.dtype | None
) -> torch.Tensor:
    """``cfg.preview.num_samples`` samples [N, C, H, W] in [-1, 1] from a fixed noise seed,
    conditions spread over the grid (classes 0, 1, 2, ... in turn), through ``generate``."""
    was_training = model.training
    p = cfg.preview
    try:
        return generate(
            model,
            cfg.transport,
            p.num_samples,
            cond=grid_conditions(model, p.num_samples),
            seed=derive_seed(cfg.seed, _SEED_SAMPLES),
            sampler=p.sampler,
            steps=p.steps,
            guidance_scale=p.guidance_scale,
            batch_size=p.num_samples,
            device=device,
            autocast=autocast,
        )
    finally:
        model.train(was_training)


def export_model(ema_model: nn.Module, model: nn.Module, cfg: TrainConfig, directory: Path) -> Path:
    """``save_pretrained`` of the EMA weights (in ``cfg.export.dtype``) + transport.json.

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
    if cfg.export.dtype == "fp16":
        to_save = copy.deepcopy(ema_model)
        for name, p in to_save.named_parameters():
            if name not in keep32:
                p.data = p.data.half()
    save_pretrained(to_save, directory)
    text = json.dumps(to_dict(cfg.transport), indent=2, sort_keys=True) + "\n"
    write_text_atomic(directory / TRANSPORT_NAME, text)
    return directory
