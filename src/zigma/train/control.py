"""Stopping a run from outside. SIGTERM and SIGUSR1 (what Kubernetes and Slurm send before
they kill a job) ask for a checkpoint at the next step boundary and an exit the scheduler can
requeue; Ctrl-C stops at once. Either way the run ends in one line: where it stopped and the
command that continues it.
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from types import FrameType

from zigma.artifacts import CONFIG_NAME

PREEMPT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


class TrainingPreempted(Exception):
    """A stop signal arrived; the run wrote a checkpoint at a step boundary and stopped.
    Relaunching the command with ``--resume`` continues it exactly."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C. ``str()`` is one line: the step reached, the newest checkpoint, how to go on."""


class StopSignals:
    """While active, SIGTERM / SIGUSR1 set ``requested`` (the signal's name) instead of
    killing the process; the previous handlers come back on exit. Outside the main thread
    (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPT_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; use the default
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        self._previous.clear()


class Whereabouts:
    """Where a run is, kept up to date by the loop, for the line printed when it stops."""

    def __init__(self, out: Path, total: int) -> None:
        self.out, self.total = out, total
        self.step: int | None = None  # None until the first step (and its checkpoint) is known
        self.newest: Path | None = None

    def how_to_continue(self) -> str:
        if self.newest is None and not (self.out / CONFIG_NAME).is_file():
            return "run the same command again"
        return f"continue with: zigma train --out {shlex.quote(str(self.out))} --resume"

    def checkpoint_text(self) -> str:
        return f"newest checkpoint {self.newest.name}" if self.newest else "no checkpoint yet"

    def interrupted(self) -> str:
        if self.step is None:
            return f"stopped before training began; {self.how_to_continue()}"
        return (
            f"stopped at step {self.step} of {self.total}; {self.checkpoint_text()}; "
            f"{self.how_to_continue()}"
        )

    def preempted(self, signal_name: str) -> str:
        return (
            f"{signal_name} at step {self.step} of {self.total}: wrote checkpoint "
            f"{self.newest.name if self.newest else '?'}; {self.how_to_continue()}"
        )
