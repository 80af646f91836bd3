"""benchmarks/scan.py in its CPU smoke mode (tiny sizes, Triton interpreter): every section
runs without error, the script exits 0 and writes scan.json and scan.md with each section's
results. A subprocess, as on the GPU machine: --smoke must select the interpreter itself.
benchmarks/peers.py at tiny sizes on CPU, with our models only (the official code is not here).
benchmarks/train_throughput.py likewise: its --tiny CPU mode, the official DiT skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# scan.py's tests only (peers.py runs without triton)
requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="the benchmark's kernels need the triton package",
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "scan.py"
PEERS = REPO / "benchmarks" / "peers.py"
THROUGHPUT = REPO / "benchmarks" / "train_throughput.py"
SECTIONS = ("env", "check", "scan", "conv", "tiles", "train")


def _run(*args: str, timeout: float = 300, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.triton
@requires_triton
def test_smoke_run_writes_every_section(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "scan.json").read_text())

    assert report["ok"] and report["exit_code"] == 0
    assert report["errors"] == {} and report["failures"] == []
    for name in SECTIONS:
        assert "error" not in report[name], (name, report[name])
        assert report[name]["seconds"] >= 0
    assert report["env"]["info"]["copy_bandwidth"] > 0
    assert all(r["ok"] for r in report["check"]["rows"])
    assert {r["output"] for r in report["check"]["rows"]} >= {"y", "last_state", "dA", "dx"}
    for row in report["scan"]["rows"]:
        assert {"fwd", "fwd_train", "bwd", "fwd_bwd"} <= row.keys(), row
    assert {r["impl"] for r in report["scan"]["rows"]} == {"chunked", "triton", "triton zigzag"}
    assert {r["B"] for r in report["scan"]["rows"]} == {1, 2}
    summary = report["scan"]["summary"][0]
    assert {"floor_fwd", "floor_bwd", "fwd_over_floor", "chunked_over_triton"} <= summary.keys()
    assert all("fwd_bwd" in r for r in report["conv"]["rows"])
    assert all("ms" in r and r.get("ok", True) for r in report["tiles"]["rows"])
    assert any(note.startswith("Best at B=2") for note in report["tiles"]["notes"])
    assert any(r["config"] == "chunk=8" for r in report["tiles"]["rows"])
    assert all("ms" in r for r in report["train"]["rows"])
    assert {"zigzag_over_sweep", "chunked_over_this"} <= report["train"]["summary"][0].keys()
    markdown = (tmp_path / "scan.md").read_text()
    assert markdown.startswith("# benchmarks/scan.py") and "## Selective scan" in markdown


@pytest.mark.triton
@requires_triton
def test_unknown_section_is_rejected(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path), "--sections", "scan,bogus", timeout=120)
    assert proc.returncode == 2 and "unknown sections ['bogus']" in proc.stderr
    assert not (tmp_path / "scan.json").exists()


def test_peers_tiny_cpu_run_times_ours_without_peers(tmp_path):
    """benchmarks/peers.py with no --dit/--uvit: the peers are skipped with a note and our
    three presets (shrunk by --tiny) get a timed row each."""
    args = ["--tiny", "--device", "cpu", "--sides", "8", "--repeats", "1", "--warmup", "0"]
    proc = _run(*args, "--out", str(tmp_path), timeout=120, script=PEERS)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "peers.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"ZigMa-B/1", "DiT-B/1", "U-ViT-B/1"}
    for row in rows.values():
        assert row["status"] == "ok" and row["ms"] > 0 and row["params"] > 0, row
        assert row["side"] == 8 and row["tokens"] == 64 and "peak_mib" not in row
    assert report["ratios"] == []
    assert any("no --dit" in n for n in report["env"]["notes"])
    assert "| DiT-B/1 | 8 | 64 |" in (tmp_path / "peers.md").read_text()


def test_train_throughput_tiny_cpu_run_measures_ours_without_dit(tmp_path):
    """benchmarks/train_throughput.py --tiny on CPU, no --dit: each setting's official DiT row
    is skipped with the note, our DiT and ZigMa rows train and sample at positive images/s."""
    args = ["--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0"]
    proc = _run(*args, "--out", str(tmp_path), timeout=120, script=THROUGHPUT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "train_throughput.json").read_text())
    rows = report["rows"]
    assert {r["setting"] for r in rows} == {"XL-256", "B-256", "B-4096", "XL-4096"}
    official = [r for r in rows if r["official"]]
    ours = [r for r in rows if not r["official"]]
    assert len(official) == 4 and len(ours) == 8
    assert all(r["status"] == "skipped" and "no --dit" in r["note"] for r in official)
    assert {r["model"] for r in ours} >= {"ZigMa-B/2", "ZigMa-XL/2", "DiT-B/2", "DiT-XL/2"}
    for row in ours:
        assert row["status"] == "ok" and row["img_s"] > 0 and row["sample_img_s"] > 0, row
        assert row["params_m"] > 0 and "peak_alloc_gib" not in row and "vs_dit_train" not in row
    assert {r["tokens"] for r in rows} == {16, 64}
    assert any("no --dit" in n for n in report["env"]["notes"])
    assert {"card", "torch", "triton", "commit"} <= report["env"].keys()
    assert "| ZigMa-B/2 | 64 | 2 |" in (tmp_path / "train_throughput.md").read_text()
