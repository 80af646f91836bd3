"""What leaves the trainer besides checkpoints: periodic sample grids from the EMA weights and
the final ``model/`` folder (``save_pretrained`` of the EMA model plus ``transport.json``, and
for a latent model ``autoencoder.json``: the spec of the autoencoder that decodes it).

``zigma sample`` loads ``model/`` as it loads any pretrained folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zigma.artifacts import AUTOENCODER_NAME, TRANSPORT_NAME, write_text_atomic
from zigma.autoencoder import Autoencoder, load_autoencoder
from zigma.config import ConfigError, to_dict
from zigma.data import derive_seed, save_frame_grid, save_image_grid
from zigma.generate import as_sampled, generate, grid_conditions, to_images
from zigma.models import save_pretrained
from zigma.train.config import TrainConfig
from zigma.train.optim import TrainingDiverged
from zigma.train.text import TextFeatures

_SEED_SAMPLES = 3  # the sample noise is the same at every step, so grids are comparable


def preview_prompts(cfg: TrainConfig, dataset: Any, rows: int) -> list[str]:
    """The preview grid's prompts: ``text.prompts``, else the first distinct non-empty captions
    of the data (at most ``rows``)."""
    if cfg.text.prompts:
        return list(cfg.text.prompts[:rows])
    found: list[str] = []
    for i in range(min(len(dataset), 64 * rows)):
        caption = dataset[i]["caption"]
        if caption.strip() and caption not in found:
            found.append(caption)
            if len(found) == rows:
                break
    return found


def preview_autoencoder(cfg: TrainConfig, device: torch.device) -> Autoencoder | None:
    """The autoencoder that decodes a latent run's previews (None: pixels, or no previews).

    Raises:
        ConfigError: the recorded autoencoder is missing or its weights changed.
    """
    if not cfg.preview.every:
        return None
    return run_autoencoder(cfg, device, "previews", "preview.every=0")


def run_autoencoder(cfg: TrainConfig, device: torch.device, use: str, off: str):
    """The autoencoder a latent run's latents were made by (None: a pixel run), for ``use``
    (previews, eval); a missing or changed one is a ConfigError that names the switch ``off``.
    """
    if cfg.vae is None:
        return None
    try:
        return load_autoencoder(cfg.vae, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{use} decode with the autoencoder the latents were made by: {e}; put it back, "
            f"or set {off}"
        ) from None


def preview_grid(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    autocast: torch.dtype | None,
    text: TextFeatures | None = None,
    dataset: Any = None,
    decoder: Autoencoder | None = None,
) -> tuple[torch.Tensor, int | None]:
    """(``cfg.preview.num_samples`` samples [N, C, H, W] (a video model: [N, C, T, H, W]) in
    [-1, 1] from a fixed noise seed, images per grid row) through ``generate``: a text model
    gets one row per prompt (``preview_prompts``), other conditions are spread over the grid
    (classes in turn). A latent model's samples are decoded by ``decoder`` to images."""
    was_training = model.training
    p = cfg.preview
    mcfg = model.config
    given: dict[str, Any] = {}
    nrow = mcfg.num_classes if 0 < mcfg.num_classes <= 16 else None
    if text is not None:
        prompts = preview_prompts(cfg, dataset, rows=max(1, round(p.num_samples**0.5)))
        if prompts:
            nrow = max(1, p.num_samples // len(prompts))
            rows = [prompts[min(i // nrow, len(prompts) - 1)] for i in range(p.num_samples)]
            given["text"] = text(rows)
    cond = grid_conditions(model, p.num_samples)
    cond.update(given)
    try:
        samples = generate(
            model,
            cfg.transport,
            p.num_samples,
            cond=cond,
            seed=derive_seed(cfg.seed, _SEED_SAMPLES),
            sampler=p.sampler,
            steps=p.steps,
            guidance_scale=p.guidance_scale,
            batch_size=p.num_samples,
            device=device,
            autocast=autocast,
            output=to_images if decoder is None else as_sampled,
        )
    finally:
        model.train(was_training)
    if decoder is not None:
        samples = decoder.decode_in_batches(samples)
    return samples, nrow


def save_preview(samples: torch.Tensor, path: Path, nrow: int | None) -> Path:
    """Write ``preview_grid``'s samples as a PNG enlarged to at least 64 px: images in rows of
    ``nrow``; videos as a frame grid (one row per sample, one column per frame; no ``nrow``)."""
    scale = max(1, 64 // max(samples.shape[-2:]))
    if samples.ndim == 5:
        return save_frame_grid(samples, path, scale=scale)
    return save_image_grid(samples, path, nrow=nrow, scale=scale)


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
    if cfg.vae is not None:
        spec = json.dumps(cfg.vae, indent=2, sort_keys=True) + "\n"
        write_text_atomic(directory / AUTOENCODER_NAME, spec)
    return directory
