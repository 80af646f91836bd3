"""Training checkpoints as a folder of safetensors + JSON (no pickle), written atomically.

A checkpoint is written to ``checkpoints/.tmp-step_XXXXXXX.<pid>``, flushed to disk, renamed to
``step_XXXXXXX`` and only then named in ``checkpoints/LATEST``; a crash or power loss at any
point leaves the previous checkpoint intact and LATEST pointing at a complete folder.
"""

from __future__ import annotations

import errno
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
from zigma.config import short_repr
from zigma.models.io import model_class_name
from zigma.train.optim import param_groups

FORMAT = "zigma-train-checkpoint"
VERSION = 2  # 2: optimizer states carry their parameters' names
READABLE_VERSIONS = (1, 2)
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


def optimizer_param_names(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The name of the parameter at each index of ``opt.state_dict()`` (its groups in turn)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]


def legacy_optimizer_names(model: torch.nn.Module) -> list[str]:
    """``optimizer_param_names`` as a version-1 checkpoint had them: the parameters in the
    earlier layout's order (``legacy_parameter_order``), grouped by the same decay rule."""
    named = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.0, model.legacy_parameter_order())
    return [named[id(p)] for group in groups for p in group["params"]]


def remap_optimizer_state(
    saved: dict[str, Any], saved_names: list[str], opt: torch.optim.Optimizer, model
) -> dict[str, Any]:
    """``saved`` (an optimizer state dict whose index i is parameter ``saved_names[i]``)
    re-indexed for ``opt``: states follow their parameters by name, whatever order the model
    lists them in now.

    Raises:
        ValueError: the names or their groups differ from the optimizer's.
    """
    current = optimizer_param_names(opt, model)
    if len(saved_names) != len(current) or set(saved_names) != set(current):
        missing = sorted(set(current) - set(saved_names))[:3]
        raise ValueError(f"the optimizer state names other parameters (lacks {missing})")
    position = {n: i for i, n in enumerate(current)}
    groups, first = [], 0
    for g_saved, g_now in zip(saved["param_groups"], opt.param_groups, strict=True):
        now = list(range(first, first + len(g_now["params"])))
        first += len(g_now["params"])
        if {saved_names[i] for i in g_saved["params"]} != {current[i] for i in now}:
            raise ValueError("the optimizer state groups its parameters differently")
        groups.append(dict(g_saved, params=now))
    state = {position[saved_names[int(i)]]: st for i, st in saved["state"].items()}
    return {"state": state, "param_groups": groups}


def flatten_optimizer(
    opt: torch.optim.Optimizer, param_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors ("state.<param>.<name>") and a JSON part that
    also names the parameter of each index (``param_names``)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "param_names": param_names}
    return tensors, meta


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


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _disk_full(final: Path, need: int) -> OSError:
    """The one-line error of a checkpoint that does not fit (the CLI adds the free space)."""
    text = f"no space for checkpoint {final.name} (about {_mib(need)})"
    return OSError(errno.ENOSPC, text, str(final.parent))


def _write_files(folder: Path, files: dict[str, Any]) -> None:
    """Each value: text, or a dict of tensors for safetensors; every file flushed to disk."""
    for name, content in files.items():
        path = folder / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            save_file(content, path)
        artifacts.fsync_path(path)
    artifacts.fsync_path(folder)


