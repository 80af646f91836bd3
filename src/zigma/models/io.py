"""Saving and loading models as a directory of ``config.json`` + ``model.safetensors``.

The JSON names the model class and holds its full config, so a directory rebuilds itself;
no pickle is read or written anywhere.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import zigma
from zigma.artifacts import CONFIG_NAME, WEIGHTS_NAME, atomic_write, read_json_object
from zigma.config import ConfigError, from_dict, short_repr, to_dict
from zigma.models.registry import FAMILIES, family_of

# Parameter names of the layout before the token grid and the conditioner existed: files
# saved then still load (``rename_legacy_key`` maps them, at load and in header checks).
LEGACY_KEYS = (
    ("x_embedder.", "grid."),
    ("pos_embed", "grid.pos_embed"),
    ("t_embedder.", "conditioner.time."),
    ("y_embedder.embedding.", "conditioner.conditions.y.embedding."),
)


def rename_legacy_key(key: str) -> str:
    """A parameter name of the earlier layout, renamed; any other name unchanged."""
    for old, new in LEGACY_KEYS:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old) :]
    return key


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
    """Return (model class, config) described by ``directory/config.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is too large, not UTF-8 JSON, or not a valid zigma model config.
    """
    path = Path(directory) / config_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a zigma model directory")
    meta = read_json_object(path, "model config")
    if set(meta) != {"class", "zigma_version", "config"}:
        raise ValueError(
            f"{path} is not a zigma model config (expected keys class, zigma_version, config)"
        )
    name = meta["class"]
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(
            f"{path}: unknown model class {short_repr(name)}; known: {', '.join(FAMILIES)}"
        )
    cls, cfg_cls = FAMILIES[name].model_class, FAMILIES[name].config_class
    try:
        config = from_dict(cfg_cls, meta["config"])
    except ConfigError as e:
        raise ValueError(f"{path}: {e}") from e
    return cls, config


def read_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, safetensors dtype) of every tensor in ``path``, reading only its header.

    safetensors refuses a header over 100 MB and a file whose length disagrees with it (torn).
    """
    # the OS's own error (permission denied ...) first: safetensors reports it vaguely
    with open(path, "rb"):
        pass
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()
            slices = {k: f.get_slice(k) for k in names}
            return {k: (tuple(t.get_shape()), t.get_dtype()) for k, t in slices.items()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _kind(dtype: str | torch.dtype) -> str:
    """'float', 'int' or 'bool' for a safetensors dtype name or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "int"
    return "float" if dtype.startswith(("F", "BF")) else "bool" if dtype == "BOOL" else "int"


def _check_buildable(config, header: dict, where: Path, weights: Path) -> None:
    """Cheap bounds before building anything: what the config makes Python or NumPy do at
    construction (a loop over the blocks, the scan orders) must be paid for by the file."""
    numels = [math.prod(shape) for shape, _ in header.values()] or [0]
    if config.depth > len(header):
        raise ValueError(
            f"{where} says depth {config.depth}, but {weights.name} holds only {len(header)} "
            "tensors: the weights are not this model's"
        )
    largest = max(numels)
    if config.hidden_size**2 > largest:  # every backbone has a hidden x hidden time-MLP layer
        raise ValueError(
            f"{where} says hidden_size {config.hidden_size}, but the largest tensor in "
            f"{weights.name} has {largest} values: the weights are not this model's"
        )
    orders = getattr(config, "num_orders", None) or 0
    if getattr(config, "scan", None) in ("sweep", "bidirectional"):
        orders = 0
    h, w = config.grid_size
    if orders * h * w > largest:
        raise ValueError(
            f"{where} implies {orders} scan orders of {h}x{w} tokens, more values than any "
            f"tensor in {weights.name}: the weights are not this model's"
        )


def expected_state(cls, config, where: Path) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors: names, shapes, dtypes) that ``cls(config)`` has."""
    try:
        with torch.device("meta"):
            return cls(config).state_dict()
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:
        raise ValueError(f"{where} describes a model that cannot be built: {e}") from e


def check_weights(expected: dict[str, torch.Tensor], header: dict, weights: Path, where: Path):
    """Raise ValueError unless the file holds exactly the tensors ``expected`` names, with
    their shapes, and floats where floats are expected (any float width loads)."""
    missing = [k for k in expected if k not in header]
    extra = [k for k in header if k not in expected]
    if missing or extra:
        parts = [f"missing {_names(missing)}"] * bool(missing)
        parts += [f"unexpected {_names(extra)}"] * bool(extra)
        raise ValueError(f"{weights} does not match {where.name}: {'; '.join(parts)}")
    for name, ref in expected.items():
        shape, dtype = header[name]
        if shape != tuple(ref.shape):
            raise ValueError(
                f"{weights} does not match {where.name}: tensor {name} has shape "
                f"{list(shape)} in the file, {list(ref.shape)} in the model"
            )
        if _kind(dtype) != _kind(ref.dtype):
            raise ValueError(
                f"{weights}: tensor {name} is {dtype}, but the model keeps {ref.dtype} there"
            )


def _names(names: list[str]) -> str:
    shown = ", ".join(short_repr(n, 60) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def from_pretrained(
    directory: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    config_name: str = CONFIG_NAME,
    weights_name: str = WEIGHTS_NAME,
):
    """Rebuild the model saved in ``directory`` with exactly its saved weights.

    ``config_name`` / ``weights_name`` select other files of the same formats, e.g. a training
    checkpoint's ``model.json`` and ``ema.safetensors``. The weights file's header is checked
    against the model the config describes (built on the meta device) before any memory is
    allocated, so a hostile config cannot ask for more than the file holds.
    """
    directory = Path(directory)
    cls, config = read_config(directory, config_name)
    where, weights = directory / config_name, directory / weights_name
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    header = {rename_legacy_key(k): v for k, v in read_header(weights).items()}
    _check_buildable(config, header, where, weights)
    expected = expected_state(cls, config, where)
    check_weights(expected, header, weights, where)
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu")  # every entry is overwritten by the strict load
    try:
        model.load_state_dict(state, strict=True)
        model.check_loaded()  # e.g. saved scan orders must be permutations
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{weights} does not match {where.name}: {e}") from e
    return model.to(map_location)
