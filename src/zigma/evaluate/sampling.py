"""Sampling a trained model: find its weights and transport, draw seeded images, write PNGs.

``load_for_sampling`` accepts the three places weights live: an exported model folder
(``save_pretrained`` + ``transport.json``), a training checkpoint (EMA weights), or a run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zigma.artifacts import (
    CKPT_EMA_WEIGHTS,
    CKPT_MODEL_CONFIG,
    CONFIG_NAME,
    TRANSPORT_NAME,
    WEIGHTS_NAME,
    latest_checkpoint,
    read_json_object,
)
from zigma.config import ConfigError, from_dict
from zigma.data import save_image_grid
from zigma.models import GraphCache, from_pretrained
from zigma.transport import SAMPLERS, TransportConfig, as_velocity, class_guided, sample


@dataclass
class Sampleable:
    model: torch.nn.Module
    transport: TransportConfig
    source: Path  # the folder the weights came from


def _transport_from(data: object, where: Path) -> TransportConfig:
    try:
        return from_dict(TransportConfig, data)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ValueError(f"{where}: {e}") from e


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


def load_for_sampling(path: str | os.PathLike, map_location="cpu") -> Sampleable:
    """Load the model to sample from ``path`` and the transport it was trained with.

    ``path`` may be an exported model folder (``config.json`` + ``model.safetensors``, optional
    ``transport.json``; linear/velocity if absent), a training checkpoint folder (``model.json``
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
        return Sampleable(_finite(model, path), transport, path)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        tfile = path / TRANSPORT_NAME
        present = tfile.exists() or tfile.is_symlink()  # a folder or dangling link is an error
        data = read_json_object(tfile, "transport config") if present else {}
        transport = _transport_from(data, tfile)
        model = from_pretrained(path, map_location)
        return Sampleable(_finite(model, path), transport, path)
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


def default_labels(num: int, num_classes: int, class_label: int | None) -> torch.Tensor | None:
    """Labels for a grid: all ``class_label``, or classes in turn (one per column of a row)."""
    if num_classes == 0:
        if class_label is not None:
            raise ValueError("this model is unconditional: --class does not apply")
        return None
    if class_label is not None:
        if not 0 <= class_label < num_classes:
            raise ValueError(f"class must be in 0..{num_classes - 1}, got {class_label}")
        return torch.full((num,), class_label, dtype=torch.long)
    return torch.arange(num, dtype=torch.long) % num_classes


def _sde_generator(seed: int, index: int, device) -> torch.Generator:
    """The SDE noise stream of sample ``index``: numpy's SeedSequence mixes (seed, index) into
    a seed that no other pair shares by accident (seed + index would)."""
    mixed = np.random.SeedSequence(seed % 2**64, spawn_key=(index,)).generate_state(1, np.uint64)
    return torch.Generator(device=device).manual_seed(int(mixed[0]))


@torch.no_grad()
def generate(
    loaded: Sampleable,
    num: int,
    *,
    seed: int = 0,
    sampler: str = "heun",
    steps: int = 50,
    cfg_scale: float = 1.0,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    cuda_graphs: bool = False,
    **sampler_kw,
) -> torch.Tensor:
    """Draw ``num`` samples [num, C, H, W] in [-1, 1] (clamped), deterministic in ``seed``.

    The same call on the same machine gives the same bits. The noise does not depend on
    ``batch_size``: batches are cut from one starting-noise tensor drawn from ``seed``, and
    each sample's SDE noise has its own generator, seeded from ``(seed, sample index)``. Other
    batch sizes still differ by rounding, as matrix kernels round differently for different
    batch shapes: with the fixed-step samplers (euler, heun, sde-*) by about 1e-5 (the shipped
    model, 50 steps; values in [-1, 1], so a PNG pixel may move by one level), and with dopri5,
    which picks its steps for the whole batch, by up to its tolerance (about 1e-3).
    ``cuda_graphs`` (CUDA only) replays each model call as a captured CUDA graph: the same
    kernels, without the launch cost that dominates small models and batches.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg scale must be >= 0, got {cfg_scale}")
    if cuda_graphs and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, got {device}")
    model, tcfg = loaded.model.to(device), loaded.transport
    cfg = model.config
    if cfg_scale != 1.0 and model.null_class is None:
        raise ValueError("classifier-free guidance needs a class-conditional model")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, cfg.in_channels, *cfg.input_size, generator=gen)
    sde = sampler.startswith("sde")

    call = GraphCache(model) if cuda_graphs else model

    def net(x, t, y=None):
        return call(x, t, y)

    velocity = as_velocity(net, tcfg.prediction, tcfg.path)
    t_start, t_end = tcfg.sample_interval()
    if sde:
        t_start = t_end = None  # the SDE samplers pick their own safe ends
    out = []
    for lo in range(0, num, batch_size):
        x = noise[lo : lo + batch_size].to(device)
        y = None if labels is None else labels[lo : lo + batch_size].to(device)
        fn, kwargs = class_guided(velocity, y, model.null_class, cfg_scale)
        gens = [_sde_generator(seed, i, device) for i in range(lo, lo + len(x))] if sde else None
        out.append(
            sample(
                fn, x, sampler, steps, tcfg.path, model_kwargs=kwargs, t_start=t_start,
                t_end=t_end, generator=gens, progress=progress, **sampler_kw,
            ).clamp(-1, 1).cpu()
        )  # fmt: skip
    return torch.cat(out)


def write_samples(
    images: torch.Tensor, grid_path=None, out_dir=None, nrow=None, scale: int = 1
) -> list[Path]:
    """Write a PNG grid (each image enlarged ``scale`` times, nearest-neighbour) and/or one
    full-size PNG per image (``000000.png`` ...); returns the paths.

    Every file is replaced atomically (an existing file of the same name is overwritten: the
    CLI refuses a non-empty ``--out-dir`` unless told ``--overwrite``)."""
    written = []
    if grid_path is not None:
        written.append(save_image_grid(images, grid_path, nrow=nrow, scale=scale))
    if out_dir is not None:
        out_dir = Path(out_dir)
        for i, img in enumerate(images):
            written.append(save_image_grid(img[None], out_dir / f"{i:06d}.png", nrow=1, padding=0))
    return written
