"""The training loop: ``train(cfg, out_dir, resume=False) -> TrainSummary``, one plain function.

A step: forward under autocast -> the ranks agree the loss is finite and whether to stop (else
all skip) -> backward -> unscale -> clip the global grad norm -> a provably finite optimizer
step (else skip) -> EMA. Noise and times are drawn for the global batch from one generator
shared by every rank, which keeps the rows of its data shard, so N processes compute what one
process with the same global batch would.

Run folder (locked through .lock while a run uses it): config.json, log.txt, metrics.jsonl,
loss.png, samples/step_XXXXXXX.png, eval/step_XXXXXXX/ + eval.png (``eval.every``),
checkpoints/step_XXXXXXX/ + checkpoints/LATEST, and at the end model/ (the EMA weights as
``save_pretrained`` writes them, plus transport.json).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import zigma
from zigma.artifacts import (
    CHECKPOINTS,
    CONFIG_NAME,
    LOCK_NAME,
    checkpoint_name,
    remove_temp_files,
    write_text_atomic,
)
from zigma.config import ConfigError, to_dict
from zigma.data import derive_seed, iterate_batches
from zigma.models import count_parameters, create_model
from zigma.train import distributed
from zigma.train.checkpoint import capture_rng, save_checkpoint
from zigma.train.config import TrainConfig
from zigma.train.control import (
    StopSignals,
    TrainingInterrupted,
    TrainingPreempted,
    Whereabouts,
)
from zigma.train.ema import EMA
from zigma.train.evaluation import PeriodicEval, eval_autoencoder, plot_eval
from zigma.train.export import export_model, preview_autoencoder, preview_grid, save_preview
from zigma.train.optim import (
    StepGuard,
    TrainingDiverged,
    build_optimizer,
    get_lr,
    guarded_step,
    set_lr,
)
from zigma.train.resume import (
    DEFAULT_RESUME_HINT,
    SEED_INIT,
    SEED_NOISE,
    Progress,
    checkpoint_state,
    prepare,
    restore,
    seed_local,
    take_folder,
)
from zigma.train.tracking import RunLog, header, log_window
from zigma.transport import sample_time, training_loss

logger = logging.getLogger("zigma.train")
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSummary:
    out_dir: Path
    steps: int
    final_loss: float  # mean loss of the last log window
    nonfinite_total: int
    seconds: float
    parameters: int
    export_dir: Path | None  # None on ranks other than 0


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    *,
    model_hook: Callable[[nn.Module], Any] | None = None,
    resume_hint: str = DEFAULT_RESUME_HINT,
) -> TrainSummary:
    """Train ``cfg`` into the run folder ``out_dir``, on one process or under torchrun.

    Args:
        resume: continue from ``out_dir/checkpoints/LATEST``; without a checkpoint yet, start
            from step 0 (a folder holding only an earlier attempt's files is reused). The
            checkpoint's config wins except for ``RESUME_MUTABLE`` fields (steps, optim.lr,
            ...), whose changes are logged. With the same world size and device the result is
            bit-identical to an uninterrupted run.
        model_hook: called with the raw model before training (e.g. to register hooks).
        resume_hint: how the caller continues a run, for the error on a folder holding one.

    The run folder is locked for the run's life; SIGTERM / SIGUSR1 write a checkpoint at the
    next step boundary and raise ``TrainingPreempted`` (all ranks stop at the same step).

    Raises:
        ConfigError, RunDirError, CheckpointError, FileNotFoundError: bad input, before
            anything is written; also RunLockedError: another process holds the run folder.
        TrainingDiverged: ``max_nonfinite`` skipped steps in a row. No checkpoint is written
            then: the newest periodic one stays the one to resume from.
        TrainingPreempted: a stop signal; the checkpoint of the step reached is written.
        TrainingInterrupted: Ctrl-C; its message says where the run stopped.
        OSError: the disk is full (the checkpoint is not left half-written) or another I/O
            failure.
    """
    _, _, world = distributed.launcher_env()
    if cfg.batch_size % world:  # checked before joining the process group, so nothing hangs
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")
    out = Path(out_dir)
    where = Whereabouts(out, cfg.steps)
    env = distributed.setup(cfg.device)
    threads = torch.get_num_threads()
    try:
        with StopSignals() as stop, ExitStack() as stack:
            return _train(cfg, out, resume, env, model_hook, resume_hint, stop, where, stack)
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(where.interrupted()) from None
    finally:
        torch.set_num_threads(threads)
        distributed.cleanup(env)


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    env: distributed.DistEnv,
    model_hook: Callable[[nn.Module], Any] | None,
    hint: str,
    stop: StopSignals,
    where: Whereabouts,
    stack: ExitStack,
) -> TrainSummary:
    cfg, dataset, ckpt, notes, text = prepare(cfg, out, resume, env, hint)
    decoder = preview_autoencoder(cfg, env.device) if env.is_main else None
    evaluator = None
    if env.is_main and cfg.eval.every:  # extractors load now: a missing one fails before step 1
        evaluator = PeriodicEval(cfg, out, env.device, decoder or eval_autoencoder(cfg, env.device))
    if cfg.cpu_threads is not None:
        # on a busy machine one thread can beat two: OpenMP barriers stall when a core is taken
        torch.set_num_threads(cfg.cpu_threads)
    mcfg, o = cfg.model_config(), cfg.optim
    torch.manual_seed(derive_seed(cfg.seed, SEED_INIT))  # the same init on every rank
    model = create_model(cfg.model.preset, **dataclasses.asdict(mcfg)).to(env.device)
    model.grad_checkpointing = cfg.grad_checkpointing
    if cfg.recompute_scans:  # the config checked that the model has Mamba layers
        model.recompute_scans = True
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    opt = build_optimizer(model, o, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
    noise_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, SEED_NOISE))
    seed_local(cfg.seed, env.rank)
    prog = Progress()
    if ckpt is not None:
        prog = restore(ckpt, env, cfg.seed, model, ema, opt, scaler, noise_gen)
        where.newest = ckpt.path
    guard = StepGuard(opt)
    if model_hook is not None:
        model_hook(model)
    net: nn.Module = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        # buffers (the stored scan orders) are constants, equal on every rank: no need to sync
        # them each step (torch >= 2.13 names the switch forward_sync_buffers)
        params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, **{sync: False})
    if cfg.compile:
        net = torch.compile(net)  # state dicts still come from the raw `model`
    amp = _AMP[cfg.precision]
    # Under autocast parameters stay fp32 (the SSM's A_log, D, dt bias included); the Mamba
    # scan itself runs in fp32 whatever the autocast dtype.
    autocast = (lambda: torch.autocast(env.device.type, dtype=amp)) if amp else nullcontext
    per_rank = cfg.batch_size // env.world_size
    # explicit num_replicas even on one process: the same global batches for any world size
    batches = iterate_batches(
        dataset,
        per_rank,
        seed=cfg.seed,
        start_step=prog.step,
        num_replicas=env.world_size,
        rank=env.rank,
        # a cached dataset is sliced from memory: workers would only copy it
        num_workers=0 if cfg.data.cache else cfg.num_workers,
    )
    per_epoch = len(dataset) // env.world_size // per_rank
    n_params = count_parameters(model)

    # every rank passed its checks: only now is the folder locked and written (rank 0)
    lock = take_folder(out, ckpt and ckpt.path, resume, env)
    if lock is not None:
        stack.callback(lock.release)
    run: RunLog | None = None
    if env.is_main:
        earlier = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        for folder in (out, out / CHECKPOINTS, out / "model", out / "samples"):
            remove_temp_files(folder)  # left by a killed writer; the lock makes them orphans
        write_text_atomic(out / CONFIG_NAME, json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        run = RunLog(out, cfg, resume_step=prog.step)
        stack.callback(run.close)
        header(run, _header_lines(cfg, env, n_params, len(dataset), ckpt and ckpt.path))
        if ckpt is None and earlier:
            run.info("no checkpoint in %s yet: starting from step 0", out)
        for note in notes:
            run.info("%s", note)
    where.step = prog.step

    def save() -> None:
        tensors, states = capture_rng(env.device)
        everyone = distributed.all_gather_objects((tensors, states), env)
        where.newest = out / CHECKPOINTS / checkpoint_name(prog.step)
        if run is None:
            return
        path = save_checkpoint(
            out / CHECKPOINTS,
            prog.step,
            config=to_dict(cfg),
            model=model,
            ema_model=ema.model,
            optimizer=opt,
            state=checkpoint_state(prog, cfg, per_epoch, scaler),
            rng_tensors=[e[0] for e in everyone],
            rng_states=[e[1] for e in everyone],
            shared_rng={"noise_generator": noise_gen.get_state()},
            history={"loss": prog.losses, "grad_norm": prog.grad_norms},
            keep_last=cfg.keep_last_checkpoints,
        )
        run.info("step %d: checkpoint %s", prog.step, path.relative_to(out))
        run.plot(prog.losses)

    def samples() -> None:
        assert run is not None
        grid, nrow = preview_grid(ema.model, cfg, env.device, amp, text, dataset, decoder)
        path = save_preview(grid, out / "samples" / f"step_{prog.step:07d}.png", nrow)
        run.image(path, grid, prog.step)
        run.info("step %d: samples %s", prog.step, path.relative_to(out))

    bar = stack.enter_context(
        tqdm(
            total=cfg.steps,
            initial=prog.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (env.is_main and sys.stderr.isatty()),
        )
    )
    if not bar.disable:  # console log lines go through tqdm.write, not across the bar
        stack.enter_context(logging_redirect_tqdm())
    start = t_window = time.perf_counter()
    window_steps = 0
    # a resumed run that has nothing left to train reports its last logged window
    tail = [v for v in prog.losses[-cfg.logging.every :] if math.isfinite(v)]
    final_loss = sum(tail) / len(tail) if tail else math.nan
    if run is not None and prog.step >= cfg.steps > 0:
        run.info("step %d is at or past steps=%d: nothing to train", prog.step, cfg.steps)
    while prog.step < cfg.steps:
        step = prog.step
        batch = next(batches)
        x = batch["image"].to(env.device, non_blocking=True)
        if text is not None:  # captions -> (tokens, mask), this rank's rows
            batch["text"] = text(batch["caption"])
        # the model's conditions, found in the batch by name (class labels: "label")
        kwargs = {k: _to(v, env.device) for k, v in model.conditions_from_batch(batch).items()}
        # global-batch noise and times, this rank's rows: the layout DistributedSampler uses
        noise = torch.randn((cfg.batch_size, *x.shape[1:]), generator=noise_gen)
        t = sample_time(cfg.batch_size, cfg.transport, noise_gen)
        noise = noise[env.rank :: env.world_size].to(env.device)
        t = t[env.rank :: env.world_size].to(env.device)
        lr = get_lr(step, o.lr, o.warmup_steps, cfg.steps, o.decay, o.min_lr_ratio)
        set_lr(opt, lr)
        with autocast():
            losses = training_loss(net, x, cfg.transport, noise=noise, t=t, model_kwargs=kwargs)
        asked = stop.requested is not None
        res = guarded_step(losses.mean(), model, opt, scaler, o.grad_clip, env, guard, asked)
        prog.losses.append(res.loss)
        prog.grad_norms.append(res.grad_norm)
        prog.step = where.step = prog.step + 1
        if res.skipped is None:
            prog.nonfinite_run = 0
            if prog.step % cfg.ema.update_every == 0:
                ema.update(model, step)
                prog.ema_updates += 1
            bar.set_postfix(loss=f"{res.loss:.4f}", refresh=False)
        else:
            _skipped(run, cfg, prog, res.skipped, where)
        bar.update(1)
        window_steps += 1
        done = prog.step == cfg.steps or _out_of_time(cfg, prog.step, start, env)
        if prog.step % cfg.logging.every == 0 or done:
            rate = window_steps / max(time.perf_counter() - t_window, 1e-9)
            final_loss = log_window(
                run, prog.step, cfg.steps, cfg.logging.every, prog.losses, prog.grad_norms, lr,
                prog.nonfinite_total, rate, cfg.batch_size,
            )  # fmt: skip
            t_window, window_steps = time.perf_counter(), 0
        paused = time.perf_counter()
        if (cfg.ckpt_every and prog.step % cfg.ckpt_every == 0) or done or res.stop:
            save()
        if res.stop and not done:  # every rank saw the same flag: all stop at this step
            name = stop.requested or "a stop signal on another rank"
            if run is not None:
                run.info("step %d: %s; checkpoint written, stopping", prog.step, name)
            raise TrainingPreempted(where.preempted(name))
        if run and cfg.preview.every and (prog.step % cfg.preview.every == 0 or done):
            samples()
        if run and evaluator and (prog.step % cfg.eval.every == 0 or done):
            values = evaluator(ema.model, prog.step)
            run.metrics({"step": prog.step, **values})
            shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in values.items())
            run.info("step %d: eval (%d samples) %s", prog.step, cfg.eval.num, shown)
            plot_eval(out)
        t_window += time.perf_counter() - paused  # rates leave out checkpoints and samples
        if done and prog.step < cfg.steps:
            if run is not None:
                run.info(
                    "time limit of %g min reached at step %d", cfg.time_limit_minutes, prog.step
                )
            break
    export = None
    if run is not None:
        export = export_model(ema.model, model, cfg, out / "model")
        run.plot(prog.losses)
        minutes = (time.perf_counter() - start) / 60
        run.info("done: step %d in %.1f min; EMA weights in %s", prog.step, minutes, export)
    distributed.barrier(env)
    seconds = time.perf_counter() - start
    return TrainSummary(out, prog.step, final_loss, prog.nonfinite_total, seconds, n_params, export)


def _to(value: Any, device: torch.device) -> Any:
    """A condition value (a tensor, or a tuple of them such as text's) on ``device``."""
    if isinstance(value, tuple):
        return tuple(v.to(device, non_blocking=True) for v in value)
    return value.to(device, non_blocking=True)


def _out_of_time(cfg: TrainConfig, step: int, start: float, env: distributed.DistEnv) -> bool:
    """Whether ``time_limit_minutes`` has run out; checked every ``log_every`` steps, and
    agreed by all ranks (any rank over the limit stops all) so none waits on a collective."""
    if cfg.time_limit_minutes is None or step % cfg.logging.every:
        return False
    over = float(time.perf_counter() - start > 60 * cfg.time_limit_minutes)
    return bool(distributed.all_reduce_sum(torch.tensor([over], device=env.device), env).item() > 0)


def _skipped(
    run: RunLog | None, cfg: TrainConfig, prog: Progress, why: str, where: Whereabouts
) -> None:
    """Count a skipped step (no optimizer step, no EMA update); stop after too many in a row.

    No checkpoint is written on stopping: the weights are those of the last good step, and
    the newest periodic checkpoint stays the one to resume from (e.g. with a lower lr).
    """
    prog.nonfinite_total += 1
    prog.nonfinite_run += 1
    if run is not None:
        run.info(
            "step %d skipped: %s (%d in a row; stop at %d)",
            prog.step,
            why,
            prog.nonfinite_run,
            cfg.max_nonfinite,
        )
    if prog.nonfinite_run >= cfg.max_nonfinite:
        if run is not None:
            run.plot(prog.losses)
        kept = f"{where.checkpoint_text()} is intact" if where.newest else "no checkpoint yet"
        fix = f"optim.lr={cfg.optim.lr / 10:g}" + (
            "" if cfg.precision == "fp32" else " precision=fp32"
        )
        raise TrainingDiverged(
            f"stopped at step {prog.step}: {prog.nonfinite_run} skipped steps in a row, the "
            f"last for {why} (max_nonfinite={cfg.max_nonfinite}); {kept}; continue with a "
            f"lower learning rate: zigma train --out {shlex.quote(str(where.out))} --resume {fix}"
        )


def _header_lines(
    cfg: TrainConfig, env: distributed.DistEnv, n_params: int, n_data: int, resumed: Path | None
) -> dict[str, str]:
    m, d = cfg.model, cfg.data
    threads = f" ({torch.get_num_threads()} threads)" if env.device.type == "cpu" else ""
    lines = {
        "versions": f"zigma {zigma.__version__}, torch {torch.__version__}, python "
        f"{sys.version.split()[0]}, numpy {np.__version__}",
        "device": f"{env.device}{threads}, world size {env.world_size}, precision "
        f"{cfg.precision}, compile {cfg.compile}",
        "model": f"{m.preset} hidden {m.hidden_size} depth {m.depth} patch {m.patch_size} "
        + (f"{m.scan} x{m.num_orders}, " if m.scan is not None else "")
        + (f"layers {pattern}, " if (pattern := m.scan_pattern or m.attn_pattern) else "")
        + f"{m.num_classes} classes: {n_params / 1e6:.2f}M parameters",
        "data": f"{d.name} {f'{d.frames} frames of ' if d.frames else ''}{d.resolution}px "
        f"x{d.channels}, {n_data} {'clips' if d.frames else 'images'}"
        f"{' (held in memory: data.cache)' if d.cache else ''}; batch "
        f"{cfg.batch_size} ({cfg.batch_size // env.world_size} per rank), {cfg.steps} steps",
    }
    if cfg.vae is not None:
        v = cfg.vae
        lines["vae"] = (
            f"latents of {v.get('kind')} at {v.get('path')} (hash {v.get('hash')}), "
            f"f{v.get('downsample')}, scale {v.get('scaling_factor', 1.0):.5g}"
        )
    if cfg.text.encoder:
        lines["text"] = (
            f"{cfg.text.encoder}: {m.text_dim}-d tokens, weights {m.text_encoder_hash[:12]}, "
            f"caption dropout {m.text_dropout_prob}"
            + (f", cache {cfg.text.cache}" if cfg.text.cache else "")
        )
    if resumed is not None:
        lines["resumed"] = str(resumed)
    return lines
