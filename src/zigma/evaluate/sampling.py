"""Using a trained model: find its weights and transport (``load_for_sampling``) and write
what ``zigma.generate.generate`` draws from it as PNGs, or for a video model as a frame grid,
GIFs and MP4s (``write_samples``).

``load_for_sampling`` accepts the three places weights live: an exported model folder
(``save_pretrained`` + ``transport.json``), a training checkpoint (EMA weights), or a run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from zigma.artifacts import (
    AUTOENCODER_NAME,
    CKPT_EMA_WEIGHTS,
    CKPT_MODEL_CONFIG,
    CONFIG_NAME,
    TRANSPORT_NAME,
    WEIGHTS_NAME,
    latest_checkpoint,
    read_json_object,
)
from zigma.config import ConfigError, from_dict
from zigma.data import check_mp4_writer, save_frame_grid, save_gif, save_image_grid, save_mp4
from zigma.models import from_pretrained
from zigma.transport import TransportConfig


@dataclass
class LoadedModel:
    """A trained model ready to sample: the EMA weights in eval mode and their transport."""

    model: torch.nn.Module
    transport: TransportConfig
    source: Path  # the folder the weights came from
    # a latent model: the spec of the autoencoder that decodes its samples (None: pixels)
    autoencoder: dict | None = None


def _transport_from(data: object, where: Path) -> TransportConfig:
    try:
        return from_dict(TransportConfig, data)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ValueError(f"{where}: {e}") from e


def _autoencoder_spec(data: object, where: Path) -> dict | None:
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("hash"), str):
        raise ValueError(f"{where}: the autoencoder spec needs at least a weights 'hash'")
    return data


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the floating-point weights and buffers that hold a NaN or an Inf."""
    return [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _finite(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    bad = nonfinite_tensors(model)
    if bad:
        total = len(model.state_dict())
        raise ValueError(
            f"{folder}: {len(bad)} of {total} weight tensors hold NaN or Inf (first: {bad[0]}); "
            "the model diverged and cannot be sampled"
        )
    return model.eval()


def load_for_sampling(path: str | os.PathLike, map_location="cpu") -> LoadedModel:
    """Load the model to sample from ``path`` and the transport it was trained with.

    ``path`` may be an exported model folder (``config.json`` + ``model.safetensors``, optional
    ``transport.json``; linear/velocity if absent; ``autoencoder.json`` for a latent model), a
    training checkpoint folder (``model.json``
    + ``ema.safetensors``: the EMA weights), or a run folder (its ``model/`` export if the run
    finished, else the checkpoint its ``checkpoints/LATEST`` names).

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the files exist but are corrupt, too large, not zigma's, or the weights hold
            NaN or Inf.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; pass the folder that holds the model")
    if (path / CKPT_MODEL_CONFIG).is_file():  # a training checkpoint
        run_cfg = read_json_object(path / CONFIG_NAME, "run config")
        transport = _transport_from(run_cfg.get("transport", {}), path / CONFIG_NAME)
        model = from_pretrained(
            path, map_location, config_name=CKPT_MODEL_CONFIG, weights_name=CKPT_EMA_WEIGHTS
        )
        vae = _autoencoder_spec(run_cfg.get("vae"), path / CONFIG_NAME)
        return LoadedModel(_finite(model, path), transport, path, vae)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        tfile = path / TRANSPORT_NAME
        present = tfile.exists() or tfile.is_symlink()  # a folder or dangling link is an error
        data = read_json_object(tfile, "transport config") if present else {}
        transport = _transport_from(data, tfile)
        afile = path / AUTOENCODER_NAME
        vae = None
        if afile.exists() or afile.is_symlink():
            vae = _autoencoder_spec(read_json_object(afile, "autoencoder spec"), afile)
        model = from_pretrained(path, map_location)
        return LoadedModel(_finite(model, path), transport, path, vae)
    if (path / "model" / CONFIG_NAME).is_file():
        return load_for_sampling(path / "model", map_location)
    ckpt = latest_checkpoint(path)  # refuses a LATEST that leads out of the run folder
    if ckpt is not None:
        return load_for_sampling(ckpt, map_location)
    raise FileNotFoundError(
        f"{path} holds no zigma model: expected config.json + model.safetensors (an exported "
        "model), model.json + ema.safetensors (a checkpoint), or a run folder with model/ or "
        "checkpoints/LATEST"
    )


def write_samples(
    images: torch.Tensor,
    grid_path=None,
    out_dir=None,
    nrow=None,
    scale: int = 1,
    *,
    fps: float = 8,
    mp4: bool = False,
) -> list[Path]:
    """Write samples and return the paths.

    Images [N, C, H, W]: a PNG grid (each image enlarged ``scale`` times, nearest-neighbour)
    at ``grid_path`` and/or one full-size PNG per image in ``out_dir`` (``000000.png`` ...).

    Videos [N, C, T, H, W]: the frame grid (one row per sample, one column per frame, enlarged
    ``scale`` times; ``nrow`` does not apply) at ``grid_path`` and/or one looping GIF per sample
    in ``out_dir`` (``000000.gif`` ..., ``fps`` frames a second, enlarged ``scale`` times so a
    small video stays watchable), plus ``000000.mp4`` ... when ``mp4`` (needs PyAV).

    Every file is replaced atomically (an existing file of the same name is overwritten: the
    CLI refuses a non-empty ``--out-dir`` unless told ``--overwrite``).

    Raises:
        ValueError: not a 4-D or 5-D batch, or ``mp4`` without a video batch and ``out_dir``.
        ImportError: ``mp4`` without PyAV installed (checked before anything is written).
    """
    if images.ndim not in (4, 5):
        raise ValueError(
            f"samples must be images [N, C, H, W] or videos [N, C, T, H, W], "
            f"got {tuple(images.shape)}"
        )
    video = images.ndim == 5
    if mp4:
        if not video or out_dir is None:
            raise ValueError("mp4=True needs video samples [N, C, T, H, W] and an out_dir")
        check_mp4_writer()
    written = []
    if grid_path is not None:
        if video:
            written.append(save_frame_grid(images, grid_path, scale=scale))
        else:
            written.append(save_image_grid(images, grid_path, nrow=nrow, scale=scale))
    if out_dir is not None:
        out_dir = Path(out_dir)
        for i, img in enumerate(images):
            if not video:
                written.append(
                    save_image_grid(img[None], out_dir / f"{i:06d}.png", nrow=1, padding=0)
                )
                continue
            written.append(save_gif(img, out_dir / f"{i:06d}.gif", fps=fps, scale=scale))
            if mp4:
                written.append(save_mp4(img, out_dir / f"{i:06d}.mp4", fps=fps, scale=scale))
    return written
