"""Starting a run, fresh or from its newest checkpoint: run-folder checks, the config rule on
resume, and saving/restoring the loop's counters and every RNG stream.

Exact resume rests on three facts: batches are a function of (seed, step) (``iterate_batches``),
noise and times come from one generator saved in the checkpoint, and the only other randomness
(label dropout, in the model) uses the global torch RNG, also saved, per rank.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zigma.config import ConfigError, from_dict, to_dict
from zigma.data import build_dataset, derive_seed
from zigma.train import distributed as D
from zigma.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
)
from zigma.train.config import RESUME_MUTABLE, TrainConfig
from zigma.train.ema import EMA
from zigma.train.optim import get_lr
from zigma.train.tracking import check_trackers

logger = logging.getLogger("zigma.train")
# independent streams derived from cfg.seed
SEED_INIT, SEED_NOISE, SEED_LOCAL = 0, 1, 2


class RunDirError(ValueError):
    """The run folder cannot be used as asked (not empty for a fresh run, ...)."""


@dataclass
class Progress:
    """The loop's counters; all of it goes into the checkpoint."""

    step: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # consecutive skipped steps
    ema_updates: int = 0
    losses: list[float] = field(default_factory=list)  # per step, mean over ranks; NaN: skipped
    grad_norms: list[float] = field(default_factory=list)


def check_out_dir(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise RunDirError(
            f"run folder {out} is not empty; pass --resume to continue the run in it, or "
            "choose a new --out"
        )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def resume_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The checkpoint's config, except the ``RESUME_MUTABLE`` fields, taken from ``given``.

    Other fields of ``given`` that differ (and are set) are logged as ignored.
    """
    old, new = _flat(to_dict(saved)), _flat(to_dict(given))
    ignored = [
        f"{k}={new[k]!r} (checkpoint: {old[k]!r})"
        for k in old
        if k not in RESUME_MUTABLE and new.get(k) is not None and new[k] != old[k]
    ]
    if ignored:
        logger.warning("resuming: the checkpoint's config wins; ignoring %s", ", ".join(ignored))
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in RESUME_MUTABLE})


def seed_local(seed: int, rank: int, step: int = 0) -> None:
    """Seed this rank's global torch / numpy / random streams (torch's drives label dropout)."""
    s = derive_seed(seed, SEED_LOCAL, rank, step)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def prepare(cfg: TrainConfig, out: Path, resume: bool, env: D.DistEnv):
    """Every check that can fail on user input, before anything is written.

    Returns:
        (resolved config, dataset, checkpoint or None).
    """
    check_out_dir(out, resume)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(latest_checkpoint(out))
        try:
            saved = from_dict(TrainConfig, ckpt.config)
        except ConfigError as e:
            raise CheckpointError(f"{ckpt.path}/config.json is not a valid TrainConfig: {e}") from e
        cfg = resume_config(saved, cfg)
    check_trackers(cfg.tensorboard and env.is_main, cfg.wandb and env.is_main)
    if cfg.batch_size % env.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the world size {env.world_size}"
        )
    dataset = build_dataset(cfg.data, "train")
    if len(dataset) < cfg.batch_size:
        skipped = getattr(dataset, "skip_summary", None)  # an image folder says what it left out
        raise ConfigError(
            f"the dataset has {len(dataset)} images, fewer than one batch of {cfg.batch_size}"
            + (f" ({skipped})" if skipped else "")
        )
    return cfg.resolved(getattr(dataset, "num_classes", 0)), dataset, ckpt


def restore(
    ckpt: Checkpoint,
    env: D.DistEnv,
    seed: int,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    noise_gen: torch.Generator,
) -> Progress:
    """Load a checkpoint's weights, optimizer, scaler, counters and RNG states in place."""
    try:
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        opt.load_state_dict(ckpt.optimizer)
        noise_gen.set_state(ckpt.shared_rng["noise_generator"])
        scaler.load_state_dict(ckpt.state.get("grad_scaler") or {})
        c = ckpt.state["counters"]
        prog = Progress(
            ckpt.step,
            c["nonfinite_total"],
            c["nonfinite_consecutive"],
            c["ema_updates"],
            ckpt.history["loss"].tolist(),
            ckpt.history["grad_norm"].tolist(),
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path} does not match its config: {e}") from e
    saved_world = ckpt.state["world_size"]
    if saved_world == env.world_size and ckpt.rng_tensors[env.rank] is not None:
        restore_rng(ckpt.rng_tensors[env.rank], ckpt.state["rng"][env.rank], env.device)
    else:  # batches, noise and times still continue exactly; label-dropout draws do not
        logger.warning(
            "resuming on %d ranks a run saved on %d: per-rank RNG reseeded, so the run is "
            "not bit-identical to an uninterrupted one",
            env.world_size,
            saved_world,
        )
        seed_local(seed, env.rank, ckpt.step)
    return prog


def checkpoint_state(
    prog: Progress, cfg: TrainConfig, batches_per_epoch: int, scaler: torch.amp.GradScaler
) -> dict[str, Any]:
    """The JSON part of state.json that describes where the loop is."""
    o = cfg.optim
    return {
        # iterate_batches(start_step=next_step) rebuilds the order; epoch/offset are for people
        "data": {
            "seed": cfg.seed,
            "next_step": prog.step,
            "batches_per_epoch": batches_per_epoch,
            "epoch": prog.step // batches_per_epoch,
            "offset": prog.step % batches_per_epoch,
        },
        "counters": {
            "nonfinite_total": prog.nonfinite_total,
            "nonfinite_consecutive": prog.nonfinite_run,
            "ema_updates": prog.ema_updates,
        },
        "lr_schedule": {
            "kind": f"linear-warmup-{o.decay}",
            "position": prog.step,
            "warmup_steps": o.warmup_steps,
            "next_lr": get_lr(prog.step, o.lr, o.warmup_steps, cfg.steps, o.decay, o.min_lr_ratio),
        },
        "grad_scaler": scaler.state_dict() or None,
    }
