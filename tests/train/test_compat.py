"""Run folders written by earlier versions keep working: a version-1 run (tests/train/fixtures,
recorded by record_v1_run.py) resumes with the same command to the weights its uninterrupted
run reached, and samples.

Compared to a tight tolerance, not bit for bit: the same CPU model name and torch version do not
promise the same rounding (another CPU generation or thread count rounds matrix products
differently), while a resume that lost optimizer state or data order moves weights far more.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from zigma.cli import main
from zigma.evaluate import load_for_sampling
from zigma.generate import generate
from zigma.models.io import rename_legacy_key

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _check(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    want = {rename_legacy_key(k): v for k, v in want.items()}  # parameter names of version 1
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


def test_a_version_1_run_resumes_to_the_uninterrupted_weights(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v1-run", run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 0
    want = load_file(FIXTURES / "v1-final.safetensors")
    ckpt = run / "checkpoints" / "step_0000006"
    for part in ("model", "ema"):
        got = load_file(ckpt / f"{part}.safetensors")
        prefix = f"{part}/"
        _check(got, {k[len(prefix) :]: v for k, v in want.items() if k.startswith(prefix)})
    loaded = load_for_sampling(run)
    images = generate(loaded.model, loaded.transport, 4, cond={"y": torch.arange(4)}, steps=2)
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
