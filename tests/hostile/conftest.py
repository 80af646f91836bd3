"""Shared tools of the hostile-input suite.

Every file here is a table of bad inputs, each with the one-line error and exit code a user
must get, and a check that nothing already written was changed. ``cli`` runs ``zigma.cli.main``
in this process (fast); ``run_zigma`` runs ``python -m zigma`` in a fresh process, for what
only a real process shows (signals, exit codes, tracebacks printed by the interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from zigma.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Result:
    code: int
    out: str
    err: str


def snapshot(folder: Path) -> dict[Path, tuple[bytes, int]] | None:
    """Every file under ``folder`` with its bytes and mode (None if the folder is absent)."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {Path("."): (folder.read_bytes(), folder.stat().st_mode)}
    return {
        p.relative_to(folder): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def assert_one_line_error(res: Result, command: str, match: str = "", code: int = 2) -> str:
    """The run failed with ``code`` and exactly one stderr line ``zigma COMMAND: error: ...``
    containing ``match``; no traceback anywhere."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == code, (res.code, res.err[-2000:])
    assert "Traceback" not in res.err + res.out, res.err[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"zigma {command}: error: "), lines[0]
    assert match in lines[0], (match, lines[0])
    return lines[0]


@pytest.fixture
def cli(capsys):
    """Run ``zigma ARGS`` in this process; returns a Result."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_zigma(*args: str, timeout: float = 240, **popen) -> Result:
    """``python -m zigma ARGS`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "zigma", *map(str, args)],
        capture_output=True,
        text=True,
        env=popen.pop("env", None) or subprocess_env(),
        timeout=timeout,
        **popen,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
