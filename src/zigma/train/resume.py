"""Starting a run, fresh or from its newest checkpoint: run-folder checks, the config rule on
resume, and saving/restoring the loop's counters and every RNG stream.

Exact resume rests on three facts: batches are a function of (seed, step) (``iterate_batches``),
noise and times come from one generator saved in the checkpoint, and the only other randomness
(label dropout, in the model) uses the global torch RNG, also saved, per rank.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zigma import artifacts
from zigma.artifacts import CHECKPOINTS, CONFIG_NAME, LOCK_NAME, STEP_NAME, ArtifactError, RunLock
from zigma.config import ConfigError, from_dict, short_repr, to_dict
from zigma.data import CachedItems, build_dataset, derive_seed
from zigma.train import distributed
from zigma.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    bounded_count,
    legacy_optimizer_names,
    load_checkpoint,
    remap_optimizer_state,
    restore_rng,
)
from zigma.train.config import RESUME_MUTABLE, TrainConfig, migrate
from zigma.train.ema import EMA
from zigma.train.optim import StepGuard, get_lr
from zigma.train.text import TextFeatures
from zigma.train.tracking import check_trackers

logger = logging.getLogger("zigma.train")
# independent streams derived from cfg.seed
SEED_INIT, SEED_NOISE, SEED_LOCAL = 0, 1, 2


class RunDirError(ValueError):
    """The run folder cannot be used as asked (another run's, someone else's files, ...)."""


# What a run writes at the top of its folder. A folder holding only these (and no checkpoint
# yet) is a run that stopped early: starting it again loses nothing.
_RUN_FILES = {CONFIG_NAME, "log.txt", "metrics.jsonl", "loss.png", LOCK_NAME}
_RUN_FOLDERS = {CHECKPOINTS: STEP_NAME, "samples": re.compile(r"^step_\d{7,}\.png$")}
_TRACKER_FOLDERS = {"tensorboard", "wandb"}
DEFAULT_RESUME_HINT = "continue it with resume=True (zigma train --resume), or choose a new --out"


@dataclass
class Progress:
    """The loop's counters; all of it goes into the checkpoint."""

    step: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # consecutive skipped steps
    ema_updates: int = 0
    losses: list[float] = field(default_factory=list)  # per step, mean over ranks; NaN: skipped
    grad_norms: list[float] = field(default_factory=list)


def foreign_entries(out: Path) -> list[str]:
    """Entries of the run folder ``out`` that no zigma run writes (our temp files count as
    ours): a folder where this is non-empty is not ours to write into."""
    if not out.is_dir():
        return []
    found = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if artifacts.is_temp_name(name) or (name in _RUN_FILES and not entry.is_dir()):
            continue
        if name in _TRACKER_FOLDERS and entry.is_dir() and not entry.is_symlink():
            continue
        pattern = _RUN_FOLDERS.get(name)
        if pattern is not None and entry.is_dir() and not entry.is_symlink():
            inner = [
                p.name
                for p in entry.iterdir()
                if not (pattern.match(p.name) or artifacts.is_temp_name(p.name))
            ]
            found += [f"{name}/{n}" for n in sorted(inner)]
            continue
        found.append(name)
    return found


