"""Training checkpoints as a folder of safetensors + JSON (no pickle), written atomically.

A checkpoint is written to ``checkpoints/.tmp-step_XXXXXXX``, renamed to ``step_XXXXXXX``,
and only then named in ``checkpoints/LATEST``; a crash at any point leaves the previous
checkpoint intact and LATEST pointing at a complete folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import zigma
from zigma import artifacts
from zigma.artifacts import (
    LATEST,
    ArtifactError,
    checkpoint_name,
    list_checkpoints,
)
from zigma.models.io import model_class_name

FORMAT = "zigma-train-checkpoint"
VERSION = 1
FILES = (
    "config.json",
    "model.json",
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
    "rng.safetensors",
    "history.safetensors",
)


class CheckpointError(ArtifactError):
    """A checkpoint is missing, incomplete, corrupt or not a zigma training checkpoint."""


def model_json(model: torch.nn.Module) -> str:
    """The model's config exactly as ``save_pretrained`` writes ``config.json``."""
    from zigma.config import to_dict

    meta = {
        "class": model_class_name(model),
        "zigma_version": zigma.__version__,
        "config": to_dict(model.config),
    }
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def pretty_json(obj: Any, indent: int = 0) -> str:
    """JSON with nested mappings indented and lists of scalars on one line (RNG states are
    hundreds of integers), so state.json stays readable."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {pretty_json(v, indent + 1)}" for k, v in obj.items()]
        text = "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [pad + pretty_json(v, indent + 1) for v in obj]
        text = "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    else:
        text = json.dumps(obj)
    return text + ("\n" if indent == 0 else "")


# ---------------------------------------------------------------- RNG


def capture_rng(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's global RNG states: torch CPU/CUDA as uint8 tensors, numpy and python
    ``random`` as JSON-ready lists."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, states


def restore_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any], device: torch.device):
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------- optimizer


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors ("state.<param>.<name>") and a JSON part."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- save


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    *,
    config: dict[str, Any],
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rng_tensors: list[dict[str, torch.Tensor]],
    rng_states: list[dict[str, Any]],
    shared_rng: dict[str, torch.Tensor],
    history: dict[str, list[float]],
    keep_last: int,
) -> Path:
    """Write checkpoint ``step`` under ``ckpt_root`` (rank 0 only), update LATEST, prune.

    ``rng_tensors`` / ``rng_states`` hold one entry per rank; ``shared_rng`` the generator
    states every rank shares (noise and times); ``history`` per-step series (loss, grad norm).
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = ckpt_root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # a crashed earlier attempt at this step
    tmp.mkdir()
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    full_state = {
        "format": FORMAT,
        "version": VERSION,
        "zigma_version": zigma.__version__,
        "torch_version": torch.__version__,
        "step": step,
        "world_size": len(rng_states),
        **state,
        "optimizer": opt_meta,
        "rng": rng_states,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "model.json").write_text(model_json(model))
    save_file(_state_dict(model), tmp / "model.safetensors")
    save_file(_state_dict(ema_model), tmp / "ema.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({**shared_rng, **rng_tensors[0]}, tmp / "rng.safetensors")
    for r, tensors in enumerate(rng_tensors[1:], start=1):
        save_file(tensors, tmp / f"rng_rank{r}.safetensors")
    series = {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()}
    save_file(series, tmp / "history.safetensors")
    (tmp / "state.json").write_text(pretty_json(full_state))  # written last

    final = ckpt_root / name
    if final.exists():  # e.g. killed between this rename and LATEST last time: replace it
        old = ckpt_root / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    artifacts.write_latest(ckpt_root, name)
    prune_checkpoints(ckpt_root, keep_last)
    return final


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never the one LATEST names)."""
    latest = (ckpt_root / LATEST).read_text().strip() if (ckpt_root / LATEST).is_file() else None
    ckpts = list_checkpoints(ckpt_root)
    doomed = [p for p in ckpts[: max(len(ckpts) - keep_last, 0)] if p.name != latest]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


# ---------------------------------------------------------------- load


@dataclass
class Checkpoint:
    """Everything in a checkpoint folder, loaded to CPU."""

    path: Path
    config: dict[str, Any]
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng_tensors: list[dict[str, torch.Tensor] | None]
    shared_rng: dict[str, torch.Tensor]
    history: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The folder ``run_dir/checkpoints/LATEST`` names (``artifacts.latest_checkpoint``).

    Raises:
        CheckpointError: no LATEST, or it does not name a checkpoint folder of this run.
    """
    try:
        found = artifacts.latest_checkpoint(run_dir)
    except ArtifactError as e:
        raise CheckpointError(str(e)) from None
    if found is None:
        pointer = Path(run_dir) / artifacts.CHECKPOINTS / LATEST
        raise CheckpointError(f"no checkpoint to resume in {run_dir} ({pointer} not found)")
    return found


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder written by ``save_checkpoint``.

    Raises:
        CheckpointError: a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder")
    state = _read_json(path / "state.json")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a zigma training checkpoint (state.json has no format={FORMAT!r})"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r} is not "
            f"supported (this zigma reads version {VERSION})"
        )
    try:
        world, step = int(state["world_size"]), int(state["step"])
        opt_meta, rng_states = state["optimizer"], state["rng"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/state.json lacks a field: {e}") from e
    rng = _read_tensors(path / "rng.safetensors")
    shared = {k: v for k, v in rng.items() if not k.startswith("torch_")}
    per_rank: list[dict[str, torch.Tensor] | None] = [
        {k: v for k, v in rng.items() if k.startswith("torch_")}
    ]
    for r in range(1, world):
        f = path / f"rng_rank{r}.safetensors"
        per_rank.append(_read_tensors(f) if f.is_file() else None)
    history = _read_tensors(path / "history.safetensors")
    if (
        any(history.get(k) is None or history[k].shape != (step,) for k in ("loss", "grad_norm"))
        or len(rng_states) != world
    ):
        raise CheckpointError(f"{path}: history or RNG states do not match step {step}")
    try:
        optimizer = unflatten_optimizer(_read_tensors(path / "optimizer.safetensors"), opt_meta)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed optimizer state: {e}") from e
    return Checkpoint(
        path=path,
        config=_read_json(path / "config.json"),
        state=state,
        model=_read_tensors(path / "model.safetensors"),
        ema=_read_tensors(path / "ema.safetensors"),
        optimizer=optimizer,
        rng_tensors=per_rank,
        shared_rng=shared,
        history=history,
    )
