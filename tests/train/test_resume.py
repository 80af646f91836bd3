"""Exact resume: a run stopped at a checkpoint and resumed ends bit-identical to one that never
stopped (weights, EMA, optimizer state, per-step losses, metrics), in-process and in a fresh
process, across epoch boundaries and with label dropout drawing from the global RNG."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from zigma.train import load_checkpoint, train

from .conftest import run_cli, tiny

STEPS = 26
# 64 images / batch 8 = 8 batches per epoch: the run crosses 3 epoch boundaries
COMMON = ("data.num_samples=64", "optim.lr=2e-3", "optim.warmup_steps=4", "log_every=4")


def _final(out):
    ckpt = out / "checkpoints" / f"step_{STEPS:07d}"
    files = ("model", "ema", "optimizer", "history")
    return {f: load_file(ckpt / f"{f}.safetensors") for f in files}


def _metrics(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    timing = ("steps_per_s", "samples_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def _assert_identical(a, b):
    fa, fb = _final(a), _final(b)
    for name in fa:
        assert fa[name].keys() == fb[name].keys(), name
        for key in fa[name]:
            assert torch.equal(fa[name][key], fb[name][key]), f"{name}:{key}"
    assert _metrics(a) == _metrics(b)
    ea, eb = (
        load_file(a / "model" / "model.safetensors"),
        load_file(b / "model" / "model.safetensors"),
    )
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    train(tiny(*COMMON, "ckpt_every=13", steps=STEPS), out)
    return out


def test_resume_in_process_is_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    train(tiny(*COMMON, "ckpt_every=13", steps=11), out)  # stops at 11, mid-epoch, off-grid
    assert load_checkpoint(out / "checkpoints" / "step_0000011").step == 11
    # a disagreeing command line: steps and intervals apply, the rest is the checkpoint's
    given = tiny(*COMMON, "ckpt_every=13", "optim.eps=0.5", "model.depth=5", steps=STEPS)
    train(given, out, resume=True)
    log = (out / "log.txt").read_text()
    assert "the checkpoint's config wins; ignoring" in log
    assert "optim.eps=0.5 (checkpoint: 1e-08)" in log and "model.depth=5 (checkpoint: 2)" in log
    assert "resuming with steps=26 (checkpoint: 11)" in log
    _assert_identical(uninterrupted, out)
    assert json.loads((out / "config.json").read_text())["optim"]["eps"] == 1e-8
    assert "resumed" in log


def test_resume_with_the_data_held_in_memory_is_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    train(tiny(*COMMON, "ckpt_every=13", steps=11), out)
    train(tiny(*COMMON, "ckpt_every=13", "data.cache=true", steps=STEPS), out, resume=True)
    assert "resuming with data.cache=True (checkpoint: False)" in (out / "log.txt").read_text()
    _assert_identical(uninterrupted, out)


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # a run "killed" after its step-13 checkpoint: drop what came after, as a crash would
    train(tiny(*COMMON, "ckpt_every=13", steps=STEPS), out)
    import shutil

    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:07d}")
    shutil.rmtree(out / "model")
    (out / "checkpoints" / "LATEST").write_text("step_0000013\n")
    (out / "checkpoints" / ".tmp-step_0000026").mkdir()  # a half-written checkpoint
    proc = run_cli("train", "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert f"step {STEPS}/{STEPS}" in proc.stdout
    _assert_identical(uninterrupted, out)


def test_resume_with_a_cosine_schedule_is_bit_identical(tmp_path):
    import shutil

    cosine = (*COMMON, "ckpt_every=13", "optim.decay=cosine", "optim.min_lr_ratio=0.1")
    full, out = tmp_path / "full", tmp_path / "run"
    train(tiny(*cosine, steps=STEPS), full)
    train(tiny(*cosine, steps=STEPS), out)
    # "kill" it after the step-13 checkpoint, then resume
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:07d}")
    shutil.rmtree(out / "model")
    (out / "checkpoints" / "LATEST").write_text("step_0000013\n")
    train(tiny(*cosine, steps=STEPS), out, resume=True)
    _assert_identical(full, out)
    lrs = [json.loads(line)["lr"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    # warm-up, then decayed: the last step runs just above the floor 0.1 * 2e-3
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and 2e-4 < lrs[-1] < 2.2e-4


def test_resume_applies_a_new_learning_rate_and_precision_and_logs_them(tmp_path):
    out = tmp_path / "run"
    train(tiny(*COMMON, steps=4), out)
    train(tiny(*COMMON, "optim.lr=5e-4", "precision=fp16", "optim.betas=[0.5, 0.5]", steps=8),
          out, resume=True)  # fmt: skip
    saved = json.loads((out / "config.json").read_text())
    assert saved["optim"]["lr"] == 5e-4 and saved["precision"] == "fp16"
    assert saved["optim"]["betas"] == [0.9, 0.999]  # not resume-mutable: the checkpoint's
    log = (out / "log.txt").read_text()
    assert "resuming with precision='fp16' (checkpoint: 'fp32')" in log
    assert "resuming with optim.lr=0.0005 (checkpoint: 0.002)" in log
    assert "ignoring optim.betas=[0.5, 0.5]" in log
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").open()]
    assert lrs[-1] == 5e-4


def test_the_help_lists_every_resume_mutable_field(capsys):
    from zigma.cli import main
    from zigma.train import RESUME_MUTABLE

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    listed = text.split("the checkpoint's config wins, except ")[1].split(", which take")[0]
    assert listed.split(", ") == list(RESUME_MUTABLE)


def test_resume_past_the_last_step_trains_nothing_and_reports_the_last_loss(tmp_path):
    out = tmp_path / "run"
    first = train(tiny(steps=10), out)
    again = train(tiny(steps=6), out, resume=True)
    assert again.steps == 10 and math.isfinite(again.final_loss)
    assert again.final_loss == first.final_loss
    assert "step 10 is at or past steps=6: nothing to train" in (out / "log.txt").read_text()
