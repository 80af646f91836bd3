"""The checkpoints shipped in pretrained/shapes-cpu and pretrained/shapes-gpu (fp16 weights):
small enough, load, and draw shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zigma.evaluate import load_for_sampling
from zigma.generate import generate

SHIPPED = Path(__file__).resolve().parents[2] / "pretrained"
MODELS = pytest.mark.parametrize("name", ["shapes-cpu", "shapes-gpu"])


@MODELS
def test_shipped_checkpoint_is_small_and_complete(name):
    files = {p.name: p.stat().st_size for p in (SHIPPED / name).iterdir()}
    assert {"config.json", "model.safetensors", "transport.json", "README.md"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20


@MODELS
def test_shipped_checkpoint_draws_an_object_on_a_plain_background(name):
    loaded = load_for_sampling(SHIPPED / name)
    assert next(loaded.model.parameters()).dtype == torch.float32  # fp16 files load as fp32
    cfg = loaded.model.config
    assert cfg.input_size == (16, 16) and cfg.num_classes == 8
    labels = torch.arange(8)  # one sample per class
    images = generate(
        loaded.model,
        loaded.transport,
        8,
        cond={"y": labels},
        sampler="heun",
        steps=10,
        guidance_scale=3.0,
    )
    assert images.shape == (8, 3, 16, 16) and torch.isfinite(images).all()
    # centred shapes: the middle differs from the corners, which agree with each other (a plain
    # background); rings (class 5) have a hole in the middle, so their edge ring is checked.
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # [8, 3, 4]
    background = corners.mean(-1)
    plain = (corners - background[..., None]).abs().amax(dim=(1, 2)) < 0.25
    middle = images[:, :, 7:9, 7:9].mean(dim=(2, 3))
    ring = images[:, :, 7:9, 3].mean(-1)  # left part of a ring around the centre
    probe = torch.where((labels == 5)[:, None], ring, middle)
    stands_out = (probe - background).abs().amax(dim=1) > 0.3
    assert plain.sum() >= 7 and stands_out.sum() >= 7, (plain, stands_out)
