"""Autoencoders for latent diffusion: one interface (``Autoencoder``: ``encode`` images in
[-1, 1] to scaled latents, ``decode`` back, ``spec()`` to record in a run) over

- ``KLAutoencoder`` ("zigma-kl"): our own small KL autoencoder, the offline default, trained
  with ``zigma train-vae`` (ours, not the Stable Diffusion VAE);
- ``DiffusersAutoencoder``: a local diffusers ``AutoencoderKL`` (SD / SD-XL VAEs) or
  ``AutoencoderTiny`` (TAESD), through the optional extra ``zigma[vae]``.

``load_autoencoder(path_or_spec)`` opens any of them; with a recorded spec it checks the
weights hash first.
"""

from zigma.autoencoder.base import HASH_CHARS, Autoencoder, weights_hash
from zigma.autoencoder.hf import DIFFUSERS_KINDS, DiffusersAutoencoder
from zigma.autoencoder.io import (
    KINDS,
    check_output_folder,
    detect_kind,
    load_autoencoder,
    resolve_folder,
    save_autoencoder,
)
from zigma.autoencoder.kl import KLAutoencoder, KLConfig, kl_preset
from zigma.autoencoder.train import (
    VAETrainConfig,
    VAETrainSummary,
    fit_latent_scale,
    psnr,
    reconstruction_psnr,
    train_vae,
)

__all__ = [
    "DIFFUSERS_KINDS",
    "HASH_CHARS",
    "KINDS",
    "Autoencoder",
    "DiffusersAutoencoder",
    "KLAutoencoder",
    "KLConfig",
    "VAETrainConfig",
    "VAETrainSummary",
    "check_output_folder",
    "detect_kind",
    "fit_latent_scale",
    "kl_preset",
    "load_autoencoder",
    "psnr",
    "reconstruction_psnr",
    "resolve_folder",
    "save_autoencoder",
    "train_vae",
    "weights_hash",
]