def check_out_dir(out: Path, resume: bool, hint: str = DEFAULT_RESUME_HINT) -> Path | None:
    """Whether a run may start in ``out``; returns the checkpoint to resume from, if any.

    Without a checkpoint a run starts from step 0, ``resume`` or not, in a folder that is
    absent, empty or holds only what an earlier attempt at a run wrote before its first
    checkpoint; so one command (with ``--resume``) can be relaunched after any failure.

    Raises:
        RunDirError: ``out`` is a file, holds someone else's files, or holds a run with a
            checkpoint while ``resume`` is False (``hint`` says how to continue it).
        CheckpointError: LATEST is damaged or names no checkpoint of this folder.
    """
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    try:
        latest = artifacts.latest_checkpoint(out)
    except ArtifactError as e:
        raise CheckpointError(str(e)) from None
    if latest is not None:
        if not resume:
            raise RunDirError(
                f"run folder {out} already holds a run (checkpoint {latest.name}); {hint}"
            )
        return latest
    foreign = foreign_entries(out)
    if foreign:
        listed = ", ".join(short_repr(n, 40) for n in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RunDirError(
            f"run folder {out} holds files that are not a zigma run's ({listed}{more}) and no "
            "checkpoint; choose a new --out"
        )
    return None


class PeerRefused(RunDirError):
    """Rank 0 refused the run folder; other ranks raise this (the CLI prints rank 0's line)."""


def take_folder(
    out: Path, ckpt: Path | None, resume: bool, env: distributed.DistEnv
) -> RunLock | None:
    """Rank 0 locks the run folder and checks that it is as ``prepare`` read it; every rank
    learns the outcome, so a refusal ends all of them instead of leaving some waiting."""
    lock, error = None, None
    if env.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out).acquire()
            now = check_out_dir(out, resume=True)
            if (now and now.name) != (ckpt and ckpt.name) or (now and not resume):
                raise RunDirError(
                    f"run folder {out} changed while this run started (another zigma train?); "
                    "run the command again"
                )
        except (ValueError, OSError) as e:
            if lock is not None:
                lock.release()
            error = e
    refusal = distributed.broadcast_object(None if error is None else str(error), env)
    if error is not None:
        raise error
    if refusal is not None:
        raise PeerRefused(refusal)
    return lock


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def resume_config(saved: TrainConfig, given: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's config, except the ``RESUME_MUTABLE`` fields, taken from ``given``.

    Returns:
        (config, notes): one note per field that changes and one listing the fields of
        ``given`` that differ but are ignored; the trainer logs them in log.txt.
    """
    old, new = _flat(to_dict(saved)), _flat(to_dict(given))
    ignored = [
        f"{k}={short_repr(new[k], 40)} (checkpoint: {short_repr(old[k], 40)})"
        for k in old
        if k not in RESUME_MUTABLE and new.get(k) is not None and new[k] != old[k]
    ]
    notes = [
        f"resuming with {k}={short_repr(new[k], 40)} (checkpoint: {short_repr(old[k], 40)})"
        for k in RESUME_MUTABLE
        if new[k] != old[k]
    ]
    if ignored:
        notes.append("resuming: the checkpoint's config wins; ignoring " + ", ".join(ignored))
    merged = to_dict(saved)
    for key in RESUME_MUTABLE:
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = new[key]
    return from_dict(TrainConfig, merged), notes


def seed_local(seed: int, rank: int, step: int = 0) -> None:
    """Seed this rank's global torch / numpy / random streams (torch's drives label dropout)."""
    s = derive_seed(seed, SEED_LOCAL, rank, step)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def prepare(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    env: distributed.DistEnv,
    hint: str = DEFAULT_RESUME_HINT,
) -> tuple[TrainConfig, Any, Checkpoint | None, list[str], TextFeatures | None]:
    """Every check that can fail on user input, before anything is written.

    Returns:
        (resolved config, dataset, checkpoint or None, notes to log about the config, the
        captions' text features for a text model).
    """
    latest = check_out_dir(out, resume, hint)
    ckpt, notes = None, []
    if latest is not None:
        ckpt = load_checkpoint(latest)
        try:
            saved = from_dict(TrainConfig, migrate(ckpt.config))
        except ConfigError as e:
            raise CheckpointError(f"{ckpt.path}/config.json is not a valid TrainConfig: {e}") from e
        cfg, notes = resume_config(saved, cfg)
    check_trackers(cfg.logging.tensorboard and env.is_main, cfg.logging.wandb and env.is_main)
    if cfg.batch_size % env.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the world size {env.world_size}"
        )
    dataset = build_dataset(cfg.data, "train")
    if cfg.data.cache:
        dataset = CachedItems(dataset, num_workers=cfg.num_workers)
    if len(dataset) < cfg.batch_size:
        skipped = getattr(dataset, "skip_summary", None)  # an image folder says what it left out
        raise ConfigError(
            f"the dataset has {len(dataset)} images, fewer than one batch of {cfg.batch_size}"
            + (f" ({skipped})" if skipped else "")
        )
    features = None
    if cfg.text.encoder:
        try:
            features = TextFeatures(cfg.text.encoder, cfg.text.cache, str(env.device))
        except ImportError as e:
            raise ConfigError(str(e)) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"text: {e}") from e
    text_hash = features.identity["weights_hash"] if features else ""
    return (
        cfg.resolved(getattr(dataset, "num_classes", 0), text_hash),
        dataset,
        ckpt,
        notes,
        features,
    )


def _check_optimizer_state(opt: torch.optim.Optimizer, step: int) -> None:
    """Every moment has its weight's shape, every step count lies in [0, step]: a checkpoint
    that passes this cannot fail inside the first optimizer step."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                t = st.get(key)
                if t is not None and (t.shape != p.shape or not t.is_floating_point()):
                    raise ValueError(
                        f"{key} of shape {tuple(t.shape)} for a weight of {tuple(p.shape)}"
                    )
            count = st.get("step")
            if count is not None and not 0 <= float(count) <= step:
                raise ValueError(f"optimizer step count {float(count)} is outside [0, {step}]")


def _progress(ckpt: Checkpoint) -> Progress:
    c, where = ckpt.state.get("counters"), f"{ckpt.path}/state.json"
    if not isinstance(c, dict):
        raise CheckpointError(f"{where} lacks its counters")
    total = bounded_count(c, "nonfinite_total", 0, ckpt.step, where)
    return Progress(
        ckpt.step,
        total,
        bounded_count(c, "nonfinite_consecutive", 0, total, where),
        bounded_count(c, "ema_updates", 0, ckpt.step, where),
        ckpt.history["loss"].tolist(),
        ckpt.history["grad_norm"].tolist(),
    )


def _restore_rng(ckpt: Checkpoint, env: distributed.DistEnv) -> None:
    try:
        restore_rng(ckpt.rng_tensors[env.rank], ckpt.state["rng"][env.rank], env.device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"{ckpt.path}: the RNG state of rank {env.rank} cannot be restored: "
            f"{short_repr(str(e), 200)}"
        ) from None


def restore(
    ckpt: Checkpoint,
    env: distributed.DistEnv,
    seed: int,
    model: nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    noise_gen: torch.Generator,
) -> Progress:
    """Load a checkpoint's weights, optimizer, scaler, counters and RNG states in place.

    Raises:
        CheckpointError: anything that does not fit the model, or RNG / optimizer states
            torch, numpy or Python refuse, or non-finite weights or moments.
    """
    refused = (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError)
    try:
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        names = ckpt.state["optimizer"].get("param_names")
        if names is None:  # version 1: states by position in the earlier parameter order
            names = legacy_optimizer_names(model)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("optimizer param_names must be a list of names")
        opt.load_state_dict(remap_optimizer_state(ckpt.optimizer, names, opt, model))
        _check_optimizer_state(opt, ckpt.step)
    except refused as e:
        raise CheckpointError(
            f"{ckpt.path} does not match its config: {short_repr(str(e), 200)}"
        ) from None
    try:
        noise_gen.set_state(ckpt.shared_rng["noise_generator"])
        saved_scaler = ckpt.state.get("grad_scaler")
        if saved_scaler and scaler.is_enabled():  # fp16 now; empty if it was not fp16 then
            scaler.load_state_dict(saved_scaler)
    except refused as e:
        raise CheckpointError(
            f"{ckpt.path}: the noise generator or loss scaler state cannot be restored: "
            f"{short_repr(str(e), 200)}"
        ) from None
    prog = _progress(ckpt)
    saved_world = ckpt.state["world_size"]
    if saved_world == env.world_size and ckpt.rng_tensors[env.rank] is not None:
        _restore_rng(ckpt, env)
    else:  # batches, noise and times still continue exactly; label-dropout draws do not
        logger.warning(
            "resuming on %d ranks a run saved on %d: per-rank RNG reseeded, so the run is "
            "not bit-identical to an uninterrupted one",
            env.world_size,
            saved_world,
        )
        seed_local(seed, env.rank, ckpt.step)
    if not StepGuard(opt).measure() or not all(
        torch.isfinite(v).all() for v in ema.state_dict().values() if v.is_floating_point()
    ):
        raise CheckpointError(f"{ckpt.path} holds non-finite weights or optimizer state")
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