def _remove(path: Path) -> None:
    """Delete a folder we wrote, or whatever else holds its name (a link: not its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
    The files are flushed to disk before the folder is renamed into place and before LATEST
    names it, so LATEST never names a checkpoint a power loss could tear.

    Raises:
        OSError: ENOSPC when the free space is short of the checkpoint's size (checked
            before writing) or runs out while writing; no partial folder is left then.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = ckpt_root / name
    opt_tensors, opt_meta = flatten_optimizer(optimizer, optimizer_param_names(optimizer, model))
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
    files: dict[str, Any] = {
        "config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "model.json": model_json(model),
        "model.safetensors": _state_dict(model),
        "ema.safetensors": _state_dict(ema_model),
        "optimizer.safetensors": opt_tensors,
        "rng.safetensors": {**shared_rng, **rng_tensors[0]},
        **{f"rng_rank{r}.safetensors": t for r, t in enumerate(rng_tensors[1:], start=1)},
        "history.safetensors": {
            k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()
        },
        "state.json": pretty_json(full_state),  # written last
    }
    need = sum(len(v.encode()) if isinstance(v, str) else _nbytes(v) + 4096 for v in files.values())
    if shutil.disk_usage(ckpt_root).free < need:
        raise _disk_full(final, need)
    tmp = ckpt_root / f".tmp-{name}.{os.getpid()}"  # unique per process
    try:
        tmp.mkdir()
        _write_files(tmp, files)
        if final.exists() or final.is_symlink():  # e.g. killed between rename and LATEST
            old = ckpt_root / f".old-{name}.{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            tmp.rename(final)
        artifacts.fsync_path(ckpt_root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise _disk_full(final, need) from None
        raise
    artifacts.write_latest(ckpt_root, name)
    prune_checkpoints(ckpt_root, keep_last, latest=name)
    return final


def prune_checkpoints(ckpt_root: Path, keep_last: int, latest: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, never ``latest`` (the name LATEST
    holds). Symlinks and anything not named like a checkpoint folder are left alone."""
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
        return artifacts.read_json(path, "checkpoint file")
    except ArtifactError as e:
        raise CheckpointError(str(e)) from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def bounded_count(state: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    """An integer of state.json within [lo, hi]: counts are bounded by what is on disk
    (the history's length, the per-rank RNG states), so a forged one cannot stall a resume."""
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CheckpointError(
            f"{where}: {key} must be an integer in [{lo}, {hi}], got {short_repr(value)}"
        )
    return value


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder written by ``save_checkpoint``.

    Raises:
        CheckpointError: a missing, unreadable, inconsistent or foreign file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder")
    state = _read_json(path / "state.json")
    where = f"{path}/state.json"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a zigma training checkpoint (state.json has no format={FORMAT!r})"
        )
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint version {short_repr(state.get('version'))} is not "
            f"supported (this zigma reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    opt_meta, rng_states = state.get("optimizer"), state.get("rng")
    if not isinstance(opt_meta, dict) or not isinstance(rng_states, list):
        raise CheckpointError(f"{where} lacks its optimizer or rng section")
    history = _read_tensors(path / "history.safetensors")
    if any(
        not isinstance(history.get(k), torch.Tensor) or history[k].ndim != 1
        for k in ("loss", "grad_norm")
    ):
        raise CheckpointError(f"{path}/history.safetensors lacks the loss or grad_norm series")
    length = history["loss"].shape[0]
    step = bounded_count(state, "step", 0, length, where)
    world = bounded_count(state, "world_size", 1, len(rng_states), where)
    if step != length or history["grad_norm"].shape != (step,) or len(rng_states) != world:
        raise CheckpointError(f"{path}: history or RNG states do not match step {step}")
    rng = _read_tensors(path / "rng.safetensors")
    shared = {k: v for k, v in rng.items() if not k.startswith("torch_")}
    per_rank: list[dict[str, torch.Tensor] | None] = [
        {k: v for k, v in rng.items() if k.startswith("torch_")}
    ]
    for r in range(1, world):
        f = path / f"rng_rank{r}.safetensors"
        per_rank.append(_read_tensors(f) if f.is_file() else None)
    opt_tensors = _read_tensors(path / "optimizer.safetensors")
    try:
        optimizer = unflatten_optimizer(opt_tensors, opt_meta)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: malformed optimizer state: {short_repr(e)}") from None
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}/config.json must hold a JSON object")
    return Checkpoint(
        path=path,
        config=config,
        state=state,
        model=_read_tensors(path / "model.safetensors"),
        ema=_read_tensors(path / "ema.safetensors"),
        optimizer=optimizer,
        rng_tensors=per_rank,
        shared_rng=shared,
        history=history,
    )
