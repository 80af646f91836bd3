"""Running the scan ablation's (setting, row, seed) jobs (experiments/scan_ablation.py): each
one ``zigma train`` then ``zigma eval`` as subprocesses, several at once, under a deadline,
with wall times that add up over interrupted calls and one results line per finished job.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_FORMAT = "zigma-scan-ablation-v1"
# status of a run trained and sampled whose extractor metrics are still to compute (`score`)
UNSCORED = "unscored"
_GRACE_S = 30.0  # after SIGTERM: a checkpoint of a 3M-parameter model takes well under this


# -- results file -------------------------------------------------------------------------------
def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a results JSONL file ([] if it does not exist). A line that does not
    parse (a write cut off by a kill) is skipped with a warning on stderr."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{i} is not a JSON line (cut off?); skipped", file=sys.stderr)
            continue
        if isinstance(rec, dict) and rec.get("format") == RESULT_FORMAT:
            out.append(rec)
    return out


def append_result(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk (a kill leaves at most a cut last
    line, which ``read_results`` skips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:  # a cut last line must not swallow this record
            f.seek(-1, os.SEEK_END)
            prefix = "" if f.read(1) == b"\n" else "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(prefix + json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def finished_keys(records: Sequence[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(r["key"], int(r["seed"])) for r in records if r.get("status") == "ok"}


# -- one (row, seed): train, then eval ----------------------------------------------------------
def _shown(cmd: Sequence[str]) -> str:
    """A command as a user types it (``zigma ...``)."""
    return "zigma " + shlex.join(cmd[3:])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, obj: Any) -> None:
    from zigma.artifacts import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _last_logged(run: Path) -> tuple[int | None, float | None]:
    """(step, loss) of the run's last logged metrics line."""
    path = run / "metrics.jsonl"
    step = loss = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in row:
                step, loss = row.get("step"), row["loss"]
    return step, loss


@dataclass
class Job:
    """One (setting, row, seed): ``zigma train --resume`` into ``folder/train`` (marked done
    by ``train_done.json``), then ``zigma eval`` into ``folder/eval``. Each phase's wall
    time adds up in ``wall.json`` across interrupted calls."""

    setting: str
    row: str
    seed: int
    key: str
    protocol: str
    folder: Path
    train_cmd: list[str]
    eval_cmd: list[str]
    env: dict[str, str]
    state: str = "waiting"  # waiting, train, eval, ok, failed, stopped
    proc: subprocess.Popen | None = None
    started: float = 0.0
    returncode: int | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.row}/seed {self.seed}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = (self.folder / "train_done.json").is_file()
        self._launch("eval" if done else "train")

    def _launch(self, phase: str) -> None:
        cmd = self.train_cmd if phase == "train" else self.eval_cmd
        self._log = open(self.folder / f"{phase}.log", "a")  # noqa: SIM115 (lives with proc)
        self._log.write(f"\n$ {_shown(cmd)}\n")
        self._log.flush()
        self.state, self.started = phase, time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)

    def _add_wall(self, phase: str) -> None:
        wall = _read_json(self.folder / "wall.json")
        wall[f"{phase}_s"] = wall.get(f"{phase}_s", 0.0) + time.monotonic() - self.started
        wall[f"{phase}_calls"] = wall.get(f"{phase}_calls", 0) + 1
        _write_json(self.folder / "wall.json", wall)

    def poll(self, may_continue: bool = True) -> bool:
        """Advance (from train to eval only if ``may_continue``); True once the job is over
        (ok, failed or stopped)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        phase, code = self.state, self.proc.returncode
        self._log.close()
        self._add_wall(phase)
        self.proc, self.returncode = None, code
        if code == 0 and phase == "train":
            step, loss = _last_logged(self.folder / "train")
            _write_json(self.folder / "train_done.json", {"step": step, "loss": loss})
            if may_continue:
                self._launch("eval")
                return False
            self.state = "stopped"
            return True
        if code == 0:
            self.state = "ok"
        elif code == 75 or code < 0:  # SIGTERM'd at the deadline (or killed): resumable
            self.state = "stopped"
        else:
            self.state = "failed"
        return True

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def record(self, common: dict[str, Any]) -> dict[str, Any]:
        """The results line of a job that is over."""
        wall = _read_json(self.folder / "wall.json")
        done = _read_json(self.folder / "train_done.json")
        rec: dict[str, Any] = {
            **common,
            "format": RESULT_FORMAT,
            "status": "ok" if self.state == "ok" else "failed",
            "setting": self.setting,
            "row": self.row,
            "seed": self.seed,
            "key": self.key,
            "protocol": self.protocol,
            "train_s": round(wall.get("train_s", 0.0), 1),
            "eval_s": round(wall.get("eval_s", 0.0), 1),
            "calls": max(wall.get("train_calls", 0), wall.get("eval_calls", 0)),
            "steps": done.get("step"),
            "final_loss": done.get("loss"),
            "commands": [_shown(self.train_cmd), _shown(self.eval_cmd)],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        rec["wall_s"] = round(rec["train_s"] + rec["eval_s"], 1)
        if self.state != "ok":
            log = self.folder / f"{'eval' if done else 'train'}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            return {**rec, "exit_code": self.returncode, "log_tail": tail}
        results = _read_json(self.folder / "eval" / "results.json")
        metrics = {
            r["metric"]: {"value": r["value"], "std": r.get("std")}
            for r in results.get("results", [])
        }
        cond = results.get("conditioning")
        if cond:
            metrics["cond-acc"] = {"value": cond["value"], "std": None}
        return {**rec, "metrics": metrics, "records": results.get("results", [])}


def run_jobs(
    jobs: list[Job],
    parallel: int,
    deadline: Callable[[], float],
    expected_s: Callable[[Job], float],
    on_over: Callable[[Job], None],
    poll_s: float = 1.0,
) -> list[Job]:
    """Run ``jobs`` in order, ``parallel`` at a time, until all are over or the deadline
    (``deadline()``, in ``time.monotonic()`` seconds; it may move earlier, e.g. on SIGTERM).

    A job starts only if ``expected_s(job)`` fits before the deadline, and goes from train to
    eval only before it. At the deadline the running jobs get SIGTERM (``zigma train``
    checkpoints and exits 75), then SIGKILL after a grace period. ``on_over(job)`` is called
    as each one ends. Returns the jobs never started.
    """
    waiting, running = list(jobs), []
    term_at: float | None = None
    while True:
        now = time.monotonic()
        while term_at is None and len(running) < parallel:
            fits = [j for j in waiting if now + expected_s(j) <= deadline()]
            if not fits:
                break
            waiting.remove(fits[0])
            print(f"start {fits[0].name}", flush=True)
            fits[0].start()
            running.append(fits[0])
        if not running:
            return waiting
        time.sleep(poll_s)
        now = time.monotonic()
        for job in list(running):
            if job.poll(may_continue=now < deadline()):
                running.remove(job)
                print(f"{job.state}: {job.name}", flush=True)
                on_over(job)
        if running and term_at is None and now >= deadline():
            print(f"deadline: stopping {len(running)} run(s)", flush=True)
            for job in running:
                job.signal(signal.SIGTERM)
            term_at = now
        elif running and term_at is not None and now > term_at + _GRACE_S:
            for job in running:
                job.signal(signal.SIGKILL)
