"""Saving and loading models as a directory of ``config.json`` + ``model.safetensors``.

The JSON names the model class and holds its full config, so a directory rebuilds itself;
no pickle is read or written anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import zigma
from zigma.artifacts import CONFIG_NAME, WEIGHTS_NAME, atomic_write
from zigma.config import ConfigError, from_dict, to_dict
from zigma.models.registry import FAMILIES, family_of


def model_class_name(model: torch.nn.Module) -> str:
    """The name ``config.json`` stores for the model's family."""
    return family_of(model).name


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "class": model_class_name(model),
        "zigma_version": zigma.__version__,
        "config": to_dict(model.config),
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(
        directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"zigma_config": text})
    )
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def read_config(directory: str | os.PathLike, config_name: str = CONFIG_NAME):
    """Return (model class, config) described by ``directory/config.json``."""
    path = Path(directory) / config_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a zigma model directory")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or set(meta) != {"class", "zigma_version", "config"}:
        raise ValueError(
            f"{path} is not a zigma model config (expected keys class, zigma_version, config)"
        )
    if meta["class"] not in FAMILIES:
        raise ValueError(
            f"{path}: unknown model class {meta['class']!r}; known: {', '.join(FAMILIES)}"
        )
    family = FAMILIES[meta["class"]]
    cls, cfg_cls = family.model_class, family.config_class
    try:
        config = from_dict(cfg_cls, meta["config"])
    except ConfigError as e:
        raise ValueError(f"{path}: {e}") from e
    return cls, config


def from_pretrained(
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    config_name: str = CONFIG_NAME,
    weights_name: str = WEIGHTS_NAME,
):
    """Rebuild the model saved in ``directory`` with exactly its saved weights.

    ``config_name`` / ``weights_name`` select other files of the same formats, e.g. a training
    checkpoint's ``model.json`` and ``ema.safetensors``.
    """
    cls, config = read_config(directory, config_name)
    weights = Path(directory) / weights_name
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    try:
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not match its config.json: {e}") from e
    return model.to(map_location)
