"""What a run reports: log.txt (+ the console via ``logging``), metrics.jsonl, loss.png and,
when asked for and installed, TensorBoard / Weights & Biases.

Only rank 0 builds a ``RunLog``; on resume metrics.jsonl is cut back to the checkpoint's step,
so the file of a resumed run equals that of an uninterrupted one (timing fields aside).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from zigma.artifacts import write_text_atomic
from zigma.config import ConfigError, to_dict
from zigma.train.config import TrainConfig
from zigma.train.plots import draw_loss_curve

logger = logging.getLogger("zigma.train")


def check_trackers(tensorboard: bool, wandb: bool) -> None:
    """Fail early (before any file is written) when an asked-for tracker is not installed."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=true needs the tensorboard package (pip install tensorboard)"
        )
    if wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb=true needs the wandb package (pip install wandb)")


class RunLog:
    """Rank 0's writer of everything in the run folder except checkpoints and samples."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, resume_step: int | None) -> None:
        self.out_dir = out_dir
        self.metrics_path = out_dir / "metrics.jsonl"
        self.handler = logging.FileHandler(out_dir / "log.txt", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("zigma").addHandler(self.handler)
        # log.txt must get the info lines even when the application configured no logging
        self._old_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        if resume_step is not None:
            self._truncate_metrics(resume_step, cfg.logging.every)
        self.tb = self.wandb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        if cfg.logging.wandb:
            import wandb as wandb_module

            self.wandb = wandb_module.init(
                project=cfg.logging.wandb_project,
                config=to_dict(cfg),
                dir=str(out_dir),
                resume="allow",
            )

    def _truncate_metrics(self, step: int, log_every: int) -> None:
        """Drop records after the checkpoint, and an off-grid record at it (the final log of
        a shorter run), so the file reads as if the run had never stopped. Lines that do not
        parse (a write torn by a kill or a full disk) are dropped with a warning; the file
        is replaced atomically, so a crash here leaves the old one."""
        if not self.metrics_path.is_file():
            return
        keep, torn = [], 0
        with self.metrics_path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                s = _record_step(line)
                if s is None:
                    torn += bool(line.strip())
                elif s < step or (s == step and s % log_every == 0):
                    keep.append(line.rstrip("\n"))
        if torn:
            logger.warning(
                "%s: skipped %d unreadable line(s), e.g. a write torn when a run was killed",
                self.metrics_path,
                torn,
            )
        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in keep))

    def info(self, msg: str, *args: Any) -> None:
        logger.info(msg, *args)

    def metrics(self, record: dict[str, Any]) -> None:
        """One log event: a line in metrics.jsonl and the trackers' scalars."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        scalars = {
            k: v
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def image(self, path: Path, grid: torch.Tensor, step: int) -> None:
        """Tell the trackers about a saved sample grid ([N, C, H, W] in [-1, 1]; videos
        [N, C, T, H, W] as their frame grid)."""
        if self.tb is not None:
            import numpy as np

            from zigma.data import make_frame_grid, make_image_grid

            picture = make_frame_grid(grid) if grid.ndim == 5 else make_image_grid(grid)
            self.tb.add_image(
                "samples",
                np.asarray(picture),
                step,
                dataformats="HW" if grid.shape[1] == 1 else "HWC",
            )
        if self.wandb is not None:
            import wandb as wandb_module

            self.wandb.log({"samples": wandb_module.Image(str(path))}, step=step)

    def plot(self, history: list[float]) -> None:
        draw_loss_curve(range(1, len(history) + 1), history, self.out_dir / "loss.png")

    def close(self) -> None:
        logging.getLogger("zigma").removeHandler(self.handler)
        self.handler.close()
        logger.setLevel(self._old_level)
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _record_step(line: str) -> int | None:
    """The step of one metrics.jsonl record, or None if the line is not one."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def log_window(
    run: RunLog | None,
    step: int,
    total: int,
    log_every: int,
    losses: list[float],
    grad_norms: list[float],
    lr: float,
    nonfinite_total: int,
    steps_per_s: float,
    batch_size: int,
) -> float:
    """Log the steps since the previous log boundary, read from the per-step history (so a
    resumed run logs exactly what an uninterrupted one does). Returns the window's mean loss."""
    lo = (step - 1) // log_every * log_every
    finite = [v for v in losses[lo:step] if math.isfinite(v)]
    norms = [v for v in grad_norms[lo:step] if math.isfinite(v)]
    loss = sum(finite) / len(finite) if finite else math.nan
    gnorm = sum(norms) / len(norms) if norms else math.nan
    if run is not None:
        samples_per_s = steps_per_s * batch_size
        run.info(
            "step %d/%d | loss %.4f | grad %.3f | lr %.2e | %.2f steps/s | %.1f samples/s | "
            "nonfinite %d",
            step, total, loss, gnorm, lr, steps_per_s, samples_per_s, nonfinite_total,
        )  # fmt: skip
        run.metrics(
            {
                "step": step,
                "loss": loss,
                "grad_norm": gnorm,
                "lr": lr,
                "nonfinite_total": nonfinite_total,
                "steps_per_s": steps_per_s,
                "samples_per_s": samples_per_s,
            }
        )
        run.plot(losses[:step])
    return loss


def header(run: RunLog, lines: dict[str, str]) -> None:
    """The run's opening lines: versions, device, world size, model, data."""
    for key, text in lines.items():
        run.info("%-8s %s", key, text)
