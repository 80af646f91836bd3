"""The autoencoder contract latent diffusion relies on: images in [-1, 1] -> scaled latents and
back, plus what a run must record to decode its samples later (``spec()``).

Latents leave ``encode`` already normalised the way the diffusion model sees them,
``z = (raw - shift_factor) * scaling_factor``, and ``decode`` undoes exactly that, so the
trainer and ``zigma sample`` never handle the factors themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# A content hash is the sha256 of the weights file(s), shortened: enough to tell two VAEs apart
# in a config and an error message.
HASH_CHARS = 16
_RANGE_SLACK = 1e-3  # images a hair outside [-1, 1] (rounding in a resize) are fine


def weights_hash(files: Iterable[str | os.PathLike]) -> str:
    """The sha256 prefix of the files' bytes, in the order given (names are not hashed, so a
    renamed copy of the same weights has the same hash)."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:HASH_CHARS]


class Autoencoder(nn.Module):
    """Base class of every autoencoder zigma uses; a subclass supplies ``posterior`` (raw
    latent mean and standard deviation) and ``decode_raw``, and sets the attributes below.

    Attributes:
        kind: "zigma-kl" (ours), "diffusers-kl" (SD / SD-XL VAEs) or "diffusers-tiny" (TAESD).
        image_channels, latent_channels: C of images and latents.
        downsample: image side / latent side (8 for the SD VAEs).
        scaling_factor, shift_factor: latents = (raw - shift_factor) * scaling_factor.
        path: the folder the weights were read from (None for a model built in memory).
        weights_hash: sha256 prefix of the weights file(s) (None until saved or loaded).
    """

    kind: str = ""

    def __init__(
        self,
        *,
        image_channels: int,
        latent_channels: int,
        downsample: int,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.downsample = downsample
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.path: str | None = None
        self.weights_hash: str | None = None

    # -- what a subclass provides (raw, unscaled latents)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and standard deviation of q(raw latent | images); std None: deterministic."""
        raise NotImplementedError

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Images (about [-1, 1]) from raw latents."""
        raise NotImplementedError

    # -- the interface

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool | torch.Generator = False) -> torch.Tensor:
        """Scaled latents of ``images`` ([B, C, H, W] in [-1, 1]) as float32
        [B, latent_channels, H / downsample, W / downsample].

        Args:
            sample: False takes the posterior mean (deterministic); True draws from the
                posterior with torch's global RNG; a ``torch.Generator`` draws with that
                generator (on its own device, then moved). Deterministic autoencoders (TAESD)
                ignore it.

        Raises:
            ValueError: not a 4-D floating tensor, wrong channel count, a side not divisible
                by ``downsample``, or values outside [-1, 1] (checked before any compute).
        """
        self.check_images(images)
        mean, std = self.posterior(images.to(self.device, self.dtype))
        raw = mean
        if sample is not False and std is not None:
            g = sample if isinstance(sample, torch.Generator) else None
            where = g.device if g is not None else mean.device
            noise = torch.randn(mean.shape, generator=g, device=where, dtype=mean.dtype)
            raw = mean + std * noise.to(mean.device)
        return (raw.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (float32 [B, image_channels, h * downsample, w * downsample])
        from scaled latents.

        Raises:
            ValueError: not a 4-D floating tensor, wrong channel count, or non-finite values.
        """
        self.check_latents(latents)
        raw = latents.float() / self.scaling_factor + self.shift_factor
        images = self.decode_raw(raw.to(self.device, self.dtype))
        return images.float().clamp(-1.0, 1.0)

    def decode_in_batches(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """``decode`` a large batch ``batch_size`` latents at a time (the decoder's full-size
        activations are what fill memory); the images are returned on the CPU."""
        return torch.cat([self.decode(chunk).cpu() for chunk in latents.split(batch_size)])

    def latent_shape(self, image_shape: Iterable[int]) -> tuple[int, ...]:
        """[B, C, H, W] of images -> [B, latent_channels, H / f, W / f] of their latents."""
        b, _, h, w = image_shape
        return (b, self.latent_channels, h // self.downsample, w // self.downsample)

    def spec(self) -> dict[str, Any]:
        """What a run records so that sampling decodes with the same autoencoder."""
        return {
            "kind": self.kind,
            "path": self.path,
            "hash": self.weights_hash,
            "image_channels": self.image_channels,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
        }

    def extra_repr(self) -> str:
        where = f", path={self.path}" if self.path else ""
        return (
            f"kind={self.kind}, f{self.downsample}, {self.latent_channels} latent channels, "
            f"scale={self.scaling_factor:.5g}, shift={self.shift_factor:.5g}{where}"
        )

    # -- input checks: one line, before any compute

    def check_images(self, images: Any) -> None:
        name = f"{self.kind} autoencoder"
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"{name}: images must be a [B, C, H, W] tensor, got {shape}")
        b, c, h, w = images.shape
        if not images.is_floating_point():
            raise ValueError(
                f"{name}: images must be floating point in [-1, 1], got {images.dtype}"
            )
        if c != self.image_channels:
            raise ValueError(
                f"{name}: images have {c} channels, this autoencoder takes {self.image_channels}"
            )
        f = self.downsample
        if b == 0 or h == 0 or w == 0 or h % f or w % f:
            raise ValueError(
                f"{name}: image size {h}x{w} (batch {b}) must be non-empty and divisible by "
                f"the downsample factor {f}"
            )
        low, high = images.aminmax()
        if not (float(low) >= -1 - _RANGE_SLACK and float(high) <= 1 + _RANGE_SLACK):
            raise ValueError(
                f"{name}: images must lie in [-1, 1], got values in [{float(low):.4g}, "
                f"{float(high):.4g}]"
            )

    def check_latents(self, latents: Any) -> None:
        name = f"{self.kind} autoencoder"
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents)
            raise ValueError(f"{name}: latents must be a [B, C, h, w] tensor, got {shape}")
        if not latents.is_floating_point() or latents.numel() == 0:
            raise ValueError(f"{name}: latents must be a non-empty floating-point tensor")
        if latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"{name}: latents have {latents.shape[1]} channels, this autoencoder's have "
                f"{self.latent_channels}"
            )
        if not bool(torch.isfinite(latents).all()):
            raise ValueError(f"{name}: latents hold NaN or infinite values")


def describe(spec: dict[str, Any]) -> str:
    """A spec as a short phrase for messages: ``zigma-kl at DIR (hash 1a2b...)``."""
    return f"{spec.get('kind', '?')} autoencoder at {spec.get('path')} (hash {spec.get('hash')})"


def as_path(path: str | os.PathLike) -> Path:
    return Path(os.fspath(path)).expanduser()
