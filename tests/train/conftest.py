"""Shared helpers for the trainer tests: a tiny config and a CLI runner in a fresh process.

Everything runs on one intra-op thread: on a shared 2-core machine two OpenMP threads can be
descheduled mid-barrier and run 100x slower, and one thread keeps runs reproducible.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zigma.train import TrainConfig, build_config

SRC = Path(__file__).resolve().parents[2] / "src"

# hidden 32, depth 2, 16 px: about 40k parameters, ~30 steps/s on one CPU thread
TINY = [
    "model.hidden_size=32",
    "model.depth=2",
    "data.resolution=16",
    "data.num_samples=256",
    "batch_size=8",
    "logging.every=5",
    "preview.every=0",
    "optim.warmup_steps=0",
    # constant LR: tests that resume with a different `steps` keep the same schedule
    "optim.decay=constant",
    "ema.decay=0.9",
]


def tiny(*overrides: str, steps: int = 20, **flags) -> TrainConfig:
    return build_config("demo", overrides=[*TINY, *overrides], steps=steps, **flags)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240):
    """``python -m zigma ARGS`` in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "zigma", *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
    )


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
