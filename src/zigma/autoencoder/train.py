"""Training our KL autoencoder (``zigma train-vae``) on a zigma dataset, fitting its latent
scale from data, and measuring reconstruction PSNR on held-out images.

Small by design: at 32 px the default f4 model trains on the embedded shapes in a few CPU
minutes. The result is ours, not the Stable Diffusion VAE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from zigma.autoencoder.base import Autoencoder
from zigma.autoencoder.io import check_output_folder, save_autoencoder
from zigma.autoencoder.kl import KLAutoencoder, KLConfig
from zigma.config import ConfigError, to_dict
from zigma.data import DataConfig, build_dataset, collate_batch, iterate_batches

_WARMUP = 50  # linear lr warm-up steps (capped at a tenth of the run)


@dataclass
class VAETrainConfig:
    """How ``train_vae`` trains our autoencoder.

    Args:
        data: the images (any image dataset of zigma.data; the embedded "shapes" by default).
        model: the architecture; ``model.image_channels`` must match the data's channels.
        steps, batch_size, lr: AdamW steps, images per step, peak learning rate (warm-up,
            then cosine decay to a tenth).
        kl_weight: weight of the KL term per latent element against the per-pixel MSE; small,
            so the latents stay informative and the posterior only mildly regularised.
        seed: model init, batch order and posterior noise.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        eval_images: held-out images for the final PSNR, and training images for the scale.
    """

    data: DataConfig = field(
        default_factory=lambda: DataConfig(name="shapes", resolution=32, num_samples=20_000)
    )
    model: KLConfig = field(default_factory=KLConfig)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    kl_weight: float = 1e-4
    seed: int = 0
    device: str | None = None
    eval_images: int = 256
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.data.is_video:
            raise ConfigError(f"train-vae takes an image dataset, not video {self.data.name!r}")
        if self.data.resolved_channels != self.model.image_channels:
            raise ConfigError(
                f"model.image_channels={self.model.image_channels} but the {self.data.name!r} "
                f"data has {self.data.resolved_channels} channels"
            )
        f = self.model.downsample
        if self.data.resolution % f:
            raise ConfigError(
                f"data.resolution {self.data.resolution} is not divisible by the autoencoder's "
                f"downsample factor {f}"
            )
        for name in ("steps", "batch_size", "eval_images", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ConfigError(f"kl_weight must be >= 0, got {self.kl_weight}")


@dataclass
class VAETrainSummary:
    path: Path
    weights_hash: str
    steps: int
    seconds: float
    final_loss: float
    psnr: float  # dB on held-out images (posterior mean), after training
    psnr_init: float  # the same measure for the untrained network
    psnr_split: Literal["test", "train"]
    scaling_factor: float
    shift_factor: float


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2): ``10 log10(4 / MSE)``."""
    mse = (images.float() - reference.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


def _stack(dataset: Dataset, count: int) -> torch.Tensor:
    n = min(count, len(dataset))  # type: ignore[arg-type]
    return collate_batch([dataset[i] for i in range(n)])["image"]


def _batched(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    yield from x.split(size)


@torch.no_grad()
def reconstruction_psnr(model: Autoencoder, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean per-image PSNR (dB) of decode(encode(images)) with the posterior mean."""
    scores = []
    for x in _batched(images.to(model.device), batch_size):
        scores.append(psnr(model.decode(model.encode(x)), x))
    return float(torch.cat(scores).mean())


@torch.no_grad()
def fit_latent_scale(model: Autoencoder, images: torch.Tensor, batch_size: int = 64) -> None:
    """Set ``shift_factor`` to the mean and ``scaling_factor`` to 1/std of the raw latents
    (posterior means) of ``images``, over all elements: the diffusion model then sees latents
    of zero mean and unit variance, as with the SD VAE's 0.18215."""
    model.scaling_factor, model.shift_factor = 1.0, 0.0
    raw = torch.cat([model.encode(x) for x in _batched(images, batch_size)]).double()
    std = float(raw.std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"cannot fit a latent scale: the latents' std is {std}")
    model.shift_factor, model.scaling_factor = float(raw.mean()), 1.0 / std


def _held_out(data: DataConfig, count: int) -> tuple[torch.Tensor, Literal["test", "train"]]:
    try:
        return _stack(build_dataset(data, "test"), count), "test"
    except (FileNotFoundError, ValueError):  # a folder without test/, COCO, ...
        return _stack(build_dataset(data, "train"), count), "train"


def train_vae(
    cfg: VAETrainConfig, out: str | Path, log: Callable[[str], Any] | None = print
) -> VAETrainSummary:
    """Train our autoencoder as ``cfg`` says and save it to ``out`` (a new or empty folder).

    Raises:
        FileExistsError: ``out`` holds something already (checked before training).
        ValueError: bad config or data (checked before training), or a diverged run.
    """
    say = log or (lambda _: None)
    out = check_output_folder(out)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batches = iterate_batches(cfg.data, cfg.batch_size, seed=cfg.seed)
    held_out, split = _held_out(cfg.data, cfg.eval_images)
    scale_images = _stack(build_dataset(cfg.data, "train"), cfg.eval_images)

    torch.manual_seed(cfg.seed)
    model = KLAutoencoder(cfg.model).to(device)
    psnr_init = reconstruction_psnr(model, held_out)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = min(_WARMUP, max(1, cfg.steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    say(
        f"train-vae: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"f{model.downsample}, {model.latent_channels} latent channels, {cfg.data.name} at "
        f"{cfg.data.resolution} px, {cfg.steps} steps of {cfg.batch_size} on {device}"
    )
    start = time.perf_counter()
    model.train()
    last_loss = float("nan")
    for step in range(cfg.steps):
        images = next(batches)["image"].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, parts = model.loss(images, cfg.kl_weight, generator=noise)
        last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            raise ValueError(f"train-vae diverged at step {step}: loss {last_loss}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            say(
                f"step {step + 1:>6}  loss {last_loss:.5f}  mse {parts['mse']:.5f}  "
                f"kl {parts['kl']:.3f}  {time.perf_counter() - start:.0f}s"
            )
    seconds = time.perf_counter() - start
    model.eval()
    fit_latent_scale(model, scale_images.to(device))
    score = reconstruction_psnr(model, held_out)
    training = {
        "settings": to_dict(cfg),
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        "final_loss": last_loss,
        "psnr_db": round(score, 3),
        "psnr_init_db": round(psnr_init, 3),
        "psnr_images": len(held_out),
        "psnr_split": split,
    }
    path = save_autoencoder(model, out, training=training)
    say(
        f"train-vae: held-out PSNR {score:.2f} dB on {len(held_out)} {split} images "
        f"(untrained: {psnr_init:.2f} dB); scale {model.scaling_factor:.5g}, shift "
        f"{model.shift_factor:.5g}; saved to {path} (hash {model.weights_hash})"
    )
    return VAETrainSummary(
        path=path,
        weights_hash=str(model.weights_hash),
        steps=cfg.steps,
        seconds=seconds,
        final_loss=last_loss,
        psnr=score,
        psnr_init=psnr_init,
        psnr_split=split,
        scaling_factor=model.scaling_factor,
        shift_factor=model.shift_factor,
    )
