"""torchrun DDP on CPU (gloo, 2 processes): the run completes, only rank 0 writes, and its
weights match a 1-process run with the same global batch.

What "the same" means: iterate_batches shards each global batch over the ranks (rank r gets
rows r, r+2, ...), the trainer draws noise and times for the whole global batch from one shared
generator and keeps the same rows, and DDP averages the per-rank mean gradients, which equals
the gradient of the global mean. So the runs agree up to float summation order (~1e-7), as
long as label dropout is off: its draws come from each rank's own RNG stream.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from zigma.train import train

from .conftest import SRC, TINY, subprocess_env, tiny

DDP = [*TINY, "model.class_dropout_prob=0", "data.num_samples=64", "optim.lr=2e-3"]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=subprocess_env(), timeout=timeout
    )


def test_two_processes_match_one(tmp_path):
    out2, out1 = tmp_path / "ddp", tmp_path / "single"
    proc = torchrun(
        "-m",
        "zigma",
        "train",
        "--preset",
        "demo",
        "--out",
        str(out2),
        *DDP,
        "--steps",
        "12",
        "--ckpt-every",
        "6",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 12 steps") == 1  # only rank 0 reports
    for name in (
        "config.json",
        "log.txt",
        "loss.png",
        "metrics.jsonl",
        "model/config.json",
        "model/model.safetensors",
        "model/transport.json",
        "checkpoints/LATEST",
    ):
        assert (out2 / name).is_file(), name
    assert "world size 2" in (out2 / "log.txt").read_text()
    ckpt = out2 / "checkpoints" / "step_0000012"
    assert (ckpt / "rng_rank1.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    r0, r1 = load_file(ckpt / "rng.safetensors"), load_file(ckpt / "rng_rank1.safetensors")
    assert not torch.equal(r0["torch_cpu"], r1["torch_cpu"])  # per-rank streams

    train(tiny(*DDP[len(TINY) :], steps=12, ckpt_every=6), out1)
    single = out1 / "checkpoints" / "step_0000012"
    for f in ("model", "ema"):
        a, b = load_file(ckpt / f"{f}.safetensors"), load_file(single / f"{f}.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{f}:{k}")
    h2, h1 = load_file(ckpt / "history.safetensors"), load_file(single / "history.safetensors")
    torch.testing.assert_close(h2["loss"], h1["loss"], rtol=1e-5, atol=1e-6)


def test_a_nan_on_one_rank_is_skipped_by_all(tmp_path):
    script = tmp_path / "nan_on_rank1.py"
    script.write_text(
        textwrap.dedent(f"""
        import math, os, sys
        sys.path.insert(0, {str(SRC)!r})
        from zigma.train import build_config, train

        calls = [0]
        def hook(model):
            def inject(module, args, output):
                if not module.training:
                    return None
                calls[0] += 1
                bad = os.environ["RANK"] == "1" and calls[0] == 3
                return output * math.nan if bad else None
            model.register_forward_hook(inject)

        cfg = build_config("demo", overrides={DDP!r}, steps=6)
        summary = train(cfg, {str(tmp_path / "run")!r}, model_hook=hook)
        # one file per rank: two processes printing to one pipe can interleave their lines
        with open({str(tmp_path)!r} + "/rank" + os.environ["RANK"] + ".txt", "w") as f:
            f.write(f"steps {{summary.steps}} bad {{summary.nonfinite_total}}")
    """)
    )
    proc = torchrun(str(script))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "steps 6 bad 1", proc.stdout[-2000:]
    hist = load_file(tmp_path / "run" / "checkpoints" / "step_0000006" / "history.safetensors")
    assert math.isnan(hist["loss"][2]) and torch.isfinite(hist["loss"][3:]).all()


def test_batch_not_divisible_by_world_size_fails_fast(tmp_path):
    proc = torchrun(
        "-m",
        "zigma",
        "train",
        "--preset",
        "demo",
        "--out",
        str(tmp_path / "r"),
        *TINY,
        "batch_size=7",
        "--steps",
        "2",
        timeout=120,
    )
    assert proc.returncode != 0
    assert "batch_size 7 is not divisible by the world size 2" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    script = tmp_path / "usr1_on_rank1.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from zigma.train import TrainingPreempted, build_config, train

        calls = [0]
        def hook(model):
            def count(module, args):
                if module.training:
                    calls[0] += 1
                    if os.environ["RANK"] == "1" and calls[0] == 4:  # Slurm's warning signal
                        os.kill(os.getpid(), signal.SIGUSR1)
            model.register_forward_pre_hook(count)

        cfg = build_config("demo", overrides={DDP!r}, steps=12)
        try:
            train(cfg, {str(tmp_path / "run")!r}, model_hook=hook)
            text = "finished"
        except TrainingPreempted as e:
            text = str(e)
        with open({str(tmp_path)!r} + "/rank" + os.environ["RANK"] + ".txt", "w") as f:
            f.write(text)
    """)
    )
    proc = torchrun(str(script))
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    # sent in step 4's forward, the flag rides on that step's all-reduce: both ranks finish
    # step 4, checkpoint it and stop
    assert texts[0].startswith("a stop signal on another rank at step 4 of 12"), texts
    assert texts[1].startswith("SIGUSR1 at step 4 of 12"), texts
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "LATEST").read_text() == "step_0000004\n"
    assert json.loads((ckpt / "step_0000004" / "state.json").read_text())["world_size"] == 2


def test_a_locked_run_folder_stops_every_rank_with_one_line(tmp_path):
    from zigma.artifacts import RunLock

    out = tmp_path / "r"
    out.mkdir()
    with RunLock(out):
        proc = torchrun(
            "-m", "zigma", "train", "--preset", "demo", "--out", str(out), *TINY,
            "--steps", "2", timeout=120,
        )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zigma train:")]
    assert len(errors) == 1 and "is in use by pid" in errors[0], proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
