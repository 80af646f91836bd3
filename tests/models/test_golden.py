"""Every model family reproduces the outputs recorded in tests/models/golden/ (record.py): the
same weights and inputs give the same outputs, in eval and in training mode (label dropout), and
the shipped pretrained model samples the same images.

Compared to a tight tolerance, not bit for bit: even on the recording CPU model and torch
version, CPU matrix kernels round differently with another thread count or CPU generation (a
DiT output moved by 1.2e-7 between two "AMD EPYC" machines), and a change of layout that moves
an output by more than rounding still fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from zigma.evaluate import load_for_sampling
from zigma.generate import generate
from zigma.models import create_model
from zigma.models.io import rename_legacy_key

GOLDEN = Path(__file__).resolve().parent / "golden" / "outputs.safetensors"
ROOT = Path(__file__).resolve().parents[2]

with safe_open(str(GOLDEN), "pt") as f:
    INFO = f.metadata()
CASES = json.loads(INFO["cases"])
TENSORS = load_file(GOLDEN)


def check(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _case(name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}/"
    return {k[len(prefix) :]: v for k, v in TENSORS.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_the_recording(name):
    case = _case(name)
    weights = {k[len("weights/") :]: v for k, v in case.items() if k.startswith("weights/")}
    model = create_model(CASES[name]["preset"], **CASES[name]["overrides"])
    model.load_state_dict(weights, strict=True)
    cond = {"y": case["y"]} if "y" in case else {}
    model.eval()
    with torch.no_grad():
        check(model(case["x"], case["t"], **cond), case["out_eval"])
    model.train()
    torch.manual_seed(7)
    with torch.no_grad():
        check(model(case["x"], case["t"], **cond), case["out_train"])


def test_pretrained_model_samples_the_recorded_images():
    loaded = load_for_sampling(ROOT / "pretrained" / "shapes-cpu")
    images = generate(
        loaded.model,
        loaded.transport,
        8,
        cond={"y": torch.arange(8)},
        seed=0,
        sampler="heun",
        steps=6,
        guidance_scale=3.0,
    )
    check(images, TENSORS["pretrained/samples"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_parameter_order_is_the_recorded_one(name):
    """Version-1 checkpoints store optimizer states by position in the parameter order of
    the layout they were written with; the model must be able to say what that order was."""
    model = create_model(CASES[name]["preset"], **CASES[name]["overrides"])
    recorded = [rename_legacy_key(n) for n in CASES[name]["parameter_order"]]
    assert model.legacy_parameter_order() == recorded
