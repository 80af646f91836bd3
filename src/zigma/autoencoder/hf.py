"""Diffusers autoencoders from a local folder: ``AutoencoderKL`` (the SD / SD-XL VAEs, e.g.
sd-vae-ft-ema / -mse) and ``AutoencoderTiny`` (TAESD, for fast previews).

diffusers is the optional extra ``zigma[vae]``, imported only here and only when such a folder
is loaded. Loading is always ``local_files_only=True`` with safetensors: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zigma.autoencoder.base import Autoencoder

# diffusers class name in config.json -> our kind
DIFFUSERS_KINDS = {"AutoencoderKL": "diffusers-kl", "AutoencoderTiny": "diffusers-tiny"}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
INSTALL_HINT = "pip install 'zigma[vae]'"


def import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ImportError(
            f"loading a diffusers autoencoder needs diffusers: {INSTALL_HINT}"
        ) from None
    return diffusers


def downsample_of(kind: str, config: dict[str, Any]) -> int:
    """Image side / latent side, from a diffusers config: one stride-2 stage between blocks."""
    key = "block_out_channels" if kind == "diffusers-kl" else "encoder_block_out_channels"
    blocks = config.get(key)
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"autoencoder config.json has no list {key!r}")
    return 2 ** (len(blocks) - 1)


class DiffusersAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` behind zigma's interface.

    ``scaling_factor`` and ``shift_factor`` come from the folder's config (SD: 0.18215 and 0;
    SD-XL: 0.13025; TAESD: 1, its latents being already scaled); a null shift is 0.
    """

    def __init__(self, vae: torch.nn.Module, kind: str) -> None:
        cfg = vae.config
        shift = getattr(cfg, "shift_factor", None)
        super().__init__(
            image_channels=int(cfg.in_channels),
            latent_channels=int(cfg.latent_channels),
            downsample=downsample_of(kind, dict(cfg)),
            scaling_factor=float(cfg.scaling_factor),
            shift_factor=float(shift) if shift is not None else 0.0,
        )
        self.kind = kind
        self.vae = vae.eval()

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.vae.encode(images)
        if self.kind == "diffusers-tiny":
            return out.latents, None
        dist = out.latent_dist
        return dist.mean, dist.std

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(raw).sample


def weights_files(folder: Path) -> list[Path]:
    """The safetensors file(s) ``from_pretrained`` reads from ``folder``: the single file, or
    the index and its shards in name order.

    Raises:
        FileNotFoundError: no safetensors weights there (a folder of .bin files is refused:
            zigma loads no pickle).
    """
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = folder / INDEX_NAME
    if index.is_file():
        return [index, *sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))]
    raise FileNotFoundError(
        f"no {WEIGHTS_NAME} in autoencoder folder {folder} (zigma reads safetensors only)"
    )


def load_diffusers(folder: Path, kind: str) -> DiffusersAutoencoder:
    diffusers = import_diffusers()
    cls = diffusers.AutoencoderKL if kind == "diffusers-kl" else diffusers.AutoencoderTiny
    vae = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    return DiffusersAutoencoder(vae, kind)
