"""Hostile input to ``zigma train``: out-of-range hyperparameters, run folders left by killed
or concurrent runs, damaged checkpoints and logs, full disks and signals.

Each table row is one bad input with the one-line error (or exit code) a user must get; rows
that leave files check that nothing already written changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import typing

import pytest
import torch

from zigma.train import EMAConfig, LoggingConfig, OptimConfig, PreviewConfig, TrainConfig
from zigma.transport import TransportConfig

from .conftest import Result, assert_one_line_error, run_zigma, snapshot, subprocess_env

# Every numeric field of the run configs: values just outside its range, and the ends of the
# range that must be accepted. A field missing here fails test_the_table_covers_every_field.
RANGES = {
    "steps": (["-1", "10000000001"], ["0", "10000000000"]),
    "batch_size": (["0", "1000001"], ["1"]),
    "seed": (["-1", str(2**63), "12345678901234567890123"], ["0", str(2**63 - 1)]),
    "num_workers": (["-1", "1025"], ["0"]),
    "cpu_threads": (["0", "4097"], ["1", "null"]),
    "logging.every": (["0", "10000000001"], ["1"]),
    "ckpt_every": (["-1", "10000000001"], ["0"]),
    "preview.every": (["-1", "10000000001"], ["0"]),
    "preview.num_samples": (["0", "4097"], ["1", "4096"]),
    "preview.steps": (["0", "10001"], ["1", "10000"]),
    "preview.guidance_scale": (["-0.5", "100.5", "NaN", "Infinity", "1e308"], ["0", "100"]),
    "keep_last_checkpoints": (["0", "1000001"], ["1"]),
    "time_limit_minutes": (["0", "-1", "1e8", "Infinity"], ["1e-9", "null"]),
    "max_nonfinite": (["0", "10000000001"], ["1"]),
    "optim.lr": (["0", "-1e-3", "1.5", "1e38", "Infinity", "NaN"], ["1e-12", "1"]),
    "optim.weight_decay": (["-0.1", "1.5", "1e38", "Infinity"], ["0", "1"]),
    "optim.betas": (["[0.9, 1.0]", "[-0.1, 0.9]", "[NaN, 0.9]"], ["[0, 0.999999]"]),
    "optim.eps": (["0", "1e-31", "2", "NaN"], ["1e-30", "1"]),
    "optim.warmup_steps": (["-1", "10000000001"], ["0"]),
    "optim.grad_clip": (["-1", "1e13", "NaN"], ["0", "null", "1e12"]),
    "optim.min_lr_ratio": (["-0.1", "1.1"], ["0", "1"]),
    "ema.decay": (["-0.1", "1.0", "NaN"], ["0", "0.999999"]),
    "ema.update_every": (["0", "1000001"], ["1"]),
    "transport.train_eps": (["-0.1", "0.5", "NaN"], ["0", "0.49"]),
    "transport.sample_eps": (["-0.1", "0.5", "Infinity"], ["0", "0.49"]),
    "transport.time_mean": (["-10.5", "10.5", "NaN", "Infinity", "1e300"], ["-10", "10"]),
    "transport.time_std": (["0", "-1", "10.5", "NaN", "1e300"], ["1e-6", "10"]),
}


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) | {hints[f.name]}
        if args & {int, float, tuple[float, float]} and hints[f.name] is not bool:
            yield prefix + f.name


def test_the_table_covers_every_field():
    fields = {
        *_numeric_fields(TrainConfig),
        *_numeric_fields(OptimConfig, "optim."),
        *_numeric_fields(EMAConfig, "ema."),
        *_numeric_fields(TransportConfig, "transport."),
        *_numeric_fields(PreviewConfig, "preview."),
        *_numeric_fields(LoggingConfig, "logging."),
    }
    assert fields == set(RANGES)


BAD = [(k, v) for k, (bad, _) in RANGES.items() for v in bad]
GOOD = [(k, v) for k, (_, good) in RANGES.items() for v in good]


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_out_of_range_values_are_refused_before_anything_is_written(cli, tmp_path, key, value):
    out = tmp_path / "run"
    res = cli("train", "--preset", "demo", "--out", out, f"{key}={value}")
    line = assert_one_line_error(res, "train", key.split(".")[-1])
    assert len(line) < 300
    assert not out.exists()


@pytest.mark.parametrize("key, value", GOOD, ids=[f"{k}={v}" for k, v in GOOD])
def test_the_ends_of_each_range_are_accepted(key, value):
    from zigma.train import build_config

    cfg = build_config("demo", overrides=[f"{key}={value}"])
    assert cfg is not None


# ---------------------------------------------------------------- run folders

TINY = [
    "model.hidden_size=32",
    "model.depth=2",
    "data.num_samples=256",
    "batch_size=8",
    "logging.every=5",
    "preview.every=0",
    "optim.warmup_steps=0",
    "optim.decay=constant",
    "ema.decay=0.9",
]


def tiny(*overrides: str, steps: int = 4):
    from zigma.train import build_config

    return build_config("demo", overrides=[*TINY, *overrides], steps=steps)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    from zigma.train import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny("ckpt_every=2"), out)
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    return out


def _early_attempt(out):
    """What a run killed (or failed) before its first checkpoint leaves behind."""
    (out / "checkpoints" / ".tmp-step_0000010.4242").mkdir(parents=True)
    (out / "checkpoints" / ".tmp-step_0000010.4242" / "model.safetensors").write_bytes(b"\0" * 9)
    (out / "samples").mkdir()
    (out / "samples" / "step_0000005.png").write_bytes(b"png")
    (out / "config.json").write_text("{}")
    (out / "log.txt").write_text("12:00:00 versions ...\n")
    (out / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "lo')
    (out / "loss.png").write_bytes(b"png")
    (out / ".lock").write_text("pid 4242 on gone\n")
    (out / ".config.json.x1y2z3.tmp").write_text("{")


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["plain", "resume"])
def test_a_run_stopped_before_its_first_checkpoint_restarts_in_place(cli, tmp_path, resume):
    out = tmp_path / "run"
    _early_attempt(out)
    res = cli("train", "--preset", "demo", "--out", out, *TINY, "--steps", "3", *resume)
    assert res.code == 0, res.err
    assert (out / "checkpoints" / "LATEST").read_text() == "step_0000003\n"
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []  # the orphaned temp files are gone
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [3]
    log = (out / "log.txt").read_text()
    assert log.startswith("12:00:00 versions") and "no checkpoint in" in log  # appended


FOREIGN = {
    "a-file": lambda out: (out / "thesis.tex").write_text("mine"),
    "a-folder": lambda out: (out / "data").mkdir(),
    "in-checkpoints": lambda out: (
        (out / "checkpoints").mkdir() or (out / "checkpoints" / "notes.txt").write_text("x")
    ),
    "a-model-without-checkpoint": lambda out: (out / "model").mkdir(),
    "a-symlinked-samples": lambda out: (out / "samples").symlink_to(out.parent),
}


@pytest.mark.parametrize("make", FOREIGN.values(), ids=FOREIGN.keys())
@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["plain", "resume"])
def test_someone_elses_files_are_never_written_over(cli, tmp_path, make, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    make(out)
    before = snapshot(out)
    res = cli("train", "--preset", "demo", "--out", out, *TINY, *resume)
    assert_one_line_error(res, "train", "not a zigma run's")
    assert snapshot(out) == before


def test_a_finished_run_is_not_restarted_by_the_plain_command(cli, run_copy):
    before = snapshot(run_copy)
    res = cli("train", "--preset", "demo", "--out", run_copy, *TINY)
    assert_one_line_error(res, "train", "already holds a run (checkpoint step_0000004)")
    assert "--resume" in res.err and snapshot(run_copy) == before


def test_the_caller_names_how_to_continue(run_copy):
    from zigma.train import RunDirError, train

    with pytest.raises(RunDirError, match="run `zigma demo --out NEW`"):
        train(tiny(), run_copy, resume_hint="run `zigma demo --out NEW`")


def test_a_locked_folder_is_refused_at_once(cli, run_copy):
    from zigma.artifacts import RunLock

    with RunLock(run_copy):
        before = snapshot(run_copy)
        res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
        assert_one_line_error(res, "train", f"is in use by pid {os.getpid()}")
        assert snapshot(run_copy) == before
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
    assert res.code == 0, res.err


def test_resume_without_a_preset_takes_an_early_attempts_config(cli, tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--preset", "demo", "--out", out, *TINY, "ckpt_every=0", "--steps", "2")
    assert res.code == 0, res.err

    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "model")  # as if killed before its only checkpoint
    res = cli("train", "--out", out, "--resume")
    assert res.code == 0, res.err
    assert (out / "checkpoints" / "LATEST").read_text() == "step_0000002\n"


def test_exported_files_follow_the_umask_and_orphans_go(run_copy):
    from zigma.train import train

    (run_copy / "checkpoints" / ".LATEST.abc123.tmp").write_text("step_0000002\n")
    (run_copy / "model" / ".config.json.k_9x.tmp").write_text("{")
    old = os.umask(0o022)
    try:
        train(tiny(steps=6), run_copy, resume=True)
    finally:
        os.umask(old)
    for name in ("config.json", "model/config.json", "model/transport.json", "checkpoints/LATEST"):
        assert (run_copy / name).stat().st_mode & 0o777 == 0o644, name
    assert not list(run_copy.rglob(".*.tmp"))


# ---------------------------------------------------------------- damaged checkpoints and logs


def _edit_state(**changes):
    def edit(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        for key, value in changes.items():
            node, *path = key.split("/")
            target = state
            for part in [node, *path][:-1]:
                target = target[int(part)] if isinstance(target, list) else target[part]
            last = [node, *path][-1]
            if isinstance(target, list):
                target[int(last)] = value
            else:
                target[last] = value
        (ckpt / "state.json").write_text(json.dumps(state))

    return edit


def _edit_tensors(file, **changes):
    def edit(ckpt):
        from safetensors.torch import load_file, save_file

        tensors = load_file(ckpt / file)
        for key, fn in changes.items():
            name = next(k for k in tensors if key in k)
            tensors[name] = fn(tensors[name])
        save_file(tensors, ckpt / file)

    return edit


def _nan(t):
    return t.clone().fill_(float("nan"))


DAMAGE = {
    "world-size-1e9": (_edit_state(world_size=10**9), "world_size must be an integer in [1, 1]"),
    "world-size-0": (_edit_state(world_size=0), "world_size"),
    "step-beyond-history": (_edit_state(step=10**15), "step must be an integer in [0, 4]"),
    "counters-beyond-step": (
        _edit_state(**{"counters/ema_updates": 10**12}),
        "ema_updates must be an integer in [0, 4]",
    ),
    "counters-missing": (_edit_state(counters=None), "lacks its counters"),
    "rng-numpy-garbage": (
        _edit_state(**{"rng/0/numpy": ["MT19937", [1, 2], 0, 0, 0.0]}),
        "RNG state of rank 0 cannot be restored",
    ),
    "rng-python-garbage": (
        _edit_state(**{"rng/0/python": [3, [1, 2], None]}),
        "RNG state of rank 0 cannot be restored",
    ),
    "rng-not-a-mapping": (
        _edit_state(**{"rng/0": 7}),
        "RNG state of rank 0 cannot be restored",
    ),
    "rng-torch-garbage": (
        _edit_tensors("rng.safetensors", torch_cpu=lambda t: t[:10].clone()),
        "RNG state of rank 0 cannot be restored",
    ),
    "noise-generator-garbage": (
        _edit_tensors("rng.safetensors", noise_generator=lambda t: t[:3].clone()),
        "the noise generator or loss scaler state cannot be restored",
    ),
    "optimizer-moment-shape": (
        _edit_tensors("optimizer.safetensors", exp_avg=lambda t: t.flatten()[:1].clone()),
        "exp_avg of shape (1,)",
    ),
    "optimizer-moment-nan": (
        _edit_tensors("optimizer.safetensors", exp_avg_sq=_nan),
        "non-finite weights or optimizer state",
    ),
    "optimizer-step-count": (
        _edit_tensors("optimizer.safetensors", step=lambda t: t + 1e9),
        "optimizer step count",
    ),
    "optimizer-meta-garbage": (
        _edit_state(optimizer={"param_groups": 3, "scalars": []}),
        "malformed optimizer state",
    ),
    "weights-nan": (
        _edit_tensors("model.safetensors", final_layer=_nan),
        "non-finite weights or optimizer state",
    ),
    "ema-nan": (_edit_tensors("ema.safetensors", final_layer=_nan), "non-finite weights"),
    "state-huge": (
        lambda c: (c / "state.json").write_bytes(b" " * (17 << 20)),
        "more than the 16777216",
    ),
}


@pytest.mark.parametrize("damage, match", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_checkpoint_is_refused_in_one_line(cli, run_copy, damage, match):
    damage(run_copy / "checkpoints" / "step_0000004")
    before = snapshot(run_copy)
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
    assert_one_line_error(res, "train", match)
    assert snapshot(run_copy) == before


def test_a_torn_metrics_line_is_skipped_with_a_warning(cli, run_copy):
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": 0.\xff\n[1, 2]\n{"step": 6, "lo')
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
    assert res.code == 0, res.err
    # the off-grid final record at step 4 goes too: the resumed run logs 5 and 6 instead
    assert [json.loads(line)["step"] for line in metrics.open()] == [5, 6]
    assert "metrics.jsonl: skipped 3 unreadable line(s)" in (run_copy / "log.txt").read_text()


def test_a_symlinked_checkpoint_folder_is_never_pruned_or_followed(cli, run_copy, tmp_path):
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    (keep / "precious.bin").write_bytes(b"1")
    (run_copy / "checkpoints" / "step_0000001").symlink_to(keep)
    (run_copy / "checkpoints" / "step_0000006").symlink_to(keep)  # where the next one goes
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6", "keep_last_checkpoints=1")
    assert res.code == 0, res.err
    assert (keep / "precious.bin").read_bytes() == b"1" and len(list(keep.iterdir())) == 1
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert names == ["LATEST", "step_0000001", "step_0000006"]
    assert (run_copy / "checkpoints" / "step_0000006").is_dir()
    assert not (run_copy / "checkpoints" / "step_0000006").is_symlink()


# ---------------------------------------------------------------- full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs: room for a run's logs, not for its first checkpoint (about 0.7 MiB)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_checkpoint_that_does_not_fit_fails_in_one_line_before_writing(cli, small_disk):
    out = small_disk / "run"
    res = cli("train", "--preset", "demo", "--out", out, *TINY, "--steps", "2")
    line = assert_one_line_error(res, "train", "no space for checkpoint step_0000002", code=1)
    assert "MiB free on that disk" in line and str(out / "checkpoints") in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == []  # nothing half-written


def test_a_disk_that_fills_during_the_write_leaves_no_partial_checkpoint(
    cli, run_copy, monkeypatch
):
    import errno

    from zigma.train import checkpoint

    real = checkpoint.save_file
    written = []

    def fills_up(tensors, path, *args, **kwargs):
        if written:  # the second file finds the disk full halfway through
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    before = snapshot(run_copy / "checkpoints")
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
    assert_one_line_error(res, "train", "no space for checkpoint step_0000006", code=1)
    assert snapshot(run_copy / "checkpoints") == before  # LATEST and step 4 untouched
    monkeypatch.undo()
    res = cli("train", "--out", run_copy, "--resume", "--steps", "6")
    assert res.code == 0, res.err


# ---------------------------------------------------------------- non-finite updates


class GradientScaler:
    """Multiplies every gradient of chosen training steps (1-based) by a factor, and keeps a
    copy of one weight before each step, to see which steps changed the model."""

    def __init__(self, factors):
        self.factors, self.calls, self.weights = factors, 0, []

    def __call__(self, model):
        model.register_forward_pre_hook(self.before_step)
        for p in model.parameters():
            p.register_hook(lambda g: g * self.factors.get(self.calls, 1.0))

    def before_step(self, module, args):
        if module.training:
            self.calls += 1
            self.weights.append(module.final_layer.linear.weight.detach().clone())


def test_a_step_that_would_make_weights_non_finite_is_skipped_and_never_exported(tmp_path):
    from safetensors.torch import load_file

    from zigma.train import load_checkpoint, train

    # legal settings under which AdamW's update m / (sqrt(v) + eps) can overflow: b2 = 0
    # forgets v at once, eps is tiny, nothing clips; a huge gradient, then a zero one
    risky = ("optim.betas=[0.9, 0.0]", "optim.eps=1e-30", "optim.grad_clip=null")
    hook = GradientScaler({3: 1e15, 4: 0.0})
    summary = train(tiny(*risky, steps=8), tmp_path, model_hook=hook)
    assert summary.nonfinite_total >= 1
    w = hook.weights
    assert torch.equal(w[3], w[2])  # step 3's update was refused: nothing changed
    exported = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in exported.values())
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_0000008")
    assert math.isnan(ckpt.history["loss"][2])
    assert all(torch.isfinite(t).all() for t in ckpt.optimizer["state"][0].values())
    log = (tmp_path / "log.txt").read_text()
    assert "step 3 skipped: an update that could overflow the weights" in log


def test_an_export_of_non_finite_weights_is_refused(tmp_path):
    from zigma.models import create_model
    from zigma.train import TrainingDiverged
    from zigma.train.export import export_model

    model = create_model("ZigMa-S/2", hidden_size=16, depth=1, input_size=8, in_channels=1)
    ema = create_model("ZigMa-S/2", hidden_size=16, depth=1, input_size=8, in_channels=1)
    with torch.no_grad():
        ema.final_layer.linear.weight[0, 0] = math.inf
    with pytest.raises(TrainingDiverged, match="EMA weights are not finite"):
        export_model(ema, model, tiny(), tmp_path / "model")
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------- signals, in real processes

STEPS = 60  # ~2 s on one thread: time to signal a run mid-way


def _command(out):
    return ["train", "--preset", "demo", "--out", str(out), "--resume", *TINY, "ckpt_every=0"]


def _start(out, steps=STEPS):
    out.parent.mkdir(parents=True, exist_ok=True)
    console = (out.parent / f"{out.name}.stdout").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "zigma", *_command(out), "--steps", str(steps)],
        stdout=console,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        # as from a terminal: a shell that runs the suite in the background (nohup, `&`)
        # starts it with SIGINT ignored, and Python keeps an ignored SIGINT ignored
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until_training(proc, out, timeout=120.0):
    """Until the run has logged its first steps (its lock is held by then)."""
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + timeout
    while not (metrics.is_file() and metrics.stat().st_size):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run made no progress")
        time.sleep(0.02)


def _finish(proc, timeout=240.0):
    try:
        err = proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return Result(proc.returncode, "", err)


def _final_state(out):
    from safetensors.torch import load_file

    ckpt = out / "checkpoints" / f"step_{STEPS:07d}"
    files = {f: load_file(ckpt / f"{f}.safetensors") for f in ("model", "ema", "optimizer")}
    files["export"] = load_file(out / "model" / "model.safetensors")
    timing = ("steps_per_s", "samples_per_s")
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in timing}
        for line in (out / "metrics.jsonl").open()
    ]
    return files, metrics


def _assert_same_run(a, b):
    (fa, ma), (fb, mb) = _final_state(a), _final_state(b)
    for name, tensors in fa.items():
        assert tensors.keys() == fb[name].keys()
        assert all(torch.equal(tensors[k], fb[name][k]) for k in tensors), name
    assert ma == mb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    res = run_zigma(*_command(out), "--steps", str(STEPS))
    assert res.code == 0, res.err
    return out


def test_sigterm_checkpoints_exits_75_and_the_same_command_finishes_bit_identically(
    tmp_path, uninterrupted
):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_until_training(proc, out)
    proc.send_signal(signal.SIGTERM)
    res = _finish(proc)
    assert res.code == 75, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zigma train: preempted: SIGTERM at step")
    step = int(lines[0].split("at step ")[1].split()[0])
    assert 0 < step < STEPS
    assert f"wrote checkpoint step_{step:07d}" in lines[0] and "--resume" in lines[0]
    assert (out / "checkpoints" / "LATEST").read_text() == f"step_{step:07d}\n"
    assert not (out / "model").exists()
    res = run_zigma(*_command(out), "--steps", str(STEPS))  # the scheduler relaunches it
    assert res.code == 0, res.err
    _assert_same_run(uninterrupted, out)


def test_sigkill_before_the_first_checkpoint_then_the_same_command_finishes(
    tmp_path, uninterrupted
):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_until_training(proc, out)
    proc.kill()
    proc.communicate()
    assert not (out / "checkpoints" / "LATEST").exists()
    res = run_zigma(*_command(out), "--steps", str(STEPS))
    assert res.code == 0, res.err
    _assert_same_run(uninterrupted, out)


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, steps=10**6)  # runs until interrupted: a 60-step run can end first
    _wait_until_training(proc, out)
    proc.send_signal(signal.SIGINT)
    res = _finish(proc)
    assert res.code == 130, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("zigma train: interrupted: stopped at step ")
    assert f"continue with: zigma train --out {out} --resume" in lines[0]


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    first = _start(out, steps=10**6)  # runs until stopped below
    try:
        _wait_until_training(first, out)
        second = run_zigma(*_command(out), "--steps", str(10**6))
        assert_one_line_error(second, "train", f"is in use by pid {first.pid}")
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        assert _finish(first).code == 75
