"""Our own small KL autoencoder ("zigma-kl"): the offline default for latent diffusion.

This is ours, not the Stable Diffusion VAE: a compact convolutional encoder / decoder with a
diagonal-Gaussian posterior, trained with ``zigma train-vae`` on the embedded data. Its
weights are not interchangeable with any SD VAE's and its latents mean nothing to an SD model.

Shape of the network, for ``channels=(c0, c1, c2)`` (f4):

    encoder: conv_in -> [res x blocks, down] at c0, c1 -> res x blocks at c2
             -> norm, SiLU, conv_out (2 x latent_channels: mean, log-variance)
    decoder: conv_in -> res x blocks at c2 -> [up, res x blocks] at c1, c0 -> norm, SiLU, conv_out
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zigma.autoencoder.base import Autoencoder
from zigma.config import ConfigError

KIND = "zigma-kl"
# The posterior's log-variance is clamped: exp() of an untrained network's output can
# overflow, and a variance below e^-30 is zero for every purpose here.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class KLConfig:
    """Architecture of our autoencoder.

    Args:
        image_channels: 1 or 3.
        latent_channels: C of the latents (4, like the SD VAEs).
        channels: width of each resolution level, finest first; the encoder halves the side
            between levels, so ``downsample = 2 ** (len(channels) - 1)`` (3 levels: f4, 4: f8).
        blocks: residual blocks per level.
        groups: GroupNorm groups (must divide every width).
    """

    image_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)
    blocks: int = 1
    groups: int = 8

    def __post_init__(self) -> None:
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if self.latent_channels < 1:
            raise ConfigError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if not 2 <= len(self.channels) <= 5:
            raise ConfigError(
                f"channels needs 2 to 5 levels (f2 to f16), got {list(self.channels)}"
            )
        if self.groups < 1 or any(c < 1 or c % self.groups for c in self.channels):
            raise ConfigError(
                f"every width in channels={list(self.channels)} must be a positive multiple of "
                f"groups={self.groups}"
            )
        if self.blocks < 1:
            raise ConfigError(f"blocks must be >= 1, got {self.blocks}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


def kl_preset(downsample: int, image_channels: int = 3) -> KLConfig:
    """The default f4 or f8 architecture (about 0.25M / 0.47M parameters: small enough to
    train at 32 px on a CPU in a few minutes)."""
    if downsample == 4:
        return KLConfig(image_channels=image_channels, channels=(16, 32, 64))
    if downsample == 8:
        return KLConfig(image_channels=image_channels, channels=(16, 32, 64, 64))
    raise ConfigError(f"downsample must be 4 or 8, got {downsample}")


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected where widths differ) skip."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a conv (no transposed conv: no checkerboard artefacts)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(c_in: int, c_out: int, blocks: int, groups: int) -> list[nn.Module]:
    return [ResBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(blocks)]


class Encoder(nn.Module):
    def __init__(self, cfg: KLConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += _level(ch[max(i - 1, 0)], c, cfg.blocks, cfg.groups)
            if i < len(ch) - 1:
                layers.append(Downsample(c))
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.groups, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))  # (B, ch[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: KLConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]  # coarsest first
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            if i > 0:
                layers.append(Upsample(ch[i - 1]))
            layers += _level(ch[max(i - 1, 0)], c, cfg.blocks, cfg.groups)
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.groups, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))  # (B, ch[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, image_channels, H, W)


class KLAutoencoder(Autoencoder):
    """Our KL autoencoder (ours, not the SD VAE). ``scaling_factor`` / ``shift_factor`` are 1
    and 0 until ``zigma.autoencoder.fit_latent_scale`` sets them from data."""

    kind = KIND

    def __init__(
        self, config: KLConfig, scaling_factor: float = 1.0, shift_factor: float = 0.0
    ) -> None:
        super().__init__(
            image_channels=config.image_channels,
            latent_channels=config.latent_channels,
            downsample=config.downsample,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Every init in one place: Xavier-uniform convs with zero biases; GroupNorm at
        identity; the second conv of each residual branch zeroed, so every block starts as
        its skip path and the untrained network is a shallow, well-conditioned map."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and clamped log-variance of the raw latents (with gradients)."""
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.moments(images)
        return mean, torch.exp(0.5 * logvar)

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self.decoder(raw)

    def loss(
        self, images: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: per-pixel MSE of the reconstruction from a posterior sample, plus
        ``kl_weight`` times KL(q(z|x) || N(0, I)) per latent element.

        Returns the loss and its parts as floats (``mse``, ``kl``) for logging.
        """
        mean, logvar = self.moments(images)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * noise
        mse = F.mse_loss(self.decoder(z), images)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return mse + kl_weight * kl, {"mse": float(mse.detach()), "kl": float(kl.detach())}
