"""Autoencoder folders on disk: which kind a folder holds, saving ours atomically, and
``load_autoencoder`` for a path or a run's recorded spec (whose weights hash must match).

Our format ("zigma-kl"): ``config.json`` (``{"format": "zigma-autoencoder", "kind":
"zigma-kl", "config": KLConfig, "scaling_factor", "shift_factor", "training": {...}}``) and
``model.safetensors``. Diffusers folders are recognised by ``_class_name`` in their config.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import zigma
from zigma.artifacts import CONFIG_NAME, WEIGHTS_NAME, fsync_path, read_json_object
from zigma.autoencoder.base import Autoencoder, as_path, describe, weights_hash
from zigma.autoencoder.hf import DIFFUSERS_KINDS, load_diffusers, weights_files
from zigma.autoencoder.kl import KIND, KLAutoencoder, KLConfig
from zigma.config import ConfigError, from_dict, to_dict

FORMAT = "zigma-autoencoder"
NOTE = "zigma's own small KL autoencoder: ours, not the Stable Diffusion VAE"
KINDS = (KIND, *DIFFUSERS_KINDS.values())
# spec keys load_autoencoder compares with the loaded model (besides the hash)
_CHECKED = (
    "kind", "image_channels", "latent_channels", "downsample", "scaling_factor", "shift_factor",
)  # fmt: skip


def resolve_folder(path: str | os.PathLike) -> Path:
    """The autoencoder folder ``path`` names: itself, or ``path/vae`` for a diffusers pipeline
    folder (one with ``model_index.json`` and no config.json of its own).

    Raises:
        FileNotFoundError: the folder or its config.json is missing.
        NotADirectoryError: ``path`` is a file.
    """
    folder = as_path(path)
    if not folder.exists():
        raise FileNotFoundError(f"autoencoder folder {folder} not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"autoencoder path {folder} is a file, not a folder")
    if not (folder / CONFIG_NAME).is_file() and (folder / "model_index.json").is_file():
        folder = folder / "vae"  # a whole diffusers pipeline: its VAE lives in vae/
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not an autoencoder folder")
    return folder


def detect_kind(folder: str | os.PathLike) -> str:
    """The kind of autoencoder in ``folder`` ("zigma-kl", "diffusers-kl", "diffusers-tiny").

    Raises:
        FileNotFoundError: see ``resolve_folder``.
        ValueError: config.json describes something else (a UNet, a zigma denoiser, ...).
    """
    folder = resolve_folder(folder)
    cfg = read_json_object(folder / CONFIG_NAME, "autoencoder config")
    if cfg.get("format") == FORMAT and cfg.get("kind") == KIND:
        return KIND
    cls = cfg.get("_class_name")
    if isinstance(cls, str) and cls in DIFFUSERS_KINDS:
        return DIFFUSERS_KINDS[cls]
    what = f"class {cls!r}" if isinstance(cls, str) else f"keys {sorted(cfg)[:6]}"
    raise ValueError(
        f"{folder} is not an autoencoder folder: its config.json names {what} (expected a "
        f"diffusers AutoencoderKL / AutoencoderTiny or a zigma-kl autoencoder)"
    )


def _weights_of(folder: Path, kind: str) -> list[Path]:
    if kind == KIND:
        path = folder / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in autoencoder folder {folder}")
        return [path]
    return weights_files(folder)


# ---------------------------------------------------------------- saving ours


def save_autoencoder(
    model: KLAutoencoder, directory: str | os.PathLike, training: dict[str, Any] | None = None
) -> Path:
    """Write our autoencoder to ``directory`` (config.json + model.safetensors) as one step.

    The files are written and flushed in a temp folder beside it, which is then renamed into
    place: a crash leaves no half-written folder. Sets ``model.path`` and ``model.weights_hash``.

    Args:
        training: what produced the weights (settings, PSNR), stored in config.json.

    Raises:
        FileExistsError: ``directory`` exists and is not an empty folder (nothing is replaced).
    """
    if not isinstance(model, KLAutoencoder):
        raise TypeError(f"only zigma-kl autoencoders are saved here, got {type(model).__name__}")
    final = as_path(directory)
    _check_free_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "kind": KIND,
        "note": NOTE,
        "zigma_version": zigma.__version__,
        "config": to_dict(model.config),
        "scaling_factor": model.scaling_factor,
        "shift_factor": model.shift_factor,
        "training": training or {},
    }
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    try:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            fsync_path(tmp / name)
        fsync_path(tmp)
        os.replace(tmp, final)  # POSIX: onto an absent or empty folder only
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(final.parent)
    model.path = os.path.abspath(final)
    model.weights_hash = weights_hash([final / WEIGHTS_NAME])
    return final


def _check_free_target(final: Path) -> None:
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FileExistsError(f"autoencoder output {final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()):
        raise FileExistsError(
            f"autoencoder output {final} is not empty; choose a new folder (nothing replaced)"
        )


def check_output_folder(directory: str | os.PathLike) -> Path:
    """Raise before any training if ``save_autoencoder`` could not write ``directory``."""
    from zigma.artifacts import check_output_dir

    final = as_path(directory)
    _check_free_target(final)
    check_output_dir(final, "autoencoder output")
    return final


# ---------------------------------------------------------------- loading


def _load_ours(folder: Path) -> KLAutoencoder:
    meta = read_json_object(folder / CONFIG_NAME, "autoencoder config")
    try:
        config = from_dict(KLConfig, meta.get("config", {}), where="config")
        scale, shift = float(meta["scaling_factor"]), float(meta["shift_factor"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"autoencoder config {folder / CONFIG_NAME} is invalid: {e}") from None
    model = KLAutoencoder(config, scaling_factor=scale, shift_factor=shift)
    state = load_file(str(folder / WEIGHTS_NAME))
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        raise ValueError(
            f"{folder / WEIGHTS_NAME} does not fit its config.json: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {wrong[:3]}"
        )
    model.load_state_dict(state)
    return model.eval()


def load_autoencoder(
    spec_or_path: dict[str, Any] | str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    folder: str | os.PathLike | None = None,
) -> Autoencoder:
    """Load an autoencoder from a folder, or from the ``spec()`` a run recorded.

    With a spec, the folder at ``spec["path"]`` (or ``folder``, where the same weights were
    moved) must hold weights of the recorded hash, and kind, channels, downsample and factors
    must agree; the hash is checked before the weights are loaded. Messages name the recorded
    spec.

    Raises:
        FileNotFoundError: the folder (or its config / weights) is missing; with a spec the
            message names the recorded path and hash.
        ValueError: not an autoencoder folder, a different hash or shape than recorded.
        ImportError: a diffusers folder without diffusers installed (names the pip command).
    """
    spec = spec_or_path if isinstance(spec_or_path, dict) else None
    if spec is not None:
        if not isinstance(spec.get("path"), str) or not isinstance(spec.get("hash"), str):
            raise ValueError(f"autoencoder spec needs a 'path' and a 'hash', got {sorted(spec)}")
        try:
            folder = resolve_folder(spec["path"] if folder is None else folder)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise FileNotFoundError(f"recorded {describe(spec)} not found: {e}") from None
    else:
        if folder is not None:
            raise ValueError("folder= moves a recorded spec; pass the folder itself instead")
        folder = resolve_folder(spec_or_path)  # type: ignore[arg-type]
    kind = detect_kind(folder)
    files = _weights_of(folder, kind)
    digest = weights_hash(files)
    if spec is not None and digest != spec["hash"]:
        raise ValueError(
            f"autoencoder at {folder} has weights hash {digest}, but the run recorded "
            f"{describe(spec)}: point to the same weights"
        )
    model = _load_ours(folder) if kind == KIND else load_diffusers(folder, kind)
    # absolute, so a run's recorded spec still finds it from another working directory
    model.path, model.weights_hash = os.path.abspath(folder), digest
    if spec is not None:
        _check_spec(model, spec)
    return model.to(device=device, dtype=dtype) if device or dtype else model


def _check_spec(model: Autoencoder, spec: dict[str, Any]) -> None:
    got = model.spec()
    keys = [k for k in _CHECKED if k in spec and spec[k] != got[k]]
    if keys:
        diff = ", ".join(f"{k} {got[k]} (recorded {spec[k]})" for k in keys)
        raise ValueError(f"autoencoder at {model.path} differs from the recorded one: {diff}")
