"""zigma prepare under torchrun (2 processes, gloo on CPU), through the real launcher and CLI:
the folder it writes is byte for byte the one a single process writes, the summary is printed
once with the counts of all ranks, and a 2-rank run stopped part way finishes to the same bytes
whether it is run again with 2 ranks or with 1.

Every process encodes on one intra-op thread (OMP_NUM_THREADS=1 in the workers, the test
session's torch.set_num_threads(1) here), so the bytes may be compared exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zigma.artifacts import RunLock
from zigma.autoencoder import KLAutoencoder, KLConfig, save_autoencoder
from zigma.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
# 40 shapes at 16 px -> 4x4x4 latents in 5 shards of 8
ARGS = ["prepare", "--data", "shapes", "--size", "16", "--shard-size", "8", "--batch-size", "4",
        "--device", "cpu", "data.num_samples=40"]  # fmt: skip
SHARDS = [f"shard_{k:06d}.safetensors" for k in range(5)]


def _torchrun(vae: Path, out: Path, *extra: str) -> str:
    """``torchrun --standalone --nproc_per_node 2 -m zigma prepare ...``; its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd = [*launcher, "2", "-m", "zigma", *ARGS, "--vae", str(vae), "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _one_process(vae: Path, out: Path, capsys) -> str:
    assert "WORLD_SIZE" not in os.environ and torch.get_num_threads() == 1
    capsys.readouterr()
    assert main([*ARGS, "--vae", str(vae), "--out", str(out)]) == 0
    return capsys.readouterr().out


def _snapshot(folder: Path) -> dict[str, bytes]:
    # .lock is the folder lock's file: it names the pid of the last run that held it
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "vae"
    torch.manual_seed(0)
    save_autoencoder(KLAutoencoder(KLConfig(channels=(8, 16, 16))), folder)
    return folder


def test_two_ranks_write_the_folder_of_one(vae, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(vae, one, capsys)
    stdout = _torchrun(vae, two)
    lines = [line for line in stdout.splitlines() if line.startswith("zigma prepare:")]
    assert len(lines) == 1, stdout  # rank 0 alone reports, with both ranks' counts
    assert "40 latents of 4x4x4 in 5 shards (5 written, 0 already there)" in lines[0]
    assert f"index {two / 'index.json'}" in lines[0]
    assert sorted(_snapshot(two)) == sorted(["index.json", "prepare.json", *SHARDS])
    # index.json holds the plan, the shards' counts and sha256, and the version: nothing of
    # the run (no timing, no world size), so the whole folder matches byte for byte
    assert _snapshot(two) == _snapshot(one)
    index = json.loads((two / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [8] * 5


def test_a_stopped_two_rank_run_finishes_with_two_or_one(vae, tmp_path, capsys):
    whole = tmp_path / "whole"
    _one_process(vae, whole, capsys)
    part = tmp_path / "part"
    stdout = _torchrun(vae, part, "--max-shards", "1")  # stopped after one shard per rank
    assert "(2 written, 0 already there)" in stdout and "not finished: run it again" in stdout
    assert sorted(_snapshot(part)) == ["prepare.json", *SHARDS[:2]]  # rank 1 wrote one too
    (part / f".{SHARDS[2]}.k1ll3d.tmp").write_bytes(b"half a shard")  # killed mid-write
    kept = {n: (part / n).stat().st_mtime_ns for n in SHARDS[:2]}
    part1 = tmp_path / "part1"
    shutil.copytree(part, part1)

    stdout = _torchrun(vae, part)
    assert "(3 written, 2 already there)" in stdout and "index.json" in stdout
    assert _snapshot(part) == _snapshot(whole)
    assert {n: (part / n).stat().st_mtime_ns for n in SHARDS[:2]} == kept  # not rewritten

    stdout = _one_process(vae, part1, capsys)
    assert "(3 written, 2 already there)" in stdout
    assert _snapshot(part1) == _snapshot(whole)


def _library_worker(rank: int, vae: str, out: str, locked: str, init: str) -> None:
    import torch.distributed as dist

    from zigma.autoencoder import load_autoencoder
    from zigma.autoencoder.prepare import PrepareConfig, prepare_latents
    from zigma.data import DataConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        data = DataConfig(name="shapes", resolution=16, num_samples=40)
        cfg = PrepareConfig(data=data, shard_size=8, batch_size=4)
        ae = load_autoencoder(vae)
        # rank 0 cannot take the lock: both ranks stop with a message, neither hangs
        want = "in use by" if rank == 0 else "refused by rank 0"
        with pytest.raises(ValueError, match=want):
            prepare_latents(ae, cfg, locked)
        s = prepare_latents(ae, cfg, out)
        assert (s.written, s.kept, s.finished) == (5, 0, True)
        assert dist.is_initialized()  # the caller's group is the caller's to end
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and zigma: ~10 s on 2 busy cores
def test_a_callers_process_group_is_used_and_left_alone(vae, tmp_path, capsys):
    """prepare_latents in a group set up without torchrun's variables (mp.spawn) shares the
    shards over it (rather than each process writing all of them), and rank 0's refusal of a
    locked folder reaches the other rank."""
    import torch.multiprocessing as mp

    one, two, locked = tmp_path / "one", tmp_path / "two", tmp_path / "locked"
    _one_process(vae, one, capsys)
    locked.mkdir()
    with RunLock(locked):  # another prepare is writing there
        args = (str(vae), str(two), str(locked), f"file://{tmp_path / 'pg'}")
        mp.spawn(_library_worker, args=args, nprocs=2)
    assert _snapshot(two) == _snapshot(one)
    assert [p.name for p in locked.iterdir()] == [".lock"]  # nothing written there
